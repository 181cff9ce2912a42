"""The result of :func:`nnkern.bench.run` as text (a header and a table per network) and as a
bar chart."""

from __future__ import annotations

from .trainers import OPTIMIZERS


def _peak_line(peak: dict) -> str:
    """A measured GEMM peak and where it came from."""
    sources = [f"NumPy's BLAS {peak['blas_gflops']:.1f}"]
    if "nnkern_gflops" in peak:
        sources.append(f"nnkern {peak['nnkern_backend']} {peak['nnkern_gflops']:.1f}")
    return (f"{peak['gflops']:.1f} GFLOP/s {peak['dtype']} (best of {peak['repeats']} {peak['size']}^3 "
            f"products: {', '.join(sources)})")


def describe_kernels(machine: dict) -> str | None:
    """The cython GEMM variant and NumPy's BLAS of a run's ``machine`` record, or None for
    a record without them (made before they were kept, or without the cython backend)."""
    if not machine.get("nnkern_gemm"):
        return None
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']})" for b in machine.get("blas", []))
    return f"cython GEMM {machine['nnkern_gemm']}; NumPy's BLAS {blas or 'unknown'}"


def format_header(result: dict) -> str:
    m, v, c = result["machine"], result["versions"], result["config"]
    lines = [
        f"machine : {m['cpu']}, {m['cores']} cores, SIMD {' '.join(m['simd']) or 'none found'}",
        *([f"kernels : {describe_kernels(m)}"] if describe_kernels(m) else []),
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"threads : {c['threads']} (nnkern, BLAS, PyTorch)   repeats: {c['repeats']}, each contender in its own "
        f"process, taking turns   samples per repeat: {c['samples_per_repeat']}   test samples: {c['test_samples']}",
        *(f"peak    : {_peak_line(peak)}" for peak in result["peaks"].values()),
    ]
    for name, reason in result["skipped"].items():
        lines.append(f"skipped : {name}: {reason}")
    return "\n".join(lines)


def _ratio(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_table(network_result: dict) -> str:
    n = network_result
    optimizers = list(dict.fromkeys(row["optimizer"] for row in n["results"]))
    several = len(optimizers) > 1
    title = (f"{n['name']}, batch {n['batch_size']}, {n['inputs']}, {n['dtype']}, {n['samples_trained']} samples "
             "per repeat, " + ", ".join(f"{'SGD' if o == 'sgd' else 'Adam'} lr {OPTIMIZERS[o]}" for o in optimizers))
    header = (f"{'contender':<10} {'optimizer':<9} " if several else f"{'contender':<10} ") + (
        f"{'samples/s':>11} {'vs numpy':>9} {'vs torch':>9} {'GFLOP/s':>8} {'of peak':>8} {'test acc':>9}  "
        + ("time vs SGD  " if several else "") + "loss check")
    lines = [title, header, "-" * len(header)]
    for row in n["results"]:
        vs_sgd = "n/a" if row.get("time_vs_sgd") is None else f"{row['time_vs_sgd']:.3f}x"
        lines.append(
            (f"{row['contender']:<10} {row['optimizer']:<9} " if several else f"{row['contender']:<10} ")
            + f"{row['samples_per_s']:>11,.0f} {_ratio(row['ratio_to_reference']):>9} "
            f"{_ratio(row['ratio_to_torch']):>9} {row['gflops']:>8.2f} "
            f"{row['fraction_of_peak']:>8.1%} {row['test_accuracy']:>9.4f}  "
            + (f"{vs_sgd:>11}  " if several else "") + _loss_check(row)
        )
    for name, reason in n["failed"].items():
        lines.append(f"{name:<10} FAILED: {reason}")
    return "\n".join(lines)


def _loss_check(row: dict) -> str:
    """Whether the loss after the warm-up steps was the reference's."""
    if row["loss_matches_reference"] is None:
        return "no reference"
    return "ok" if row["loss_matches_reference"] else f"DIFFERS from numpy ({row['warmup_loss']:.6g})"


def format_report(result: dict) -> str:
    return "\n\n".join([format_header(result), *(format_table(n) for n in result["networks"])])


def plot(result: dict, path) -> None:
    """A bar chart of median samples/s per contender, one panel per network (needs
    matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = result["networks"]
    fig, axes = plt.subplots(1, len(networks), figsize=(5 * len(networks), 4), squeeze=False)
    for ax, n in zip(axes[0], networks):
        several = len({r["optimizer"] for r in n["results"]}) > 1
        names = [f"{r['contender']}\n{r['optimizer']}" if several else r["contender"] for r in n["results"]]
        rates = [r["samples_per_s"] for r in n["results"]]
        bars = ax.bar(names, rates, color=["grey" if r["kind"] != "backend" else "tab:blue" for r in n["results"]])
        for bar, row in zip(bars, n["results"]):
            ratio = row["ratio_to_reference"]
            ax.annotate(f"{ratio:.2f}x" if ratio else "", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{n['name']} (batch {n['batch_size']})\n{n['inputs']}, {n['dtype']}", fontsize=9)
        ax.set_ylabel("samples/s (median)")
    c = result["config"]
    fig.suptitle(f"nnkern bench: MNIST training, {c['samples_per_repeat']} samples per repeat, "
                 f"{', '.join(c['optimizers'])}, "
                 f"{c['threads']} threads, {result['machine']['cpu']} (reference and PyTorch in grey)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
