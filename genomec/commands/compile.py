"""`genomec compile FILE -o DIR [--arch sm_90] [--dtype fp16|bf16|fp32]`: generated Triton
modules and manifest.json; with --arch, ahead-of-time compilation and per-kernel resources."""

from __future__ import annotations

import json
import sys

from genomec.errors import UsageError
from genomec.fileio import output_folder_problem


def register(sub) -> None:
    p = sub.add_parser("compile", help="write fused Triton modules and manifest.json for a genome")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory for the modules and manifest.json")
    p.add_argument("--arch", metavar="ARCH", help="compile ahead of time for this GPU target (e.g. sm_90); no GPU needed")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"], help="input dtype for --arch (default fp16)")
    p.add_argument("--head-dim", type=int, metavar="D", help="head dim for --arch (default: the model's, else 64)")
    p.add_argument("--json", action="store_true", help="print the manifest")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks on failure")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from genomec.api import distinct_graphs
    from genomec.genome import load_genome
    from genomec.codegen.aot import parse_arch
    from genomec.codegen.manifest import compile_genome

    if args.arch:
        try:
            parse_arch(args.arch)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.head_dim is not None and not 1 <= args.head_dim <= 256:
        raise UsageError(f"--head-dim {args.head_dim}: expected 1..256")
    problem = output_folder_problem(args.output)
    if problem:  # said before compiling, not after
        raise UsageError(f"-o {args.output}: {problem}")
    progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    genome = load_genome(args.file)
    manifest = compile_genome(
        args.file, genome, distinct_graphs(genome), args.output, arch=args.arch, dtype=args.dtype, head_dim=args.head_dim, progress=progress
    )
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    coverage = manifest["coverage"]
    print(f"{args.file}: {coverage['fused']} of {coverage['graphs']} distinct attention graph(s) fused; wrote {args.output}/manifest.json")
    for g in manifest["graphs"]:
        where = f" (layers {g['layers']})" if g["layers"] else ""
        if not g["fused"]:
            print(f"  {g['hash']}{where}: fallback, runs on the reference executor: {g['reason']}")
            continue
        backward = "fused backward" if g["backward"]["fused"] else f"backward on the reference executor: {g['backward']['reason']}"
        print(f"  {g['hash']}{where}: fused, {len(g['stages'])} stage(s), {backward} -> {', '.join(g['modules'])}")
        if "rewritten" in g:
            print(f"    ({g['rewritten']})")
        for k in g["kernels"]:
            name = f"{k['stage']}/{k['name']}" if len(g["modules"]) > 1 or "computes" in k else k["name"]
            if "registers" in k:
                tiles = f", tiles {k['tile_config']['block_m']}x{k['tile_config']['block_n']}" if "tile_config" in k else ""
                print(f"    {name}: {k['registers']} registers, {k['spills']} bytes spilled, {k['shared_bytes']} B shared ({args.arch}, {args.dtype}{tiles})")
            else:
                print(f"    {name}")
    return 0
