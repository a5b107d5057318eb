"""The report of one or more search runs (SPEC 5, Report): one self-contained HTML page.

    header      title, run paths, evaluations done of the budget, best so far
    settings    the settings table, one column per run (rows that differ marked)
    progress    best-so-far fitness over evaluations, one line per run (strategy, seed)
    priorities  each run's op UCB over time, and its final op statistics
    counts      counts by status, dedupe rate, trained candidates; rejections and
                failures grouped by reason
    cost        fitness against parameters, attention FLOPs and (CUDA) attention ms
    top         the top candidates: fitness, cost, layer pattern with the attention
                layers' expressions, and every distinct attention graph drawn

Everything is read from the history, the log of record (`RunDirectory.read_history`
with repair=False, so a live run is read safely: a torn last line is left out), and the
state is recomputed by `replay`. Nothing outside the page is referenced: images are PNG
data URIs, the CSS is inline, fonts are the system's. Every text is escaped.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import math
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Callable

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from genomec.genome import AttentionLayer, ConvLayer, GenomeError, parse_genome, to_expr
from genomec.models.training import write_atomic

from .config import FIELDS, ConfigError, SearchConfig, build_config
from .engine import SearchState, replay
from .plots import STATUS_STYLES, plot_op_priorities
from .rundir import HISTORY, SETTINGS, RunDirectory, RunError

SECTIONS = (  # (id, heading), in page order
    ("settings", "Settings"),
    ("progress", "Progress"),
    ("priorities", "Operation priorities"),
    ("counts", "Counts"),
    ("cost", "Fitness against cost"),
    ("top", "Top candidates"),
)
STATUSES = tuple(STATUS_STYLES)  # ok, duplicate, rejected, failed
DEFAULT_TOP = 5
DPI = 100
RUN_COLOURS = colormaps["tab10"].colors
REASON_EXAMPLES = 8  # candidate indices listed per reason


class ReportError(ValueError):
    """A path that is not a readable search run (the CLI exits 2)."""


# -- reading a run ----------------------------------------------------------------------------------


@dataclass
class RunView:
    """What the report shows of one run: its settings, its records and their replay."""

    path: Path
    settings: dict
    budget: int | None
    records: list[dict]
    state: SearchState
    torn_tail: bool  # the history ends in a record being written (left out)
    label: str = ""

    @property
    def done(self) -> int:
        return len(self.records)

    def progress_text(self) -> str:
        if self.budget is None:
            text = f"{self.done} evaluations done (budget unknown)"
        elif self.done >= self.budget:
            text = f"{self.done} of {self.budget} evaluations done (finished)"
        else:
            text = f"{self.done} of {self.budget} evaluations done (in progress, or stopped)"
        return text + ("; a record being written is left out" if self.torn_tail else "")


def load_run(path: str | Path) -> RunView:
    """A run directory read for the report, or ReportError naming the path."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no such run directory")
    if not path.is_dir():
        raise ReportError(f"{path}: not a run directory (a file)")
    settings_file = path / SETTINGS
    if not settings_file.is_file():
        raise ReportError(f"{path}: not a search run directory (no {SETTINGS})")
    try:
        saved = json.loads(settings_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ReportError(f"{settings_file}: corrupt (not JSON)") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
        raise ReportError(f"{settings_file}: no 'settings' table")
    settings, budget = saved["settings"], saved.get("evaluations")
    try:
        records = RunDirectory(path).read_history(repair=False)
    except RunError as e:
        raise ReportError(str(e)) from None
    history = path / HISTORY
    torn_tail = history.is_file() and history.stat().st_size > 0 and not history.read_bytes().endswith(b"\n")
    config = _config(settings, budget, settings_file)
    return RunView(path, settings, budget if isinstance(budget, int) else None, records, replay(records, config), torn_tail)


def _config(settings: dict, budget, source: Path) -> SearchConfig:
    """The run's SearchConfig (replay needs its ops, ucb_c, population and strategy); keys
    this version does not know are left out rather than refused."""
    known = {k: v for k, v in settings.items() if k in FIELDS and k != "evaluations"}
    if isinstance(budget, int) and budget >= 1:
        known["evaluations"] = budget
    try:
        return build_config("tiny", known, str(source))
    except ConfigError as e:
        raise ReportError(f"settings not understood: {e}") from None


def _label_runs(views: list[RunView]) -> None:
    """'strategy seed S', with the folder name added where two runs would share one."""
    for view in views:
        view.label = f"{view.settings.get('strategy', '?')} seed {view.settings.get('seed', '?')}"
    counts = Counter(v.label for v in views)
    for view in views:
        if counts[view.label] > 1:
            view.label += f" ({view.path.name or view.path})"


# -- figures ----------------------------------------------------------------------------------------


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _png_from_file(draw: Callable[[Path], None]) -> bytes:
    """The PNG a drawing function writes to a path (the run's own plots, the IR drawings)."""
    with tempfile.TemporaryDirectory(prefix="genomec-report-") as folder:
        path = Path(folder) / "figure.png"
        draw(path)
        return path.read_bytes()


def _img(png: bytes, alt: str, css_class: str = "figure") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css_class}" src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _note(axes, text: str) -> None:
    axes.text(0.5, 0.5, text, transform=axes.transAxes, ha="center", va="center", color="gray")


