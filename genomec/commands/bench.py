"""`genomec bench [-o DIR] [GENOME ...]`: the kernel suite of SPEC 7, forward and forward+backward.

With a CUDA GPU: timings against eager, torch.compile, FlexAttention and SDPA. Without one:
front-end time, generated source size and ahead-of-time compile resources, and it says so.
With --static, on any machine: every kernel compiled for sm_90 and its SASS read (registers,
shared memory, spills, main-loop instructions per score element, MMA instructions, loads),
beside a FlashAttention-2 reference (runtime/kernel_static.py).
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
    p.add_argument("--head-dims", type=int, nargs="+", metavar="D", help="on a GPU and with --static: head dims (default 64 128)")
    p.add_argument("--dtypes", nargs="+", choices=("bf16", "fp16", "fp32"), help="on a GPU (default bf16 fp16); with --static (default bf16)")
    p.add_argument("--static", action="store_true",
                   help="read the compiled kernels (SASS for sm_90) beside a FlashAttention-2 reference: kernel_static.json/.md")
    p.add_argument("--passes", nargs="+", choices=("forward", "backward"), help="with --static: which kernels (default both)")
    p.add_argument("--reference-tiles", nargs="+", choices=("same", "best"),
                   help="with --static: the reference at our tiles, at its best ones (default both)")
    p.add_argument("--json", action="store_true", help="print results.json (kernel_static.json with --static)")
    p.set_defaults(handler=handle)


def check_options(args) -> None:
    if args.static:
        given = [flag for flag, value in (("--lengths", args.lengths), ("--no-aot", args.no_aot)) if value]
        if given:
            raise UsageError(f"{given[0]} does not apply to --static (it compiles, it times nothing)")
        odd = [d for d in args.head_dims or () if d < 16 or d & (d - 1)]
        if odd:
            raise UsageError(f"--head-dims {odd[0]}: --static compares with a reference that takes powers of two from 16 on")
    else:
        given = [flag for flag, value in (("--passes", args.passes), ("--reference-tiles", args.reference_tiles)) if value]
        if given:
            raise UsageError(f"{given[0]} needs --static")
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
    if args.static:
        return handle_static(args, graphs)
    lengths = args.lengths or sorted({shape[2] for shape in GPU_SHAPES})
    head_dims = args.head_dims or sorted({shape[3] for shape in GPU_SHAPES})
    shapes = [(4, 16, n, d) for d in head_dims for n in lengths]
    result = run_suite(graphs, args.output, aot=not args.no_aot, progress=progress, shapes=shapes,
                       dtypes=tuple(args.dtypes or GPU_DTYPES))
    return _report(args, result, "results.md", f"results.json, results.md, results.png ({result['mode']} mode)")


def handle_static(args, graphs) -> int:
    from genomec.runtime.kernel_static import DTYPES, HEAD_DIMS, PASSES, REFERENCE_TILES, run_static

    result = run_static(
        graphs,
        args.output,
        head_dims=tuple(args.head_dims or HEAD_DIMS),
        dtypes=tuple(args.dtypes or DTYPES),
        passes=tuple(args.passes or PASSES),
        reference_tiles=tuple(args.reference_tiles or REFERENCE_TILES),
        progress=None if args.json else (lambda line: print(line, file=sys.stderr, flush=True)),
    )
    return _report(args, result, "kernel_static.md", "kernel_static.json, kernel_static.md")


def _report(args, result: dict, markdown: str, written: str) -> int:
    """The JSON with --json, else the Markdown table and what was written."""
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(Path(args.output, markdown).read_text())
        print(f"wrote {args.output}/{written}")
    return 0
