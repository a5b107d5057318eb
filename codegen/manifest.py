"""`genomec compile`: write the generated modules of a genome and `manifest.json`.

The manifest lists every distinct attention graph once (a model compiles each distinct
graph once): its hash, the layers using it, whether it is fused (and if not, why it runs
on the reference executor), its stages (kernels in launch order, with their passes), and
its kernels; whether its backward is fused (three backward kernels after the forward
ones) or recomputes through the reference executor, and why; with an arch, each kernel's
registers, spills and shared memory from ahead-of-time compilation for that GPU target
(backward kernels with their own tiles). Nothing needs a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from genomec.genome import AttentionGenome, Genome

from .aot import compile_modules_ahead_of_time
from .generate import GENERATOR_VERSION, generate
from .schedule import schedule
from .tiles import backward_config, default_config

DTYPES = ("fp16", "bf16", "fp32")
MANIFEST = "manifest.json"


def model_head_dim(genome: Genome) -> int:
    """A model's head dim from its config; 64 for a bare attention graph."""
    if isinstance(genome, AttentionGenome):
        return 64
    return genome.config["hidden_size"] // genome.config["num_heads"]


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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
    for entry in entries:
        compiled = entry.compiled
        start = time.perf_counter()
        sched = schedule(compiled.simplified)
        record = {"hash": compiled.hash, "layers": entry.layers, "causal": compiled.simplified.causal, "fused": sched.fused}
        graphs.append(record)
        if not sched.fused:
            record.update(backend="reference", reason=sched.reason, stages=[], kernels=[],
                          backward={"fused": False, "reason": "the forward is not fused"})
            say(f"{compiled.hash}: fallback to the reference executor ({sched.reason})")
            continue
        generated = generate(compiled)
        module_file = out_dir / f"{compiled.hash}.py"
        write_atomic(module_file, generated.source)
        record.update(
            backend="triton",
            module=module_file.name,
            codegen_ms=round((time.perf_counter() - start) * 1e3, 3),  # schedule + source
            source_bytes=len(generated.source.encode()),
            stages=sched.stages(),
            kernels=[{"name": k.name, "direction": "backward" if k.backward else "forward"} for k in generated.kernels],
            backward={"fused": generated.backward.fused, "reason": generated.backward.reason},
        )
        generated_modules.append((record, generated, module_file))
        say(f"{compiled.hash}: fused, {len(record['stages'])} stage(s) -> {module_file.name}")

    if arch and generated_modules:
        say(f"compiling {sum(len(g.kernels) for _, g, _ in generated_modules)} kernel(s) ahead of time for {arch} ({dtype}, head dim {head_dim})")
        results = compile_modules_ahead_of_time(
            [(generated, module_file) for _, generated, module_file in generated_modules], arch=arch, dtype=dtype, head_dim=head_dim, config=config
        )
        for (record, generated, _), resources in zip(generated_modules, results):
            record["kernels"] = [
                {
                    "name": r.name,
                    "direction": "backward" if k.backward else "forward",
                    "registers": r.registers,
                    "spills": r.spills,
                    "stack": r.stack,
                    "shared_bytes": r.shared_bytes,
                    "compile_seconds": round(r.compile_seconds, 3),
                }
                for k, r in zip(generated.kernels, resources)
            ]

    fused = sum(g["fused"] for g in graphs)
    backward_fused = sum(g["backward"]["fused"] for g in graphs)
    manifest = {
        "genome": str(path),
        "name": genome.name,
        "generator": GENERATOR_VERSION,
        "triton": _triton_version(),
        "arch": arch,
        "dtype": dtype,
        "head_dim": head_dim,
        "tile_config": {"block_m": config.block_m, "block_n": config.block_n, "num_warps": config.num_warps, "num_stages": config.num_stages},
        "coverage": {"fused": fused, "backward_fused": backward_fused, "graphs": len(graphs)},
        "backward_tile_config": dataclasses.asdict(backward_config(dtype, head_dim)),
        "graphs": graphs,
    }
    write_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _triton_version() -> str:
    from importlib.metadata import version

    return version("triton")
