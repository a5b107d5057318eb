"""`genomec compile`: write the generated modules of a genome and `manifest.json`.

The manifest lists every distinct attention graph once (a model compiles each distinct
graph once): its hash, the layers using it, whether it is fused (and if not, why it runs
on the reference executor), its stages (kernels in launch order, with their passes; a
graph that runs in several stages (stages.py) has one module per stage, and each stage
and kernel names its stage, the value it computes and where its inputs come from), and
its kernels; whether its backward is fused (three backward kernels after the forward
ones) or recomputes through the reference executor, and why; with an arch, each kernel's
registers, spills and shared memory from ahead-of-time compilation for that GPU target
(backward kernels with their own tiles), compiled as a launch of SPEC 7's suite compiles
them (`specialisation`: aligned pointers, N a multiple of 16). Nothing needs a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from genomec.fileio import write_atomic
from genomec.genome import AttentionGenome, Genome

from .aot import DEFAULT_SPECIALISATION, compile_modules_ahead_of_time
from .generate import GENERATOR_VERSION
from .product import compile_graph
from .tiles import backward_config, default_config

DTYPES = ("fp16", "bf16", "fp32")
MANIFEST = "manifest.json"


def model_head_dim(genome: Genome) -> int:
    """A model's head dim from its config; 64 for a bare attention graph."""
    if isinstance(genome, AttentionGenome):
        return 64
    return genome.config["hidden_size"] // genome.config["num_heads"]


def compile_genome(
    path: str | Path,
    genome: Genome,
    entries,
    out_dir: str | Path,
    arch: str | None = None,
    dtype: str = "fp16",
    head_dim: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Generate (and with `arch`, compile ahead of time) the distinct attention graphs
    (`entries`, from `genomec.api.distinct_graphs`) of the genome read from `path` into
    `out_dir`; write and return the manifest."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    head_dim = head_dim or model_head_dim(genome)
    config = default_config(dtype, head_dim)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda line: None)

    graphs, generated_modules = [], []
    compiled_kernels, repeated = {}, []  # module -> its kernel records; stages repeating a module
    for entry in entries:
        compiled = entry.compiled
        start = time.perf_counter()
        product = compile_graph(compiled)
        plan = product.plan
        record = {"hash": compiled.hash, "layers": entry.layers, "causal": compiled.simplified.causal, "fused": plan.fused}
        graphs.append(record)
        if not plan.fused:
            record.update(backend="reference", reason=plan.reason, stages=[], kernels=[],
                          backward={"fused": False, "reason": "the forward is not fused"})
            say(f"{compiled.hash}: fallback to the reference executor ({plan.reason})")
            continue
        stages, kernels, modules, backward_reasons = [], [], [], []
        for stage, generated in product.stages():
            module_file = out_dir / f"{stage.compiled.hash}.py"
            first = module_file.name not in modules  # stages of one graph share its module
            if first:
                write_atomic(module_file, generated.source)
                modules.append(module_file.name)
            where = {"stage": stage.name, "module": module_file.name}
            if plan.multi_stage:
                where.update(computes=stage.computes, inputs=stage.inputs)
            stages += [dict(s, **where) for s in generated.schedule.stages()]
            stage_kernels = [dict({"name": k.name, "direction": "backward" if k.backward else "forward"}, **where) for k in generated.kernels]
            kernels += stage_kernels
            if not generated.backward.fused:
                backward_reasons.append((f"{stage.name}: " if plan.multi_stage else "") + generated.backward.reason)
            if first:
                generated_modules.append((stage_kernels, generated, module_file))
                compiled_kernels[module_file.name] = stage_kernels
            else:  # its resources are the first such stage's
                repeated.append((stage_kernels, compiled_kernels[module_file.name]))
        record.update(
            backend="triton",
            module=modules[-1],
            modules=modules,
            codegen_ms=round((time.perf_counter() - start) * 1e3, 3),  # stages + schedule + source
            source_bytes=sum((out_dir / m).stat().st_size for m in modules),
            stages=stages,
            kernels=kernels,
            backward={"fused": not backward_reasons, "reason": "; ".join(backward_reasons) or None},
        )
        if plan.note:
            record["rewritten"] = plan.note
        say(f"{compiled.hash}: fused, {len(plan.stages)} stage(s), {len(stages)} kernel launch(es) -> {', '.join(modules)}")

    if arch and generated_modules:
        say(f"compiling {sum(len(g.kernels) for _, g, _ in generated_modules)} kernel(s) ahead of time for {arch} ({dtype}, head dim {head_dim})")
        results = compile_modules_ahead_of_time(
            [(generated, module_file) for _, generated, module_file in generated_modules], arch=arch, dtype=dtype, head_dim=head_dim, config=config,
            retile=True,
        )
        backward = backward_config(dtype, head_dim)
        for (stage_kernels, generated, module_file), resources in zip(generated_modules, results):
            for record, r in zip(stage_kernels, resources):  # the records in the manifest, filled in place
                record.update(_resources(r))
            fixed = [dataclasses.asdict(backward.for_grid(k.grid) if k.backward else config) for k in generated.kernels]
            retiled = {"backward" if k.backward else "forward" for k, r, f in zip(generated.kernels, resources, fixed) if r.tiles != f}
            for direction in sorted(retiled):
                say(f"{module_file.name}: {direction} kernels spill with the default tiles; compiled with the first candidate that does not")
        for stage_kernels, first_kernels in repeated:
            for record, first in zip(stage_kernels, first_kernels):
                record.update({key: value for key, value in first.items() if key not in record})

    fused = sum(g["fused"] for g in graphs)
    backward_fused = sum(g["backward"]["fused"] for g in graphs)
    manifest = {
        "genome": str(path),
        "name": genome.name,
        "generator": GENERATOR_VERSION,
        "triton": _triton_version(),
        "arch": arch,
        "specialisation": str(DEFAULT_SPECIALISATION) if arch else None,
        "dtype": dtype,
        "head_dim": head_dim,
        "tile_config": {"block_m": config.block_m, "block_n": config.block_n, "num_warps": config.num_warps, "num_stages": config.num_stages},
        "coverage": {"fused": fused, "backward_fused": backward_fused, "graphs": len(graphs)},
        "backward_tile_config": backward_config(dtype, head_dim).to_json(),
        "graphs": graphs,
    }
    write_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _resources(r) -> dict:
    """A kernel's manifest fields from ahead-of-time compilation, with the tiles it took."""
    return dict(registers=r.registers, spills=r.spills, stack=r.stack, shared_bytes=r.shared_bytes, compile_seconds=round(r.compile_seconds, 3),
                tile_config=r.tiles)


def _triton_version() -> str:
    from importlib.metadata import version

    return version("triton")
