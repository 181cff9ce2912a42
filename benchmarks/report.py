"""Markdown tables (for BENCHMARKS.md) from benchmark JSON files.

    python benchmarks/report.py RESULT.json [MORE.json ...] [--markdown PATH]

Each file is either the output of ``nnkern bench --json PATH`` (end-to-end epochs, and the
per-kernel profile when run with ``--profile``) or of ``pytest benchmarks/
--benchmark-json=PATH`` (per-kernel and per-epoch benchmarks, one table per group). The
tables go to PATH, or to standard output.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

from nnkern.bench.report import describe_kernels

REFERENCE = "numpy"


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    """A Markdown table; ``align`` has one letter per column: l(eft) or r(ight)."""
    rule = ["---:" if a == "r" else ":---" for a in align]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def nnkern_bench_markdown(result: dict) -> list[str]:
    """The ``nnkern bench`` JSON: the set-up, one table per network, then the profiles."""
    m, c = result["machine"], result["config"]
    versions = ", ".join(f"{name} {v}" for name, v in result["versions"].items())
    lines = [
        "### End to end: `nnkern bench`",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, SIMD {' '.join(m['simd'])}; {m['platform']}",
        *([f"- Kernels: {describe_kernels(m)}"] if describe_kernels(m) else []),
        f"- Versions: {versions}",
        f"- {c['threads']} threads for every pool (nnkern, BLAS, PyTorch); repeats: {c['repeats']}, "
        f"each contender in its own process, taking turns; median reported; {c['samples_per_repeat']} training "
        f"samples per repeat, accuracy on {c['test_samples']} test samples; "
        + ", ".join(f"{name} lr {o['lr']}" for name, o in c["optimizers"].items()),
        *(f"- GEMM peak measured in the same run, {dtype}: {p['gflops']:.1f} GFLOP/s (best of {p['repeats']} "
          f"{p['size']}^3 products: NumPy's BLAS {p['blas_gflops']:.1f}"
          + (f", nnkern {p['nnkern_backend']} {p['nnkern_gflops']:.1f}" if "nnkern_gflops" in p else "") + ")"
          for dtype, p in result["peaks"].items()),
        f"- Useful FLOPs per sample (the GEMMs of a step): {c['flops_per_sample_formula']}",
    ]
    lines += [f"- Not timed: {name} ({reason})" for name, reason in result["skipped"].items()]
    for n in result["networks"]:
        several = len({r.get("optimizer", "sgd") for r in n["results"]}) > 1
        rows = []
        for r in n["results"]:
            ratio = "–" if r["ratio_to_reference"] is None else f"{r['ratio_to_reference']:.2f}x"
            check = {None: "–", True: "same", False: f"**differs** ({r['warmup_loss']:.6g})"}
            label = f"`{r['contender']}` {r['optimizer']}" if several else f"`{r['contender']}`"
            vs_sgd = ["–" if r.get("time_vs_sgd") is None else f"{r['time_vs_sgd']:.3f}x"] if several else []
            vs_torch = "–" if r["ratio_to_torch"] is None else f"{r['ratio_to_torch']:.2f}x"
            rows.append([label, f"{r['samples_per_s']:,.0f}", ratio, vs_torch, f"{r['gflops']:.2f}",
                         f"{r['fraction_of_peak']:.1%}", f"{r['test_accuracy']:.4f}", *vs_sgd,
                         check[r["loss_matches_reference"]]])
        rows += [[f"`{name}`", "failed", "", "", "", "", "", *([""] if several else []), reason]
                 for name, reason in n["failed"].items()]
        lines += ["", f"**{n['name']}**, batch {n['batch_size']}, {n['inputs']}, {n['dtype']}, "
                      f"{n['steps']} steps per repeat", ""]
        lines += _table(["contender", "samples/s (median)", "vs numpy", "vs torch", "GFLOP/s", "of peak",
                         "test accuracy", *(["epoch time vs SGD"] if several else []), "warm-up loss vs numpy"],
                        rows, "lrrrrrr" + ("r" if several else "") + "l")
    for p in result.get("profile", []):
        fused = p.get("engine") == "fused step"
        engine = f" ({p['engine']})" if "engine" in p else ""
        inputs = f", {p['inputs']}, {p['dtype']}" if "inputs" in p else ""
        lines += ["", f"**Profile: {p['network']} on `{p['backend']}`{engine}**, batch {p['batch_size']}{inputs}: "
                      f"{p['step_s'] * 1e3:.3f} ms per step (mean of {p['steps']})", ""]
        rows = [[k["call"], f"{k['calls_per_step']:.0f}", f"{k['s_per_step'] * 1e3:.3f}", f"{k['fraction']:.1%}"]
                for k in p["kernels"]]
        other = ("other: the Python call, starting the threads" if fused
                 else "other: Python, ops-layer checks, allocation")
        rows.append([other, "", f"{p['other_s'] * 1e3:.3f}", f"{p['other_fraction']:.1%}"])
        lines += _table(["phase" if fused else "kernel call", "calls", "ms/step", "of step"], rows, "lrrr")
    return lines


def _contender(bench: dict) -> str:
    return (bench.get("params") or {}).get("contender") or bench["name"]


def pytest_benchmark_markdown(result: dict) -> list[str]:
    """The pytest-benchmark JSON: one table per group, contenders fastest first, with the
    ratio of each median to the NumPy reference's."""
    info = result["machine_info"]
    nnkern = info.get("nnkern", {})
    lines = [
        "### Per kernel and per epoch: `pytest benchmarks/`",
        "",
        f"- Machine: {nnkern.get('cpu_model', info.get('cpu', {}).get('brand_raw', '?'))}, "
        f"{nnkern.get('cores', '?')} cores, SIMD {' '.join(nnkern.get('simd', []))}",
        f"- {nnkern.get('threads', '?')} threads for every pool; pytest-benchmark {result.get('version', '?')}, "
        f"run {result.get('datetime', '?')}",
        "- Every contender's result was checked against the NumPy reference before it was timed.",
    ]
    groups = defaultdict(list)
    for bench in result["benchmarks"]:
        groups[bench["group"] or bench["name"]].append(bench)
    for group, benches in groups.items():
        reference = next((b["stats"]["median"] for b in benches if _contender(b) == REFERENCE), None)
        rows = []
        for b in sorted(benches, key=lambda b: b["stats"]["median"]):
            s, extra = b["stats"], b.get("extra_info", {})
            ratio = f"{reference / s['median']:.2f}x" if reference else "–"
            notes = []
            if "gflop" in extra:
                notes.append(f"{extra['gflop'] / s['median']:.1f} GFLOP/s")
            if "samples_per_s" in extra:
                notes.append(f"{extra['samples_per_s']:,.0f} samples/s, {extra['gflops']:.2f} GFLOP/s, "
                             f"test accuracy {extra['test_accuracy']:.4f}")
            rows.append([f"`{_contender(b)}`", _time(s["median"]), _time(s["min"]), str(s["rounds"]), ratio,
                         "; ".join(notes)])
        lines += ["", f"**{group}**", ""]
        lines += _table(["contender", "median", "min", "rounds", "speed vs numpy", "notes"], rows, "lrrrrl")
    return lines


def markdown(results: list[dict]) -> str:
    lines = []
    for result in results:
        if lines:
            lines.append("")
        if result.get("schema", "").startswith("nnkern-bench/"):
            lines += nnkern_bench_markdown(result)
        elif "benchmarks" in result and "machine_info" in result:
            lines += pytest_benchmark_markdown(result)
        else:
            raise ValueError("not a JSON file from `nnkern bench --json` or `pytest --benchmark-json`")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", metavar="RESULT.json")
    parser.add_argument("--markdown", metavar="PATH", help="write the tables there (default: standard output)")
    args = parser.parse_args(argv)
    results = []
    for path in args.results:
        with open(path) as f:
            results.append(json.load(f))
    text = markdown(results)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
