"""`genomec export RUN [--candidate best|INDEX] -o DIR [--genome-only] [--json]`: a Hugging
Face model directory of one search candidate with the weights it trained, or just its
genome file (SPEC 4). A thin wrapper over `genomec.search.export.export_candidate`.
"""

from __future__ import annotations

import json

from genomec.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("export", help="write a search candidate as a Hugging Face model directory (or its genome)")
    p.add_argument("run", metavar="RUN", help="a search run directory (genomec search --out RUN)")
    p.add_argument("--candidate", default="best", metavar="best|INDEX",
                   help="the candidate: 'best' (highest fitness, default) or its index in the history")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="the folder to write (an earlier export is replaced)")
    p.add_argument("--genome-only", action="store_true", help="write just DIR/genome.json (any candidate, no weights needed)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks on failure")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from genomec.commands.train import _quiet_libraries
    from genomec.search.export import ExportError, export_candidate

    _quiet_libraries("export")
    try:
        summary = export_candidate(args.run, args.out, args.candidate, genome_only=args.genome_only)
    except ExportError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(summary))
        return 0
    what = "the genome of candidate" if args.genome_only else "candidate"
    via = f" (a duplicate of {summary['index']}, whose weights these are)" if summary["duplicate_of"] is not None else ""
    fitness = "" if summary["fitness"] is None else f", fitness {summary['fitness']:.4f}"
    print(f"exported {what} {summary['candidate']}{via}{fitness}")
    print(f"wrote {summary['out']}: {', '.join(summary['files'])}")
    return 0
