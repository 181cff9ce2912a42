"""``nnkern bench``'s options turned into a run, its report, profile, JSON and chart."""

from __future__ import annotations

import json
import sys

from .harness import checked_optimizers, run
from .machine import TORCH, benchmark_backends
from .networks import NETWORKS, Network, custom_network
from .profiling import format_profile, profile_networks
from .report import format_report, plot

QUICK = {"samples": 6000, "repeats": 3, "peak_size": 1024}
PROFILE_STEPS = {"quick": 20, "full": 100}


def _names(value) -> list[str] | None:
    """--backends as a list of names: accepts "a,b", ["a,b", "c"] or None."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    return [name.strip() for item in items for name in item.split(",") if name.strip()]


# nnkern bench's options that describe the user's own network (custom_network's arguments)
CUSTOM_OPTIONS = ("hidden", "activation", "batch_size", "normalize", "dtype")


def networks_of(args) -> list[Network]:
    """The networks ``nnkern bench`` measures: the built-in ones, and the user's own when
    any of CUSTOM_OPTIONS is given (the others then take custom_network's defaults);
    ``no_builtin`` leaves the built-in ones out. ValueError names a bad option."""
    chosen = {name: getattr(args, name) for name in CUSTOM_OPTIONS if getattr(args, name, None) is not None}
    networks = [] if getattr(args, "no_builtin", False) else list(NETWORKS)
    if chosen:
        networks.append(custom_network(**chosen))
    if not networks:
        raise ValueError("--no-builtin leaves nothing to measure: describe a network (--hidden, --activation, "
                         "--batch-size, --normalize, --dtype)")
    return networks


def run_cli(args) -> int:
    """``nnkern bench``: ``args`` is the argparse Namespace with ``quick``, ``json``,
    ``backends``, ``repeats``, ``threads``, ``plot`` (and optionally ``profile``,
    ``optimizers``, CUSTOM_OPTIONS and ``no_builtin``)."""
    try:
        networks = networks_of(args)
    except ValueError as exc:
        print(f"nnkern bench: error: {exc}", file=sys.stderr)
        return 2
    names = _names(getattr(args, "backends", None))
    with_torch = names is None or TORCH in names
    backends = None if names is None else [n for n in names if n != TORCH]
    try:
        benchmark_backends(backends)
    except ValueError as exc:
        print(f"nnkern bench: error: --backends: {exc} (or torch)", file=sys.stderr)
        return 2
    settings = dict(QUICK) if getattr(args, "quick", False) else {}
    try:
        settings["optimizers"] = checked_optimizers(_names(getattr(args, "optimizers", None)) or ["sgd"])
    except ValueError as exc:
        print(f"nnkern bench: error: --optimizers: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "repeats", None) is not None:
        settings["repeats"] = args.repeats
    threads = getattr(args, "threads", None)

    def log(line):
        print(line, file=sys.stderr, flush=True)

    result = run(backends=backends, with_torch=with_torch, networks=networks, threads=threads, log=log, **settings)
    print(format_report(result))
    if getattr(args, "profile", False):
        result["profile"] = profile_networks(backends=backends, networks=networks, threads=threads,
                                             steps=PROFILE_STEPS["quick" if getattr(args, "quick", False) else "full"])
        print()
        print("\n\n".join(format_profile(p) for p in result["profile"]))
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    if getattr(args, "plot", None):
        try:
            plot(result, args.plot)
        except ImportError:
            print("--plot needs matplotlib (pip install nnkern[plot])", file=sys.stderr)
            return 1
        print(f"wrote {args.plot}")
    return 0
