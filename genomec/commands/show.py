"""`genomec show FILE [--stage ...] [--dot OUT.png|OUT.dot]`: print or draw a genome's graphs."""

from __future__ import annotations

import json

from genomec.api import distinct_graphs
from genomec.genome import load_genome
from genomec.ir import format_ir
from genomec.ir.draw import one_line

# stage name -> how to print one GraphEntry. Later pipeline stages register here.
STAGES = {
    "parsed": lambda entry: format_ir(entry.compiled.parsed),
    "simplified": lambda entry: format_ir(entry.compiled.simplified),
    "schedule": lambda entry: _schedule_text(entry),
    "source": lambda entry: _source_text(entry),
}


def _schedule_text(entry) -> str:
    from genomec.codegen.schedule import format_schedule, schedule
    from genomec.codegen.stages import format_stages, plan_stages

    plan = plan_stages(entry.compiled)
    if not plan.fused:  # the schedule says why
        return format_schedule(schedule(entry.compiled.simplified))
    parts = [plan.note] if plan.note else []
    if not plan.multi_stage:
        return "\n".join(parts + [format_schedule(plan.stages[0].schedule)])
    parts.append(format_stages(plan))
    for stage in plan.stages:
        parts.append(f"-- {stage.name} --\n" + format_schedule(stage.schedule))
    return "\n".join(parts)


def _source_text(entry) -> str:
    from genomec.codegen.product import compile_graph

    product = compile_graph(entry.compiled)
    if not product.fused:
        return f"# no generated source: fallback to the reference executor ({product.reason})"
    if not product.plan.multi_stage:
        return product.modules[0].source
    return "\n\n".join(f"# ===== {s.name}: computes {s.computes} =====\n" + module.source for s, module in product.stages())


def register(sub) -> None:
    p = sub.add_parser("show", help="print or draw a genome's graph at a pipeline stage")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--stage", choices=list(STAGES), default="simplified")
    p.add_argument("--dot", metavar="OUT", help="draw to OUT.png (picture) or OUT.dot (Graphviz text)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from genomec.errors import UsageError

    genome = load_genome(args.file)
    entries = distinct_graphs(genome)
    if args.dot:
        if not args.dot.endswith((".png", ".dot")):
            raise UsageError(f"--dot {args.dot}: the file name must end in .png or .dot")
        if args.stage not in ("parsed", "simplified"):
            raise UsageError("--dot draws the parsed or simplified graph")
        draw(entries, args.stage, args.dot)
    texts = [{"hash": e.compiled.hash, "layers": e.layers, "title": e.title, "text": STAGES[args.stage](e)} for e in entries]
    if args.json:
        print(json.dumps({"file": args.file, "stage": args.stage, "graphs": texts, "drawing": args.dot}, indent=2))
        return 0
    for item in texts:
        print(f"# {one_line(item['title'])}  hash {item['hash']}")
        print(item["text"])
    if args.dot:
        print(f"drew {len(entries)} graph(s) to {args.dot}")
    return 0


def draw(entries, stage: str, path: str) -> None:
    from genomec.ir.draw import draw_png, to_dot

    graphs = [
        (f"{e.title} ({e.compiled.hash[:8]})", e.compiled.parsed if stage == "parsed" else e.compiled.simplified)
        for e in entries
    ]
    if path.endswith(".dot"):
        with open(path, "w") as f:
            f.write(to_dot(graphs))
    else:
        draw_png(graphs, path)
