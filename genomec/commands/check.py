"""`genomec check FILE...`: validate genomes; print each simplified IR and its hash."""

from __future__ import annotations

import json
import sys

from genomec.api import distinct_graphs
from genomec.genome import GenomeError, ModelGenome, load_genome
from genomec.ir import PassReport, format_ir


def register(sub) -> None:
    p = sub.add_parser("check", help="validate genome files; print the simplified IR and hash")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-v", "--verbose", action="store_true", help="pass timings and rule hits")
    p.set_defaults(handler=handle)


def check_file(path: str, report: PassReport | None = None) -> dict:
    """Validate one file. Raises GenomeError; returns what `check` prints."""
    genome = load_genome(path)
    entries = distinct_graphs(genome, report)
    return {
        "file": path,
        "ok": True,
        "kind": "model" if isinstance(genome, ModelGenome) else "attention",
        "name": genome.name,
        "graphs": [
            {"hash": e.compiled.hash, "layers": e.layers, "causal": e.genome.causal, "ir": format_ir(e.compiled.simplified)}
            for e in entries
        ],
    }


def handle(args) -> int:
    results, status = [], 0
    for path in args.files:
        report = PassReport()
        try:
            result = check_file(path, report)
        except GenomeError as e:
            status = 2
            results.append({"file": path, "ok": False, "problems": e.problems})
            if not args.json:
                for line in e.lines():
                    print(line, file=sys.stderr)
            continue
        results.append(result)
        if args.json:
            continue
        print(f"{path}: ok ({result['kind']}, {len(result['graphs'])} distinct attention graph(s))")
        for graph in result["graphs"]:
            where = f"  layers {graph['layers']}" if graph["layers"] else ""
            print(f"hash {graph['hash']}{where}")
            print(graph["ir"])
        if args.verbose:
            timings = ", ".join(f"{name} {seconds * 1e3:.2f} ms" for name, seconds in report.seconds.items())
            print(f"passes: {timings}")
            for rule_name, hits in report.rule_hits.most_common():
                print(f"  rule {rule_name}: {hits}")
    if args.json:
        print(json.dumps(results, indent=2))
    return status
