"""PNG plots of a search run (SPEC 5, Run directory): fitness over evaluations, and the
operation priorities over time.

Drawn with matplotlib's Agg canvas on a bare `Figure` (no pyplot, no display, no global
backend switch), and written atomically: to a temporary file in the same folder, then
renamed over the target, so a reader never sees half a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from genomec.models.training import write_atomic

STATUS_STYLES = {  # status -> (colour, marker)
    "ok": ("tab:blue", "o"),
    "duplicate": ("tab:gray", "s"),
    "rejected": ("tab:orange", "x"),
    "failed": ("tab:red", "x"),
}
FIGURE_SIZE = (7.5, 4.0)  # inches
DPI = 100


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _new_axes():
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _note(axes, text: str) -> None:
    """An empty plot's explanation, centred on the axes."""
    axes.text(0.5, 0.5, text, transform=axes.transAxes, ha="center", va="center", color="gray")


def _save_atomic(figure: Figure, path) -> None:
    write_atomic(Path(path), lambda f: figure.savefig(f, format="png", bbox_inches="tight"))


def plot_fitness(records: list[dict], path) -> None:
    """Fitness of every evaluated candidate (dots by status) and the best-so-far line over
    the evaluation index. Candidates without a fitness (rejected, failed) are counted in
    the legend."""
    records = sorted(records, key=lambda r: r["index"])
    figure, axes = _new_axes()
    for status, (colour, marker) in STATUS_STYLES.items():
        of_status = [r for r in records if r["status"] == status]
        if not of_status:
            continue
        scored = [r for r in of_status if _finite(r.get("fitness"))]
        label = f"{status} ({len(of_status)})" if scored else f"{status} ({len(of_status)}, no fitness)"
        axes.scatter([r["index"] for r in scored], [r["fitness"] for r in scored], s=12, c=colour, marker=marker, label=label)

    best_index, best = [], []
    for r in records:
        if _finite(r.get("fitness")) and (not best or r["fitness"] > best[-1]):
            best_index.append(r["index"])
            best.append(r["fitness"])
    if best:
        # a step at each improvement, held to the last evaluation
        axes.step(best_index + [records[-1]["index"]], best + [best[-1]], where="post", color="black", linewidth=1.2, label="best so far")
    else:
        _note(axes, "no candidate has a fitness yet" if records else "no evaluations yet")

    count = f"{len(records)} evaluation" + ("" if len(records) == 1 else "s")
    axes.set_title(f"fitness over {count}" + (f" (best {best[-1]:.4g})" if best else ""))
    axes.set_xlabel("evaluation")
    axes.set_ylabel("fitness")
    if records:
        axes.legend(loc="lower right", fontsize="small")
    _save_atomic(figure, path)


def plot_op_priorities(series: dict[str, list[tuple[int, float]]], path, title: str = "operation priority (UCB)") -> None:
    """One line per op of its priority over the evaluation index; points where it is
    infinite (the op was never chosen yet) are left out."""
    figure, axes = _new_axes()
    palette = colormaps["tab10" if len(series) <= 10 else "tab20"].colors  # one colour per op (up to 20)
    drawn = 0
    for i, (op, points) in enumerate(sorted(series.items())):
        finite = [(index, value) for index, value in points if _finite(value)]
        if not finite:
            continue
        index, value = zip(*finite)
        axes.plot(index, value, linewidth=1.0, marker="." if len(finite) < 30 else None, color=palette[i % len(palette)], label=op)
        drawn += 1
    if drawn:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    else:
        _note(axes, "no operation statistics yet")
    axes.set_title(title)
    axes.set_xlabel("evaluation")
    axes.set_ylabel("priority")
    _save_atomic(figure, path)
