"""Ahead-of-time compilation for a GPU target, on any machine (SPEC 3, Without a GPU).

`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))` runs the whole Triton
pipeline down to a cubin without a driver. Registers and stack come from
`cuobjdump -res-usage` on that cubin (the binary ships in Triton's wheel), spill bytes from
the ptxas log of that very compilation, shared memory from the compiled metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .backward import FP32_BUFFERS
from .generate import GeneratedModule, KernelInterface
from .tiles import DOT_PRECISION, head_dim_pad

DTYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


@dataclass(frozen=True)
class KernelResources:
    name: str
    registers: int
    spills: int  # bytes of spill stores + loads reported by ptxas (register spills)
    stack: int
    shared_bytes: int
    compile_seconds: float


# Turing: the oldest GPUs Triton's NVIDIA backend generates code for (its Blackwell-era
# ptxas, the one Triton 3.9 uses from sm_90 on, accepts nothing older either). Older
# targets (sm_20, sm_50) abort inside LLVM or ptxas rather than failing cleanly.
MIN_ARCH = 75


def parse_arch(arch: str) -> int:
    """'sm_90' (or 'sm90', '90', 'sm_90a') -> 90, for an architecture the installed Triton
    compiles for (`supported_archs`); else ValueError naming the supported ones."""
    match = re.fullmatch(r"(?:sm_?)?(\d+)a?", arch.strip().lower())
    if not match:
        raise ValueError(f"--arch {arch}: expected a CUDA architecture like sm_90")
    capability = int(match.group(1))
    supported = supported_archs()
    if capability not in supported:
        raise ValueError(
            f"--arch {arch}: the installed Triton does not compile for it; "
            f"supported: {', '.join(f'sm_{a}' for a in supported)}"
        )
    return capability


@functools.lru_cache(maxsize=None)
def supported_archs() -> tuple[int, ...]:
    """The CUDA compute capabilities from MIN_ARCH on that the ptxas Triton picks for each
    (its bundled ones, by capability, or TRITON_PTXAS_PATH) accepts as `--gpu-name`."""
    from triton.backends.nvidia.compiler import get_ptxas  # Triton 3.6 to 3.9: get_ptxas(arch)

    candidates = range(MIN_ARCH, 200)
    by_tool = {arch: get_ptxas(arch).path for arch in candidates}
    accepted = {path: _ptxas_archs(path) for path in set(by_tool.values())}
    return tuple(arch for arch in candidates if arch in accepted[by_tool[arch]])


def _ptxas_archs(ptxas: str) -> frozenset[int]:
    """The `sm_NN` targets a ptxas lists as allowed values of `--gpu-name` in its help."""
    try:
        text = subprocess.run([ptxas, "--help"], capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"cannot run Triton's ptxas ({ptxas}): {e}") from None
    option = text[text.find("--gpu-name") :]
    allowed = option[: option.find("Default value")]
    return frozenset(int(n) for n in re.findall(r"'sm_(\d+)[a-z]?'", allowed))


def _signature(kernel: KernelInterface, dtype: str) -> dict[str, str]:
    types = {}
    for p in kernel.params:
        if p in ("seq_len", "num_heads"):
            types[p] = "i32"
        elif p == "mask_ptr":
            types[p] = "*i8"
        elif p in ("global_ptr", "stats_ptr") or p in FP32_BUFFERS:
            types[p] = "*fp32"
        else:
            types[p] = "*" + DTYPES[dtype]
    for c in kernel.constexprs:
        types[c] = "constexpr"
    return types


def _constants(kernel: KernelInterface, dtype: str, head_dim: int, config, causal: bool) -> dict:
    import triton.language as tl

    pad = head_dim_pad(head_dim)
    values = dict(
        HEAD_DIM=head_dim,
        HEAD_DIM_PAD=pad,
        HEAD_SCALE=head_dim**-0.5,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        HAS_MASK=True,  # the masked variant is the larger one
        IS_CAUSAL=causal,
        DOT_DTYPE={"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16}[dtype],
        DOT_PRECISION=DOT_PRECISION[dtype],
        STABLE_SOFTMAX_GRAD=dtype == "fp32",
        SAVE_FOR_BACKWARD=True,  # the forward that also saves for the backward is the larger one
    )
    return {c: values[c] for c in kernel.constexprs}


@contextlib.contextmanager
def _environment(**values: str):
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cuobjdump_path() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED, LOCAL of the (single) function in a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        text = subprocess.run([str(cuobjdump_path()), "-res-usage", path], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    match = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", text)
    if not match:
        raise RuntimeError(f"cannot read resource usage from cuobjdump output:\n{text}")
    return dict(zip(("registers", "stack", "shared", "local"), map(int, match.groups())))


def compile_ahead_of_time(
    generated: GeneratedModule,
    module_path: str | Path,
    arch: str = "sm_90",
    dtype: str = "fp16",
    head_dim: int = 64,
    config=None,
) -> list[KernelResources]:
    """Compile every kernel of a generated module (already written to `module_path`) for
    `arch`, and report each kernel's resources."""
    return compile_modules_ahead_of_time([(generated, module_path)], arch, dtype, head_dim, config)[0]


