"""Front-end time per attention graph: parse (JSON -> genome), lower (IR, passes) and hash.

SPEC 7 target: under 20 ms per paper genome, codegen included once it exists. Prints a
table and, with --json, one JSON object. Usage:

    python benchmarks/frontend.py [GENOME.json ...] [--repeat 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from genomec.genome import AttentionGenome, loads_genome, parse_genome
from genomec.genome.parse import attention_to_json
from genomec.ir import lower

ROOT = Path(__file__).resolve().parents[1]


def time_graph(graph: AttentionGenome, repeat: int) -> dict:
    text = json.dumps(attention_to_json(graph, "expr"))
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        compiled = lower(loads_genome(text))
        samples.append(time.perf_counter() - start)
    return {"hash": compiled.hash, "ops": len(compiled.simplified.ops), "median_ms": 1e3 * statistics.median(samples),
            "max_ms": 1e3 * max(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=[str(ROOT / "genomes" / "autobert-zero.json")])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for path in args.files:
        genome = parse_genome(json.loads(Path(path).read_text()))
        graphs = [genome] if isinstance(genome, AttentionGenome) else genome.attention_graphs()
        for index, graph in enumerate(graphs):
            rows.append({"file": Path(path).name, "graph": index, **time_graph(graph, args.repeat)})
    if args.json:
        print(json.dumps({"target_ms": 20.0, "rows": rows}, indent=2))
        return
    print(f"{'file':<28} {'graph':>5} {'hash':<16} {'ops':>4} {'median ms':>10} {'max ms':>8} {'vs 20 ms':>9}")
    for r in rows:
        print(f"{r['file']:<28} {r['graph']:>5} {r['hash']:<16} {r['ops']:>4} {r['median_ms']:>10.2f} {r['max_ms']:>8.2f} {r['median_ms'] / 20.0:>8.2f}x")


if __name__ == "__main__":
    main()
