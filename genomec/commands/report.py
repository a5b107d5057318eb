"""`genomec report RUN [RUN ...] [-o FILE.html]`: a self-contained HTML page of one or
more search runs (SPEC 4 and 5). A thin wrapper over `genomec.search.report.write_report`.
"""

from __future__ import annotations

from pathlib import Path

from genomec.errors import UsageError
from genomec.fileio import output_file_problem


def register(sub) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of one or more search runs")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (runs still going are read safely)")
    p.add_argument("-o", "--out", metavar="FILE.html", help="where to write the page (default: RUN/report.html of the first run)")
    p.add_argument("--top", type=int, default=5, metavar="K", help="top candidates shown per run (default 5)")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks on failure")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from genomec.search.report import ReportError, write_report

    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")
    out = Path(args.out) if args.out else Path(args.runs[0]) / "report.html"
    if args.out and out.is_dir():
        raise UsageError(f"-o {out}: is a directory; name the HTML file")
    if args.out and not out.parent.is_dir():
        raise UsageError(f"-o {out}: the folder {out.parent} does not exist")
    problem = output_file_problem(out) if args.out else None
    if problem:  # read-only, no permission, not a regular file
        raise UsageError(f"-o {out}: {problem}")
    try:  # every run is read before anything is drawn or written
        path = write_report([Path(run) for run in args.runs], out, top=args.top)
    except ReportError as e:
        raise UsageError(str(e)) from None
    print(path)
    return 0
