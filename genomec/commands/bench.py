"""`genomec bench [-o DIR] [GENOME ...]`: the kernel suite of SPEC 7, forward and forward+backward.

With a CUDA GPU: timings against eager, torch.compile, FlexAttention and SDPA. Without one:
front-end time, generated source size and ahead-of-time compile resources, and it says so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from genomec.errors import UsageError
from genomec.fileio import output_folder_problem


def register(sub) -> None:
    p = sub.add_parser("bench", help="kernel benchmarks (SPEC 7); without a GPU, front end and AOT compile numbers")
    p.add_argument("genomes", nargs="*", metavar="GENOME", help="genome files (default: the SPEC 7 suite)")
    p.add_argument("-o", "--output", default="runs/bench", metavar="DIR", help="where results.json/.md/.png go (default runs/bench)")
    p.add_argument("--no-aot", action="store_true", help="without a GPU: skip ahead-of-time compilation")
    p.add_argument("--lengths", type=int, nargs="+", metavar="N", help="on a GPU: sequence lengths (default 1k 2k 4k 8k 16k)")
    p.add_argument("--head-dims", type=int, nargs="+", metavar="D", help="on a GPU: head dims (default 64 128)")
    p.add_argument("--dtypes", nargs="+", choices=("bf16", "fp16", "fp32"), help="on a GPU (default bf16 fp16)")
    p.add_argument("--json", action="store_true", help="print results.json")
    p.set_defaults(handler=handle)


def check_options(args) -> None:
    for flag, values, low, high in (("--lengths", args.lengths, 1, 1 << 20), ("--head-dims", args.head_dims, 1, 256)):
        bad = [n for n in values or () if not low <= n <= high]
        if bad:
            raise UsageError(f"{flag} {bad[0]}: expected {low}..{high}")
    problem = output_folder_problem(args.output)
    if problem:
        raise UsageError(f"-o {args.output}: {problem}")


def handle(args) -> int:
    from genomec.api import distinct_graphs
    from genomec.runtime.bench import GPU_DTYPES, GPU_SHAPES, run_suite, suite_graphs

    check_options(args)
    progress = (lambda line: None) if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    graphs = suite_graphs(distinct_graphs, args.genomes or None)
    lengths = args.lengths or sorted({shape[2] for shape in GPU_SHAPES})
    head_dims = args.head_dims or sorted({shape[3] for shape in GPU_SHAPES})
    shapes = [(4, 16, n, d) for d in head_dims for n in lengths]
    result = run_suite(graphs, args.output, aot=not args.no_aot, progress=progress, shapes=shapes,
                       dtypes=tuple(args.dtypes or GPU_DTYPES))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(Path(args.output, "results.md").read_text())
        print(f"wrote {args.output}/results.json, results.md, results.png ({result['mode']} mode)")
    return 0