def _colour(i: int):
    return RUN_COLOURS[i % len(RUN_COLOURS)]


def progress_figure(views: list[RunView]) -> bytes:
    """Best-so-far fitness over the evaluation index, one step line per run over the
    faint dots of every scored candidate; the x axis spans the largest budget."""
    figure = _new_figure(10.5, 4.2)
    axes = figure.add_subplot()
    drawn = False
    for i, view in enumerate(views):
        scored = [r for r in view.records if r["status"] in ("ok", "duplicate") and _finite(r.get("fitness"))]
        if scored:
            axes.scatter([r["index"] for r in scored], [r["fitness"] for r in scored], s=10, color=_colour(i), alpha=0.3)
        xs, best = [], []
        for r in view.records:
            if _finite(r.get("fitness")) and (not best or r["fitness"] > best[-1]):
                xs.append(r["index"])
                best.append(r["fitness"])
        if best:
            label = f"{view.label}: best {best[-1]:.4g} at #{xs[-1]} ({view.done} done)"
            axes.step(xs + [view.records[-1]["index"]], best + [best[-1]], where="post", color=_colour(i), linewidth=1.8, label=label)
            drawn = True
    if drawn:
        axes.legend(loc="lower right", fontsize="small")
    else:
        _note(axes, "no candidate has a fitness yet" if any(v.records for v in views) else "no evaluations yet")
    budgets = [v.budget for v in views if v.budget] + [v.done for v in views]
    if max(budgets, default=0) > 1:
        axes.set_xlim(-0.5, max(budgets) - 0.5)
    axes.set_title("best-so-far fitness over evaluations")
    axes.set_xlabel("evaluation")
    axes.set_ylabel("fitness")
    axes.grid(alpha=0.3)
    return _figure_png(figure)


def priority_figure(view: RunView) -> bytes:
    title = f"operation priority (UCB), {view.label}"
    return _png_from_file(lambda path: plot_op_priorities(view.state.ucb_series, path, title=title))


COST_AXES = (  # (cost key, x label, log scale when the values span this factor)
    ("params", "parameters", 20.0),
    ("attention_flops", "attention FLOPs (estimate)", 20.0),
    ("attention_ms", "attention fwd+bwd ms (measured)", 20.0),
)