def compile_modules_ahead_of_time(
    modules, arch: str = "sm_90", dtype: str = "fp16", head_dim: int = 64, config=None, backward=None
) -> list[list[KernelResources]]:
    """`compile_ahead_of_time` for several (generated, module_path) pairs at once; `config`
    and `backward` are the tiles of the forward and backward kernels (default: the fixed ones).

    Triton fixes compiled-or-interpreted once per process, when triton.language is first
    imported; a process that runs kernels on the interpreter compiles in one child process."""
    from .modules import triton_mode
    from .tiles import backward_config, default_config

    config = config or default_config(dtype, head_dim)
    jobs = [
        {
            "module_path": str(module_path),
            "kernels": [dataclasses.asdict(k) for k in generated.kernels],
            "causal": generated.schedule.ir.causal,
            "arch": arch,
            "dtype": dtype,
            "head_dim": head_dim,
            "config": dataclasses.asdict(config),
            "backward_config": dataclasses.asdict(backward or backward_config(dtype, head_dim)),
        }
        for generated, module_path in modules
    ]
    mode = triton_mode()
    if mode == "compile" or (mode is None and os.environ.get("TRITON_INTERPRET") != "1"):
        return [_compile_job(job) for job in jobs]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run(
        [sys.executable, "-m", "genomec.codegen.aot"], input=json.dumps(jobs), capture_output=True, text=True, env=env
    )
    if child.returncode != 0:
        raise RuntimeError(f"ahead-of-time compilation failed:\n{child.stderr[-4000:]}")
    results = json.loads(child.stdout.strip().splitlines()[-1])
    return [[KernelResources(**r) for r in job_results] for job_results in results]


def _ast_source(fn, signature: dict, constants: dict):
    """ASTSource with names as keys (Triton >= 3.2); the constants' keyword is `constexprs`
    in current releases, `constants` in older ones."""
    import inspect

    import triton

    keyword = "constexprs" if "constexprs" in inspect.signature(triton.compiler.ASTSource).parameters else "constants"
    return triton.compiler.ASTSource(fn, signature=signature, **{keyword: constants})


def _compile_job(job: dict) -> list[KernelResources]:
    import triton
    from triton.backends.compiler import GPUTarget

    from .generate import KernelInterface
    from .modules import import_module_file
    from .tiles import TileConfig

    forward_config = TileConfig(**job["config"])
    backward_config = TileConfig(**job["backward_config"])
    dtype, head_dim = job["dtype"], job["head_dim"]
    capability = parse_arch(job["arch"])
    module = import_module_file(job["module_path"], interpret=False)
    results = []
    for k in job["kernels"]:
        kernel = KernelInterface(**{**k, "params": tuple(k["params"]), "constexprs": tuple(k["constexprs"])})
        fn = getattr(module, kernel.name)
        config = backward_config if kernel.backward else forward_config
        start = time.perf_counter()
        source = _ast_source(fn, _signature(kernel, dtype), _constants(kernel, dtype, head_dim, config, job["causal"]))
        # Always run ptxas (no Triton cache hit) and keep its log, which counts spill bytes.
        log = io.StringIO()
        quiet = {"TRITON_DEFAULT_FP_FUSION": os.environ.get("TRITON_DEFAULT_FP_FUSION", "1")}  # today's default, said aloud
        with _environment(TRITON_ALWAYS_COMPILE="1", TRITON_DUMP_PTXAS_LOG="1", **quiet), contextlib.redirect_stdout(log):
            compiled = triton.compile(
                source,
                target=GPUTarget("cuda", capability, 32),
                options=config.launch_options(),
            )
        seconds = time.perf_counter() - start
        usage = resource_usage(compiled.asm["cubin"])
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.getvalue())
        spills = int(spill.group(1)) + int(spill.group(2)) if spill else usage["local"]  # older Triton: no log
        results.append(
            KernelResources(
                name=kernel.name,
                registers=usage["registers"],
                spills=spills,
                stack=usage["stack"],
                shared_bytes=max(int(compiled.metadata.shared), usage["shared"]),
                compile_seconds=seconds,
            )
        )
    return results


if __name__ == "__main__":  # the child process of compile_modules_ahead_of_time: jobs on stdin, JSON out
    results = [_compile_job(job) for job in json.loads(sys.stdin.read())]
    print(json.dumps([[dataclasses.asdict(r) for r in resources] for resources in results]))
