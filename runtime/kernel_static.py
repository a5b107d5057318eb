"""The static kernel benchmark (`genomec bench --static`, `benchmarks/kernel_static.py`):
what each kernel of SPEC 7's suite costs, read from its compiled code without a GPU, next
to a FlashAttention-2 reference (`flash_reference.py`) compiled in the same run.

For every suite graph, forward and backward kernel, dtype and head dim, compile for sm_90
as a launch would (`codegen.aot.Specialisation`: 16-byte aligned pointers, N a multiple
of 16) with the tiles ahead-of-time compilation checks (`codegen.tiles`), disassemble the
cubin and read its main loop (`codegen.sass`): registers, shared memory and spills; the
loop's instructions and special-function (MUFU) ops per score element; its `wgmma`
(HGMMA) and `mma.sync` (HMMA) instructions by shape; how many warps compute each score
(duplication); its loads by kind (LDG global, LDGSTS cp.async, LDS shared, LDSM ldmatrix,
UTMALDG TMA). The reference's four kernels are compiled twice: with our tiles (forward:
the forward's; dK/dV and dQ: the backward's) and with its best Hopper tiles, the
candidates of `flash_reference` that give the fewest main-loop instructions per score
element with zero spills and at most 255 registers.

Per score element, for a count `c` in one main-loop iteration: `c * threads /
(BLOCK_M * BLOCK_N)` (see codegen/sass.py). Kernels without a BLOCK_M x BLOCK_N pair tile
(linear attention's token reductions) get the same normalisation, which is nominal there.

Triton compiles or interprets, once per process; from a process that interprets, the
compilation runs in a child process (`python -m genomec.runtime.kernel_static`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from genomec.codegen.aot import DEFAULT_SPECIALISATION, Specialisation, aot_job
from genomec.codegen.tiles import TileConfig, backward_config, default_config
from genomec.fileio import write_atomic

PASSES = ("forward", "backward")
REFERENCE_TILES = ("same", "best")
DTYPES = ("bf16",)
HEAD_DIMS = (64, 128)
RESULTS = ("kernel_static.json", "kernel_static.md")
REFERENCE = "FlashAttention-2 reference"
PROGRESS = "progress: "  # how the compiling child's progress lines start on its standard error
STANDARD_ATTENTION = "matmul(softmax(scale(matmul(q, transpose(k)))), v)"  # what the reference computes
# which of our kernels a reference kernel stands beside
REFERENCE_ROLES = {
    "flash_forward": "attention_fwd",
    "flash_backward_preprocess": "attention_bwd_prepare",
    "flash_backward_keys": "attention_bwd_keys",
    "flash_backward_queries": "attention_bwd_queries",
}


def run_static(
    graphs,
    out_dir: str | Path,
    head_dims=HEAD_DIMS,
    dtypes=DTYPES,
    passes=PASSES,
    reference_tiles=REFERENCE_TILES,
    arch: str = "sm_90",
    specialisation: Specialisation = DEFAULT_SPECIALISATION,
    has_mask: bool = False,
    progress=print,
) -> dict:
    """Compile and read every kernel of `graphs` ([(label, path, GraphEntry)] from
    `runtime.bench.suite_graphs`) and the reference's at each dtype and head dim; write
    kernel_static.json and kernel_static.md into `out_dir` and return the JSON. Our kernels
    are compiled as SPEC 7's suite launches them: without a padding mask (`has_mask`), the
    forward saving what the backward reads (the reference's forward always does)."""
    from genomec.codegen.product import compile_graph
    from genomec.genome import loads_genome
    from genomec.ir import lower

    from .bench import environment

    say = progress or (lambda line: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    with tempfile.TemporaryDirectory(prefix="genomec-static-") as modules_dir:  # the compiler reads modules from files
        modules = []  # (genome label, hash, the generated module, its file)
        for name, _, entry in graphs:
            graph = compile_graph(entry.compiled)
            plan = graph.plan
            if not plan.fused:
                say(f"{name}: not fused ({plan.reason}); no kernels to read")
                continue
            for stage, generated in graph.stages():
                module_path = Path(modules_dir) / f"{generated.hash}.py"
                module_path.write_text(generated.source)
                modules.append((name + (f" / {stage.name}" if plan.multi_stage else ""), generated.hash, generated, module_path))
        job = {
            "ours": [  # one aot job per dtype, head dim and module, with the fixed tiles
                {"genome": name, "hash": hash_, "job": aot_job(generated, path, arch, dtype, head_dim, specialisation=specialisation,
                                                               passes=passes, constants={"HAS_MASK": has_mask}, retile=True)}
                for dtype in dtypes for head_dim in head_dims for name, hash_, generated, path in modules
            ],
            "head_dims": list(head_dims),
            "dtypes": list(dtypes),
            "passes": list(passes),
            "reference_tiles": list(reference_tiles),
            "arch": arch,
            "specialisation": dataclasses.asdict(specialisation),
            }
        rows = _in_compile_mode(job, say)
    standard_hash = lower(loads_genome(json.dumps({"expr": STANDARD_ATTENTION}))).hash
    result = {
        "mode": "static",
        "arch": arch,
        "specialisation": str(specialisation),
        "padding_mask": has_mask,
        "standard_hash": standard_hash,
        "definitions": DEFINITIONS,
        "environment": env,
        "targets": {f"{dtype}/d{head_dim}": targets([r for r in rows if r["dtype"] == dtype and r["head_dim"] == head_dim], standard_hash)
                    for dtype in dtypes for head_dim in head_dims},
        "rows": rows,
    }
    write_atomic(out_dir / RESULTS[0], json.dumps(result, indent=2) + "\n")
    write_atomic(out_dir / RESULTS[1], markdown(result))
    return result


DEFINITIONS = {
    "main_loop": "the innermost SASS loop (backward branch to a label) holding HGMMA/HMMA instructions; of several, the one with the most MMA work per iteration; "
                 "a generated pass's unpipelined loop over the few blocks a mask cuts (TTGIR tt.num_stages = 1) counts in neither this nor all_loops",
    "instructions": "static SASS instructions of one main-loop iteration per thread, NOPs left out (a branch-skipped path counts too)",
    "per_element": "count x threads / (BLOCK_M x BLOCK_N): thread-instructions per score element of the iteration's pair tile",
    "mufu": "special-function-unit ops (MUFU.EX2, .LG2, .RCP, ...) of one iteration",
    "wgmma": "HGMMA (Hopper warpgroup MMA) instructions of one iteration, by shape m x n x k",
    "mma_sync": "HMMA (mma.sync) instructions of one iteration, by shape (16816 = m16n8k16)",
    "score_duplication": "warps computing each score element of q k^T: the TTGIR layout's coverage (warpsPerCTA x instrShape) over the tile, 1 = none",
    "mma_work_ratio": "MMA work the SASS issues per CTA per iteration over the work of the loop's dots (TTGIR), 1 = none duplicated",
    "unroll": "iterations of the Triton loop in one pass through the SASS loop (ptxas unrolls simple loops): SASS MMA work over one iteration's (dots x duplication); counts are divided by it",
    "loads": "load instructions of one iteration by kind and width: LDG global, LDGSTS cp.async, LDS shared, LDSM ldmatrix, UTMALDG TMA",
    "all_loops": "instructions per element summed over every innermost MMA loop (all passes over the keys)",
    "best_tiles": "the reference's candidate tiles with the fewest main-loop instructions per score element, zero spills, at most 255 registers",
    "tiles": "our kernels: the fixed tiles of codegen/tiles.py, or for a pass whose kernels spill with them the first candidate of its search space that does not",
    "mma_sync_anywhere": "HMMA (mma.sync) instructions anywhere in the kernel, in loops or not",
}


# -- the compile-mode side ----------------------------------------------------------------


def _in_compile_mode(job: dict, progress) -> list[dict]:
    """The rows of `job`, compiled in this process if Triton compiles here, else in a child."""
    from genomec.codegen.modules import triton_mode

    mode = triton_mode()
    if mode == "compile" or (mode is None and os.environ.get("TRITON_INTERPRET") != "1"):
        return _read_kernels(job, progress)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory(prefix="genomec-static-") as tmp:
        rows_file = Path(tmp) / "rows.json"
        child = subprocess.Popen([sys.executable, "-m", "genomec.runtime.kernel_static", str(rows_file)], stdin=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env)
        child.stdin.write(json.dumps(job))
        child.stdin.close()
        last = []
        for line in child.stderr:  # the child's progress, passed on as it comes
            last = (last + [line])[-40:]
            if line.startswith(PROGRESS):
                progress(line[len(PROGRESS):].rstrip("\n"))
        if child.wait() != 0:
            raise RuntimeError("static kernel benchmark: the compiling child process failed:\n" + "".join(last))
        return json.loads(rows_file.read_text())


def _read_kernels(job: dict, progress) -> list[dict]:
    from genomec.codegen.aot import compile_job, parse_arch

    capability = parse_arch(job["arch"])
    specialisation = Specialisation(**job["specialisation"])
    rows = []
    for dtype in job["dtypes"]:
        for head_dim in job["head_dims"]:
            for module in job["ours"]:
                ours = module["job"]
                if (ours["dtype"], ours["head_dim"]) != (dtype, head_dim):
                    continue
                for name, backward, tiles, compiled, resources in compile_job(ours):
                    row = {"impl": "genomec", "genome": module["genome"], "hash": module["hash"], "kernel": str(name),
                           "pass": "backward" if backward else "forward", "dtype": dtype, "head_dim": head_dim}
                    row.update(_reading(compiled, resources, tiles))
                    rows.append(row)
                    progress(_progress_line(row))
            forward, backward = default_config(dtype, head_dim), backward_config(dtype, head_dim)
            rows += _reference_rows(job, dtype, head_dim, forward, backward, capability, specialisation, progress)
    return rows


def _reading(compiled, resources, tiles: TileConfig) -> dict:
    """What one compiled kernel's SASS says: resources and main-loop figures."""
    from genomec.codegen.sass import disassemble, kernel_report

    report = kernel_report(disassemble(compiled.asm["cubin"]), compiled.asm["ttgir"], tiles.block_m, tiles.block_n, tiles.num_warps)
    return {
        "tiles": dataclasses.asdict(tiles),
        "registers": resources.registers,
        "spills": resources.spills,
        "stack": resources.stack,
        "shared_bytes": resources.shared_bytes,
        "compile_s": round(resources.compile_seconds, 2),
        **report,
    }


def _reference_rows(job, dtype, head_dim, forward, backward, capability, specialisation, progress) -> list[dict]:
    from . import flash_reference as ref

    names = [n for n in ref.KERNELS if ("backward" if n in ref.BACKWARD else "forward") in job["passes"]]
    rows = []
    for choice in job["reference_tiles"]:
        for name in names:
            if choice == "same":
                tiles = ref.kernel_tiles(name, ref.FlashTiles(forward, backward.keys, backward.queries))
                row, tried = _reference_row(ref, name, dtype, head_dim, tiles, capability, specialisation), None
            else:
                row, tried = _best_reference_row(ref, name, dtype, head_dim, capability, specialisation)
            row.update(tiles_choice=choice)
            if tried:
                row["candidates"] = tried
            rows.append(row)
            progress(_progress_line(row))
    return rows


def _reference_row(ref, name, dtype, head_dim, tiles, capability, specialisation) -> dict:
    from genomec.codegen.aot import compile_kernel

    row = {"impl": REFERENCE, "genome": "standard (FA2 reference)", "kernel": name, "beside": REFERENCE_ROLES[name],
           "pass": "backward" if name in ref.BACKWARD else "forward", "dtype": dtype, "head_dim": head_dim}
    even = all(specialisation.seq_len % b == 0 for b in (tiles.block_m, tiles.block_n))  # the launcher's EVEN_N at this length
    compiled, resources = compile_kernel(ref.KERNELS[name][0], ref.signature(name, dtype), ref.constants(name, dtype, head_dim, tiles, even),
                                         tiles.launch_options(), capability, specialisation)
    row.update(_reading(compiled, resources, tiles))
    return row


def _best_reference_row(ref, name, dtype, head_dim, capability, specialisation):
    """The reference kernel at its best candidate tiles, and what each candidate gave."""
    candidates = {"flash_forward": ref.FORWARD_CANDIDATES, "flash_backward_keys": ref.KEYS_CANDIDATES,
                  "flash_backward_queries": ref.QUERIES_CANDIDATES}.get(name)
    if candidates is None:  # the preprocess: one row pass, no tile to choose
        return _reference_row(ref, name, dtype, head_dim, ref.kernel_tiles(name, ref.default_tiles(head_dim)), capability, specialisation), None
    tried, best = [], None
    for tiles in candidates:
        row = _reference_row(ref, name, dtype, head_dim, tiles, capability, specialisation)
        per_element = row["main_loop"]["instructions_per_element"] if row["main_loop"] else float("inf")
        fits = row["spills"] == 0 and row["registers"] <= 255
        tried.append({"tiles": str(tiles), "registers": row["registers"], "spills": row["spills"], "instructions_per_element": per_element})
        if fits and (best is None or per_element < best["main_loop"]["instructions_per_element"]):
            best = row
    return best or row, tried


def _progress_line(row: dict) -> str:
    loop = row.get("main_loop")
    figures = f"{loop['instructions_per_element']} instructions/element" if loop else "no MMA loop"
    return (f"{row['impl']} {row['genome']} {row['kernel']} {row['dtype']} d={row['head_dim']}: {row['registers']} registers, "
            f"{row['spills']} B spilled, {figures}")


# -- Markdown -----------------------------------------------------------------------------

_WIDTHS = {"": "32b", "U8": "8b", "S8": "8b", "U16": "16b", "S16": "16b", "64": "64b", "128": "128b"}


def _loads(loads: dict, kind: str) -> str:
    parts = [(name.split(".", 1)[1] if "." in name else "", n) for name, n in loads.items() if name.split(".")[0] == kind]
    if not parts:
        return "0"
    if kind == "LDSM":
        return "+".join(f"{n}×{width.replace('16.', '')}" for width, n in parts)
    return "+".join(f"{n}×{_WIDTHS.get(width, width)}" for width, n in sorted(parts, key=lambda p: p[0]))


def _shapes(shapes: dict) -> str:
    by_shape = {}
    for shape, n in shapes.items():
        key = shape.split(".")[0]
        by_shape[key] = by_shape.get(key, 0) + n
    return " ".join(f"{n}×{s}" for s, n in by_shape.items()) or "0"


def _tiles(t: dict) -> str:
    text = f"{t['block_m']}×{t['block_n']} w{t['num_warps']} s{t['num_stages']}"
    return text + (" r255" if t.get("max_registers") else "")


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# Static kernel benchmark ({result['arch']}, compiled without a GPU)",
        "",
        f"_{env['date']}: Triton {env['triton']}, torch {env['torch']}, genomec {env['genomec']}; "
        f"compiled as a launch with {result['specialisation']}, {'with' if result['padding_mask'] else 'no'} padding mask._",
        "",
        "Per element: count in one main-loop iteration × threads / (BLOCK_M × BLOCK_N). "
        "Loads per iteration per thread, × access width. dup: warps computing each score of q k^T (1 = none); "
        "MMA ratio: MMA work issued / work of the loop's dots; unroll: iterations per pass through the SASS loop "
        "(counts are per iteration). Reference tiles: *same* = ours, *best* = its "
        "candidate with the fewest instructions per element and no spills.",
        "",
    ]
    rows = result["rows"]
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        for head_dim in dict.fromkeys(r["head_dim"] for r in rows if r["dtype"] == dtype):
            group = [r for r in rows if r["dtype"] == dtype and r["head_dim"] == head_dim]
            lines += [f"## {dtype}, head dim {head_dim}", "", _summary(group, result["standard_hash"]), "",
                      "| genome | kernel | tiles | regs | shared KiB | spills | instr/elem (all loops) | MUFU/elem | wgmma | mma.sync "
                      "| dup | MMA ratio | unroll | LDG | LDGSTS | LDS | LDSM | TMA |",
                      "|---|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|---|---|---|---|"]
            for r in group:
                loop = r.get("main_loop")
                name = r["kernel"] + (f" ({r['tiles_choice']} tiles)" if r["impl"] == REFERENCE else "")
                head = f"| {r['genome']} | {name} | {_tiles(r['tiles'])} | {r['registers']} | {r['shared_bytes'] / 1024:.1f} | {r['spills']} |"
                if not loop:
                    lines.append(head + " - | - | - | - | - | - | - | - | - | - | - | - |")
                    continue
                per_element = f"{loop['instructions_per_element']}"
                if r["instructions_per_element_all_loops"] != loop["instructions_per_element"]:
                    per_element += f" ({r['instructions_per_element_all_loops']})"
                dup = loop["score_duplication"]
                lines.append(
                    head + f" {per_element} | {loop['mufu_per_element']} | {_shapes(loop['wgmma'])} | {_shapes(loop['mma_sync'])} | "
                    f"{'-' if dup is None else f'{dup:g}'} | {'-' if loop['mma_work_ratio'] is None else loop['mma_work_ratio']} | {loop['unroll']} | "
                    + " | ".join(_loads(loop["loads"], kind) for kind in ("LDG", "LDGSTS", "LDS", "LDSM", "UTMALDG")) + " |"
                )
            lines.append("")
    return "\n".join(lines)


def _per_element(rows) -> float | None:
    loops = [r["main_loop"]["instructions_per_element"] for r in rows if r.get("main_loop")]
    return loops[0] if loops else None


# The static targets (issue 14, README): standard attention's main loop against the
# reference at the same tiles, forward and backward; no mma.sync and no duplicated score tile
# in any kernel; every other graph's forward main loop against standard attention's.
FORWARD_TARGET, BACKWARD_TARGET, OTHER_GRAPHS_TARGET = 1.15, 1.3, 2.0
AGAINST_REFERENCE = (("attention_fwd", "flash_forward", FORWARD_TARGET), ("attention_bwd_keys", "flash_backward_keys", BACKWARD_TARGET),
                     ("attention_bwd_queries", "flash_backward_queries", BACKWARD_TARGET))


def targets(group: list[dict], standard_hash: str) -> dict:
    """The static targets read off one dtype and head dim's rows: each with its figures and
    whether it holds."""
    ours = [r for r in group if r["impl"] == "genomec"]
    result = {}
    for kernel, ref_kernel, limit in AGAINST_REFERENCE:
        mine = _per_element([r for r in ours if r.get("hash") == standard_hash and r["kernel"] == kernel])
        theirs = _per_element([r for r in group if r["impl"] == REFERENCE and r["kernel"] == ref_kernel and r.get("tiles_choice") == "same"])
        if mine is not None and theirs:
            result[kernel] = {"ours": mine, "reference": theirs, "ratio": round(mine / theirs, 3), "limit": limit, "holds": mine / theirs <= limit}
    mma_sync = [f"{r['genome']} {r['kernel']}" for r in ours if r.get("mma_sync_anywhere")]
    duplicated = [f"{r['genome']} {r['kernel']}" for r in ours if (r.get("main_loop") or {}).get("score_duplication") not in (None, 1)]
    spills = [f"{r['genome']} {r['kernel']} ({r['spills']} B)" for r in ours if r["spills"]]
    result["no_mma_sync"] = {"kernels": mma_sync, "holds": not mma_sync}
    result["no_duplicated_score_tiles"] = {"kernels": duplicated, "holds": not duplicated}
    result["no_spills"] = {"kernels": spills, "holds": not spills}
    standard = _per_element([r for r in ours if r.get("hash") == standard_hash and r["kernel"] == "attention_fwd"])
    if standard:
        forwards = {r["genome"]: r["main_loop"]["instructions_per_element"] for r in ours
                    if r["kernel"] == "attention_fwd" and r.get("main_loop") and r.get("hash") != standard_hash}
        ratios = {genome: round(value / standard, 2) for genome, value in forwards.items()}
        worst = max(ratios.items(), key=lambda item: item[1], default=(None, 0.0))
        result["other_forwards"] = {"ratios": ratios, "worst": worst[0], "limit": OTHER_GRAPHS_TARGET, "holds": worst[1] <= OTHER_GRAPHS_TARGET}
    return result


def _summary(group: list[dict], standard_hash: str) -> str:
    """Standard attention against the reference (main-loop instructions per element), and
    the static targets."""
    parts = []
    for kernel, ref_kernel, _ in AGAINST_REFERENCE:
        ours = _per_element([r for r in group if r["impl"] == "genomec" and r.get("hash") == standard_hash and r["kernel"] == kernel])
        theirs = {c: _per_element([r for r in group if r["impl"] == REFERENCE and r["kernel"] == ref_kernel and r["tiles_choice"] == c])
                  for c in REFERENCE_TILES}
        if ours is None:
            continue
        against = ", ".join(f"{theirs[c]} with {c} tiles ({ours / theirs[c]:.2f}x)" for c in REFERENCE_TILES if theirs.get(c))
        if against:
            parts.append(f"{kernel}: {ours} instructions per element, the reference {against}")
    text = ("Standard attention, main loop: " + "; ".join(parts) + ".") if parts else ""
    checks = targets(group, standard_hash)
    lines = []
    for kernel, _, limit in AGAINST_REFERENCE:
        if kernel in checks:
            c = checks[kernel]
            lines.append(f"- {kernel} within {limit}x of the reference at the same tiles: {c['ratio']}x, {'holds' if c['holds'] else 'missed'}")
    for key, label in (("no_mma_sync", "no mma.sync"), ("no_duplicated_score_tiles", "no duplicated score tiles"), ("no_spills", "no spills")):
        c = checks[key]
        lines.append(f"- {label}: {'holds' if c['holds'] else 'missed: ' + ', '.join(c['kernels'])}")
    if "other_forwards" in checks:
        c = checks["other_forwards"]
        worst = f"{c['worst']} {c['ratios'][c['worst']]}x" if c["worst"] else "-"
        lines.append(f"- every other graph's forward within {c['limit']}x of standard attention's (main loop): worst {worst}, "
                     f"{'holds' if c['holds'] else 'missed'}")
    return text + ("\n\nTargets:\n" + "\n".join(lines) if lines else "")


if __name__ == "__main__":  # the child process of run_static: the job on stdin, the rows to the file named
    job = json.loads(sys.stdin.read())
    rows = _read_kernels(job, lambda line: print(PROGRESS + line, file=sys.stderr, flush=True))
    Path(sys.argv[1]).write_text(json.dumps(rows))
