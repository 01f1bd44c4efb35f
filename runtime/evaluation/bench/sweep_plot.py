"""`ascendkit bench --sweep --plot FILE.png`: the sweep as one picture, for a README or a review.

A table of batch sizes says which size wins; a curve shows why — where throughput stops growing
and where the time per output token crosses the ceiling. Two panels share the batch-size axis (log2,
ticked at the measured sizes): throughput on top (the runtime, and transformers' static batch where
it ran), TPOT p50/p99 below with the ceiling, and the recommended `max_num_seqs` marked on both.

matplotlib is optional (the `plot` extra) and imported only here, inside `plot_sweep`: the CLI checks
for it before benchmarking, and `ascendkit --help` must stay fast. Only the object-oriented API and
the Agg canvas are used — no pyplot, so no global figure state and no GUI backend is ever picked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

RUNTIME_COLOR = "#1f77b4"
HF_COLOR = "#7f7f7f"
P99_COLOR = "#ff7f0e"
CEILING_COLOR = "#d62728"
RECOMMENDED_COLOR = "#2ca02c"


def _points(sizes: list[dict[str, Any]], *keys: str) -> tuple[list[int], list[float]]:
    """(batch sizes, values) of one series, following `keys` into each size's entry; a size whose
    value is missing or None (a system that did not run, a run without a second token) is left out
    rather than drawn as zero."""
    xs, ys = [], []
    for size in sizes:
        value: Any = size
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            xs.append(size["batch"])
            ys.append(float(value))
    return xs, ys


def plot_sweep(sweep: dict[str, Any], path: Path, title: str) -> None:
    """Draw `report["sweep"]` to `path` (PNG, or another format matplotlib knows by the suffix).

    Written atomically — to a hidden temporary name in the same directory, then renamed — so an
    interrupted or failed draw never leaves a truncated image where a good one (or none) was."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    path = Path(path)
    sizes = sorted(sweep["sizes"], key=lambda s: s["batch"])
    batches = [s["batch"] for s in sizes]
    ceiling = sweep.get("tpot_ms_ceiling")
    recommended = (sweep.get("recommended") or {}).get("max_num_seqs")

    fig = Figure(figsize=(8, 7), dpi=120, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    subtitle = f"{sweep.get('prompt_len', '?')} prompt tokens in, {sweep.get('new_tokens', '?')} out per request"
    if recommended is None:
        subtitle += (f"\nno batch size keeps TPOT p50 ≤ {ceiling:g} ms: no max_num_seqs recommended"
                     if ceiling is not None else "\nno max_num_seqs recommended")
    fig.suptitle(f"{title}\n{subtitle}", fontsize=10)

    xs, ys = _points(sizes, "runtime", "throughput_tok_s")
    top.plot(xs, ys, marker="o", color=RUNTIME_COLOR, label="runtime")
    xs, ys = _points(sizes, "hf", "throughput_tok_s")
    if xs:
        top.plot(xs, ys, marker="s", linestyle="--", color=HF_COLOR, label="transformers generate (static batch)")
    top.set_ylabel("throughput (tok/s)")
    top.set_ylim(bottom=0)

    xs, ys = _points(sizes, "runtime", "tpot_ms", "p50")
    bottom.plot(xs, ys, marker="o", color=RUNTIME_COLOR, label="runtime TPOT p50")
    xs, ys = _points(sizes, "runtime", "tpot_ms", "p99")
    bottom.plot(xs, ys, marker="^", linestyle="--", color=P99_COLOR, label="runtime TPOT p99")
    if ceiling is not None:
        bottom.axhline(ceiling, linestyle=":", linewidth=1.5, color=CEILING_COLOR,
                       label=f"TPOT ceiling ({ceiling:g} ms, on p50)")
    bottom.set_ylabel("time per output token (ms)")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("batch size (concurrent requests)")

    if recommended is not None:
        text = f"recommended max_num_seqs = {recommended}"
        for ax in (top, bottom):
            ax.axvline(recommended, color=RECOMMENDED_COLOR, linewidth=1.2, alpha=0.8)
        # Just above the top panel, where no curve or legend can be under it, leaning to the side of
        # the line with more room so that it stays within the figure.
        right_half = bool(batches) and recommended > (min(batches) * max(batches)) ** 0.5
        top.annotate(text, xy=(recommended, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                     textcoords="offset points", ha="right" if right_half else "left", va="bottom",
                     color=RECOMMENDED_COLOR, fontsize=9, fontweight="bold")

    bottom.set_xscale("log", base=2)
    bottom.xaxis.set_minor_locator(NullLocator())
    bottom.set_xticks(batches, [str(b) for b in batches])
    if batches:
        bottom.set_xlim(min(batches) / 1.3, max(batches) * 1.3)
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8, framealpha=0.9)

    formats = canvas.get_supported_filetypes()
    fmt = path.suffix.lower().lstrip(".")
    fmt = fmt if fmt in formats else "png"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:  # a plain open: the umask's permissions, as any file the user writes
            canvas.print_figure(fh, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