def cost_figure(views: list[RunView]) -> tuple[bytes, bool]:
    """Fitness of the trained candidates against each cost, one colour per run, each
    run's best starred. Returns (png, whether any run has measured attention ms)."""
    def cost_of(record, key):
        return record.get("params") if key == "params" else (record.get("cost") or {}).get(key)

    trained = [[r for r in v.records if r["status"] == "ok" and _finite(r.get("fitness"))] for v in views]
    has_ms = any(_finite(cost_of(r, "attention_ms")) for records in trained for r in records)
    panels = [a for a in COST_AXES if a[0] != "attention_ms" or has_ms]
    figure = _new_figure(10.5, 3.8)
    for p, (key, xlabel, log_span) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), p + 1)
        values = []
        for i, (view, records) in enumerate(zip(views, trained)):
            points = [(cost_of(r, key), r["fitness"]) for r in records if _finite(cost_of(r, key))]
            if not points:
                continue
            values += [x for x, _ in points]
            axes.scatter(*zip(*points), s=16, color=_colour(i), alpha=0.75, label=view.label)
            best = max(records, key=lambda r: (r["fitness"], -r["index"]))
            if _finite(cost_of(best, key)):
                axes.scatter([cost_of(best, key)], [best["fitness"]], s=140, marker="*", color=_colour(i),
                             edgecolors="black", linewidths=0.8, zorder=3)
        if not values:
            _note(axes, "no trained candidate yet")
        elif min(values) > 0 and max(values) / min(values) > log_span:
            axes.set_xscale("log")
        axes.xaxis.set_major_formatter(EngFormatter(sep=""))  # 150k, not 150000
        axes.set_xlabel(xlabel)
        if p == 0:
            axes.set_ylabel("fitness")
            if len(views) > 1 and any(trained):
                axes.legend(fontsize="small", loc="lower right")
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return _figure_png(figure), has_ms


# -- the top candidates ------------------------------------------------------------------------------


def layer_pattern(genome) -> str:
    """`C5 A C13 C7`: a conv layer by its kernel size, an attention layer as A."""
    return " ".join(f"C{layer.kernel_size}" if isinstance(layer, ConvLayer) else "A" for layer in genome.layers)


def _expression(graph) -> str:
    try:
        return to_expr(graph)
    except GenomeError:
        return f"({len(graph.nodes)} nodes, too large to write as an expression)"


def distinct_graphs(records: list[dict]) -> list[tuple[str, object, list[str]]]:
    """(structural hash, simplified IR, where it appears) for each distinct attention
    graph of these candidates, in order of first appearance."""
    from genomec.ir import lower

    found: dict[str, tuple[object, list[str]]] = {}
    for record in records:
        genome = parse_genome(record["genome"])
        for position, layer in enumerate(genome.layers):
            if isinstance(layer, AttentionLayer):
                compiled = lower(layer.graph)
                found.setdefault(compiled.hash, (compiled.simplified, []))[1].append(f"#{record['index']} layer {position}")
    return [(h, ir, where) for h, (ir, where) in found.items()]


def graph_png(title: str, ir) -> bytes:
    from genomec.ir.draw import draw_png

    return _png_from_file(lambda path: draw_png([(title, ir)], path))


# -- HTML ---------------------------------------------------------------------------------------------

CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.45;
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; font-size: 15px; }
main { max-width: 1140px; margin: 0 auto; padding: 24px 28px 48px; }
header { border-bottom: 2px solid var(--ink); padding-bottom: 12px; margin-bottom: 8px; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 20px 0 8px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 13px; }
.muted { color: var(--muted); }
.runs { margin: 8px 0 0; padding-left: 20px; }
.runs li { margin: 2px 0; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 6px; vertical-align: baseline; }
nav { margin: 10px 0 0; font-size: 14px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.differs td, tr.differs th { background: #fff8c5; }
img.figure { display: block; max-width: 100%; height: auto; margin: 6px 0 10px; }
table.compact { font-size: 13px; }
table.compact th, table.compact td { padding: 2px 7px; }
.graphs { display: flex; flex-wrap: wrap; gap: 14px; }
figure.graph { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fff; }
figure.graph img { display: block; max-width: 100%; height: auto; }
figure.graph figcaption { font-size: 12px; color: var(--muted); max-width: 380px; }
.expr { font-size: 12px; overflow-wrap: anywhere; margin-top: 2px; }
.note { color: var(--muted); font-style: italic; }
"""


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "(none)"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _num(value, digits: int = 4) -> str:
    if not _finite(value):
        return "—"
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}g}"


def _table(header: list[str], rows: list[list[str]], numeric=None, row_classes: list[str] | None = None,
           css_class: str = "") -> str:
    """`rows` hold HTML already escaped, their first cell a row heading; `header` is
    plain text; `numeric`: the columns aligned right (default all but the first)."""
    numeric = range(1, len(header)) if numeric is None else numeric
    out = [f'<table class="{css_class}">' if css_class else "<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"]
    for r, row in enumerate(rows):
        css = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        cells = [f"<th>{row[0]}</th>"] + [f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                          for i, c in enumerate(row[1:], start=1)]
        out.append(f"<tr{css}>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _breakable(expression: str) -> str:
    """An expression escaped, with line-break opportunities after its commas."""
    return escape(expression).replace(",", ",<wbr>")


def _swatch(i: int) -> str:
    r, g, b = (round(255 * c) for c in _colour(i)[:3])
    return f'<span class="swatch" style="background:#{r:02x}{g:02x}{b:02x}"></span>'


def _header(views: list[RunView], written: str) -> str:
    if len(views) == 1:
        title = f"Search report: {views[0].path.resolve().name} ({views[0].label})"
    else:
        title = f"Search report: {len(views)} runs ({', '.join(v.label for v in views)})"
    items = []
    for i, v in enumerate(views):
        best = v.state.best()
        best_text = f"best fitness {best['fitness']:.4g} (candidate #{best['index']})" if best else "no trained candidate yet"
        items.append(f"<li>{_swatch(i)}<b>{escape(v.label)}</b> &nbsp;<code>{escape(str(v.path.resolve()))}</code><br>"
                     f"<span class='muted'>{escape(v.progress_text())}; {escape(best_text)}</span></li>")
    nav = " ".join(f'<a href="#{sid}">{escape(heading)}</a>' for sid, heading in SECTIONS)
    return (f"<header><h1>{escape(title)}</h1>"
            f"<div class='muted'>genomec search report, written {escape(written)}</div>"
            f"<ul class='runs'>{''.join(items)}</ul><nav>{nav}</nav></header>")


SETTINGS_PER_ROW = 3  # setting/value pairs per table row for a single run


def _settings_section(views: list[RunView]) -> str:
    """One column per run, the settings where runs differ first (highlighted); a single
    run's settings three pairs to a row."""
    values = {"evaluations (budget)": [_cell(v.budget) for v in views]}
    values |= {key: [_cell(v.settings.get(key)) for v in views] for key in sorted({k for v in views for k in v.settings})}
    if len(views) == 1:
        pairs = [f"<th>{escape(key)}</th><td>{escape(cell[0])}</td>" for key, cell in values.items()]
        rows = ["<tr>" + "".join(pairs[i:i + SETTINGS_PER_ROW]) + "</tr>" for i in range(0, len(pairs), SETTINGS_PER_ROW)]
        return "<table class='compact'>" + "".join(rows) + "</table>"
    differs = [key for key, cells in values.items() if len(set(cells)) > 1]
    order = differs + [key for key in values if key not in differs]
    rows = [[escape(key)] + [escape(cell) for cell in values[key]] for key in order]
    classes = ["differs" if key in differs else "" for key in order]
    note = (f"<p class='muted'>The {len(differs)} setting{'s' if len(differs) != 1 else ''} where the runs differ "
            "come first, highlighted.</p>")
    return note + _table(["setting"] + [v.label for v in views], rows, numeric=(), row_classes=classes, css_class="compact")


def _progress_section(views: list[RunView]) -> str:
    done = "; ".join(f"{v.label}: {v.progress_text()}" for v in views)
    return (f"<p>{escape(done)}.</p>" + _img(progress_figure(views), "best-so-far fitness over evaluations")
            + "<p class='muted'>Lines: the best fitness so far; dots: every scored candidate (duplicates reuse the "
              "fitness of the candidate they repeat). The x axis spans the budget.</p>")


def _priorities_section(views: list[RunView]) -> str:
    """Per run: the UCB of every op over time, then its final statistics, one column per
    op (highest UCB first, never-chosen ops last)."""
    parts = []
    for i, v in enumerate(views):
        stats = v.state.stats
        ops = sorted(stats.ops, key=lambda op: (0, -stats.ucb(op), op) if stats.chosen[op] else (1, 0.0, op))
        rows = [
            ["n (chosen)"] + [escape(str(stats.chosen[op])) for op in ops],
            ["mu (mean fitness)"] + [escape(_num(stats.mean(op))) for op in ops],
            ["UCB"] + [escape(_num(stats.ucb(op)) if stats.chosen[op] else "∞") for op in ops],
        ]
        note = ("" if v.settings.get("strategy") == "op" else
                f"<p class='note'>Strategy {escape(str(v.settings.get('strategy')))} does not draw ops by priority; "
                "the UCB is shown for comparison.</p>")
        parts.append(f"<h3>{_swatch(i)}{escape(v.label)}</h3>{note}"
                     + _img(priority_figure(v), f"operation priority over time, {v.label}")
                     + _table(["op"] + ops, rows, css_class="compact")
                     + f"<p class='muted'>N = {stats.total} ops chosen by mutations, c = {escape(_num(stats.c))}; "
                       "∞: never chosen yet (drawn first by the greedy draw).</p>")
    return "\n".join(parts)


def _counts_section(views: list[RunView]) -> str:
    counts = [v.state.counts() for v in views]
    rows = [[escape(status)] + [escape(str(c[status])) for c in counts] for status in STATUSES]

    def rate(part: int, whole: int) -> str:
        return f"{part / whole:.1%}" if whole else "—"

    rows += [
        ["evaluations done"] + [escape(str(v.done)) + (f" of {v.budget}" if v.budget else "") for v in views],
        ["dedupe rate (duplicates / evaluations)"] + [escape(rate(c["duplicate"], v.done)) for c, v in zip(counts, views)],
        ["candidates trained (ok)"] + [escape(str(c["ok"])) for c in counts],
        ["training attempts that failed"] + [escape(rate(c["failed"], c["ok"] + c["failed"])) for c in counts],
        ["seconds, all evaluations"] + [escape(_num(sum(r.get("seconds") or 0.0 for r in v.records), 5)) for v in views],
    ]
    out = [_table(["status"] + [v.label for v in views], rows)]
    for i, v in enumerate(views):
        by_reason: dict[tuple[str, str], list[int]] = defaultdict(list)
        for r in v.records:
            if r["status"] in ("rejected", "failed"):
                by_reason[(r["status"], str(r.get("reason") or "no reason given"))].append(r["index"])
        title = f"<h3>{_swatch(i)}Rejections and failures, {escape(v.label)}</h3>"
        if not by_reason:
            out.append(title + "<p class='note'>None.</p>")
            continue
        reason_rows = []
        for (status, reason), indices in sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[0])):
            shown = ", ".join(f"#{k}" for k in indices[:REASON_EXAMPLES]) + (" …" if len(indices) > REASON_EXAMPLES else "")
            reason_rows.append([escape(status), escape(reason), escape(str(len(indices))), escape(shown)])
        out.append(title + _table(["status", "reason", "count", "candidates"], reason_rows, numeric=(2,)))
    return "\n".join(out)


def _cost_section(views: list[RunView]) -> str:
    png, has_ms = cost_figure(views)
    note = "" if has_ms else " Attention time is measured on CUDA only; these runs have none, so its panel is left out."
    return (_img(png, "fitness against parameters and attention cost")
            + f"<p class='muted'>Trained candidates (status ok); a star marks each run's best.{escape(note)}</p>")


def _top_section(views: list[RunView], top: int) -> str:
    out = []
    for i, v in enumerate(views):
        chosen = [v.records[k] for k in v.state.top(top)]
        out.append(f"<h3>{_swatch(i)}{escape(v.label)}: top {len(chosen)} of {v.state.counts()['ok']} trained</h3>")
        if not chosen:
            out.append("<p class='note'>No candidate has been trained yet.</p>")
            continue
        rows = []
        for rank, r in enumerate(chosen, start=1):
            genome = parse_genome(r["genome"])
            expressions = "".join(
                f"<div class='expr'><code>layer {p}: {_breakable(_expression(layer.graph))}</code></div>"
                for p, layer in enumerate(genome.layers) if isinstance(layer, AttentionLayer))
            mutation = r.get("mutation") or {}
            origin = mutation.get("type", "?") + (f" of #{r['parent']}" if r.get("parent") is not None else "")
            if mutation.get("name"):
                origin += f" ({mutation['name']})"
            rows.append([escape(str(rank)), escape(f"#{r['index']}"), escape(_num(r.get("fitness"))), escape(_num(r.get("loss"))),
                         escape(_num(r.get("params"))), escape(_num((r.get("cost") or {}).get("attention_flops"))),
                         f"<code><b>{escape(layer_pattern(genome))}</b></code>{expressions}", escape(origin)])
        out.append(_table(["rank", "candidate", "fitness", "loss", "params", "attention FLOPs", "layer pattern", "made by"],
                          rows, numeric=(1, 2, 3, 4, 5)))
        graphs = distinct_graphs(chosen)
        if not graphs:
            out.append("<p class='note'>These candidates have no attention layers.</p>")
            continue
        figures = []
        for structural_hash, ir, where in graphs:
            caption = f"{structural_hash}: {', '.join(where)}"
            title = f"{where[0]}  ({structural_hash})"
            figures.append(f"<figure class='graph'>{_img(graph_png(title, ir), caption, 'graph')}"
                           f"<figcaption>{escape(caption)}</figcaption></figure>")
        out.append(f"<p class='muted'>{len(graphs)} distinct attention graph{'s' if len(graphs) != 1 else ''} "
                   "(simplified IR; colour: token, pair or global index space; the output outlined):</p>"
                   f"<div class='graphs'>{''.join(figures)}</div>")
    return "\n".join(out)


def render_report(runs: list[str | Path], top: int = DEFAULT_TOP) -> str:
    """The HTML page of these runs (ReportError for a path that is not a run)."""
    if not runs:
        raise ReportError("no run directory given")
    views = [load_run(path) for path in runs]
    _label_runs(views)
    written = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    bodies = {
        "settings": _settings_section(views),
        "progress": _progress_section(views),
        "priorities": _priorities_section(views),
        "counts": _counts_section(views),
        "cost": _cost_section(views),
        "top": _top_section(views, top),
    }
    title = "genomec report: " + ", ".join(v.label for v in views)
    sections = "\n".join(f'<section id="{sid}"><h2>{escape(heading)}</h2>\n{bodies[sid]}\n</section>' for sid, heading in SECTIONS)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n{_header(views, written)}\n{sections}\n</main>\n</body>\n</html>\n")


def write_report(runs: list[Path], out: Path, top: int = DEFAULT_TOP) -> Path:
    """Write the report of `runs` to `out` (atomically) and return its path."""
    out = Path(out)
    page = render_report(runs, top)
    write_atomic(out, page)
    return out
