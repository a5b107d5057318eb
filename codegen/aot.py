"""Ahead-of-time compilation for a GPU target, on any machine (SPEC 3, Without a GPU).

`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))` runs the whole Triton
pipeline down to a cubin without a driver. Registers and stack come from
`cuobjdump -res-usage` on that cubin (the binary ships in Triton's wheel), spill bytes from
the ptxas log of that very compilation, shared memory from the compiled metadata.

It compiles what a launch compiles: Triton's JIT specialises a kernel on properties of its
arguments (16-byte aligned pointers, integers that are multiples of 16 or equal to 1), and
those change the code (vectorised loads, cp.async, prefetching; registers and shared
memory), so `Specialisation` gives the same properties here, by default those of a launch
of SPEC 7's suite.
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

from .abi import Grid, KernelInterface
from .generate import GeneratedModule
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
    tiles: dict | None = None  # the TileConfig it was compiled with (compile_job)


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


@dataclass(frozen=True)
class Specialisation:
    """The properties of a launch's arguments that Triton's JIT compiles into the kernel,
    given to ahead-of-time compilation so that it compiles the kernel a launch runs.

    Triton 3.6 to 3.9 (`JITFunction.run`: `native_specialize_impl` per argument, then
    `backend.parse_attr`): a tensor whose data pointer is a multiple of 16 bytes gets the
    attribute `tt.divisibility = 16`, and so does an integer that is a multiple of 16; an
    integer equal to 1 becomes the constant 1 (`jit_int_specialisation`). Our kernels opt
    out of none of it (no `do_not_specialize`). The runtime passes tensors from torch's
    allocator (aligned to 512 bytes) or contiguous copies, so its pointers are aligned; it
    passes `seq_len` (N) and `num_heads` (H) as they are, so a kernel is compiled once for
    N a multiple of 16 and once for any other N.

    The default is a launch of SPEC 7's suite (N in 1k..16k, H = 16): every pointer
    aligned, N and H multiples of 16. `seq_len=37` gives the kernel of a length that is
    not; `aligned_pointers=False` with such lengths, the unspecialised kernel."""

    aligned_pointers: bool = True
    seq_len: int = 4096
    num_heads: int = 16

    def __str__(self) -> str:
        pointers = "16-byte aligned pointers" if self.aligned_pointers else "unaligned pointers"
        return f"{pointers}, N={self.seq_len}, H={self.num_heads}"


DEFAULT_SPECIALISATION = Specialisation()
DIVISIBILITY = [["tt.divisibility", 16]]  # the attribute of a "D" specialisation (BaseBackend.parse_attr)


def jit_int_specialisation(value: int) -> str:
    """What Triton's JIT makes of an integer argument: "constant" (equal to 1, passed as the
    constant 1), "divisible" (a multiple of 16) or "" (neither)."""
    if value == 1:
        return "constant"
    return "divisible" if value % 16 == 0 else ""


def specialise(arg_names, types: dict[str, str], ints: dict[str, int], aligned_pointers: bool):
    """(signature, constants, attrs) of a kernel launched with integer arguments `ints` and
    pointers aligned or not: `types` with the JIT's constant 1 turned into a constexpr, the
    constants that adds, and ASTSource's `attrs` (keyed by the argument's index path, as the
    JIT keys them)."""
    signature, constants, attrs = dict(types), {}, {}
    for name, kind in types.items():
        if kind == "constexpr":
            continue
        if kind.startswith("*"):
            divisible = aligned_pointers
        else:
            form = jit_int_specialisation(ints[name])
            if form == "constant":
                signature[name], constants[name] = "constexpr", 1
                continue
            divisible = form == "divisible"
        if divisible:
            attrs[(arg_names.index(name),)] = DIVISIBILITY
    return signature, constants, attrs


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
    specialisation: Specialisation = DEFAULT_SPECIALISATION,
    retile: bool = False,
) -> list[KernelResources]:
    """Compile every kernel of a generated module (already written to `module_path`) for
    `arch`, as a launch with `specialisation` would, and report each kernel's resources
    (with `retile`, a pass that spills takes the next tiles that do not: compile_job)."""
    return compile_modules_ahead_of_time([(generated, module_path)], arch, dtype, head_dim, config, specialisation=specialisation,
                                         retile=retile)[0]


def compile_modules_ahead_of_time(
    modules, arch: str = "sm_90", dtype: str = "fp16", head_dim: int = 64, config=None, backward=None,
    specialisation: Specialisation = DEFAULT_SPECIALISATION, passes=("forward", "backward"), retile: bool = False,
    constants: dict | None = None,
) -> list[list[KernelResources]]:
    """`compile_ahead_of_time` for several (generated, module_path) pairs at once; `config`
    and `backward` are the tiles of the forward and backward kernels (default: the fixed ones),
    `passes` which of them to compile; with `retile`, a pass whose kernels spill with them
    takes the first candidate of its search space that does not (compile_job); `constants`
    replace constexprs' values (HAS_MASK=False: the variant without a padding mask).

    Triton fixes compiled-or-interpreted once per process, when triton.language is first
    imported; a process that runs kernels on the interpreter compiles in one child process."""
    from .modules import triton_mode

    jobs = [aot_job(generated, module_path, arch, dtype, head_dim, config, backward, specialisation, passes, constants, retile)
            for generated, module_path in modules]
    mode = triton_mode()
    if mode == "compile" or (mode is None and os.environ.get("TRITON_INTERPRET") != "1"):
        return [_compile_job(job) for job in jobs]
    # one child per core (ptxas and LLVM run single-threaded), the jobs dealt out in turn
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    count = max(1, min(len(jobs), os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="genomec-aot-") as tmp:
        children = []
        for i in range(count):
            files = [Path(tmp) / f"{i}.{name}" for name in ("in", "out", "err")]
            files[0].write_text(json.dumps(jobs[i::count]))
            with open(files[0]) as stdin, open(files[1], "w") as stdout, open(files[2], "w") as stderr:
                children.append((subprocess.Popen([sys.executable, "-m", "genomec.codegen.aot"], stdin=stdin, stdout=stdout,
                                                   stderr=stderr, text=True, env=env), files))
        dealt = []
        for child, files in children:
            if child.wait() != 0:
                raise RuntimeError(f"ahead-of-time compilation failed:\n{files[2].read_text()[-4000:]}")
            dealt.append(json.loads(files[1].read_text().strip().splitlines()[-1]))
    results = [dealt[i % count][i // count] for i in range(len(jobs))]
    return [[KernelResources(**r) for r in job_results] for job_results in results]


def aot_job(generated: GeneratedModule, module_path: str | Path, arch: str = "sm_90", dtype: str = "fp16", head_dim: int = 64,
            config=None, backward=None, specialisation: Specialisation = DEFAULT_SPECIALISATION,
            passes=("forward", "backward"), constants: dict | None = None, retile: bool = False) -> dict:
    """What compiling a generated module's kernels takes, as JSON (a child process reads
    it): the module file, the kernels of `passes`, the tiles of the forward and backward
    kernels (default: the fixed ones), the launch's specialisation, and `constants` that
    replace the constexprs' values (for example HAS_MASK=False: the variant without a mask)."""
    from .tiles import backward_candidates, backward_config, candidates, default_config

    return {
        "module_path": str(module_path),
        # each kernel with its Triton signature, from the module's ABI
        "kernels": [
            dataclasses.asdict(k) | {"types": generated.abi.signature(k, DTYPES[dtype])}
            for k in generated.kernels
            if ("backward" if k.backward else "forward") in passes
        ],
        "causal": generated.schedule.ir.causal,
        "arch": arch,
        "dtype": dtype,
        "head_dim": head_dim,
        "config": dataclasses.asdict(config or default_config(dtype, head_dim)),
        "backward_config": (backward or backward_config(dtype, head_dim)).to_json(),
        "specialisation": dataclasses.asdict(specialisation),
        "constants": constants or {},
        # with `retile`, the candidates after the fixed tiles (compile_job tries them in order)
        "retile": {
            "forward": [dataclasses.asdict(c) for c in candidates(head_dim, dtype)[1:]],
            "backward": [c.to_json() for c in backward_candidates(dtype, head_dim)[1:]],
        } if retile else None,
    }


def _ast_source(fn, signature: dict, constants: dict, attrs: dict):
    """ASTSource with names as keys (Triton >= 3.2); the constants' keyword is `constexprs`
    in current releases, `constants` in older ones; `attrs` maps an argument's index path
    (`(3,)`) to its attributes, as the JIT passes them (Triton 3.6 to 3.9)."""
    import inspect

    import triton

    keyword = "constexprs" if "constexprs" in inspect.signature(triton.compiler.ASTSource).parameters else "constants"
    return triton.compiler.ASTSource(fn, signature=signature, attrs=attrs, **{keyword: constants})


def compile_kernel(fn, types: dict[str, str], constants: dict, options: dict, capability: int,
                   specialisation: Specialisation = DEFAULT_SPECIALISATION, name: str | None = None):
    """Compile one @triton.jit function (this process must be in compile mode) for
    `capability`, as a launch with `specialisation` would: `types` gives each argument's
    Triton type ("*bf16", "i32", "constexpr"), `constants` the constexprs' values, `options`
    the launch options. Returns (Triton's compiled kernel, its KernelResources)."""
    import triton
    from triton.backends.compiler import GPUTarget

    ints = {"seq_len": specialisation.seq_len, "num_heads": specialisation.num_heads}
    signature, ones, attrs = specialise(fn.arg_names, types, ints, specialisation.aligned_pointers)
    start = time.perf_counter()
    source = _ast_source(fn, signature, {**constants, **ones}, attrs)
    # Always run ptxas (no Triton cache hit) and keep its log, which counts spill bytes.
    log = io.StringIO()
    quiet = {"TRITON_DEFAULT_FP_FUSION": os.environ.get("TRITON_DEFAULT_FP_FUSION", "1")}  # today's default, said aloud
    with _environment(TRITON_ALWAYS_COMPILE="1", TRITON_DUMP_PTXAS_LOG="1", **quiet), contextlib.redirect_stdout(log):
        compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    seconds = time.perf_counter() - start
    usage = resource_usage(compiled.asm["cubin"])
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.getvalue())
    spills = int(spill.group(1)) + int(spill.group(2)) if spill else usage["local"]  # older Triton: no log
    resources = KernelResources(
        name=name or fn.__name__,
        registers=usage["registers"],
        spills=spills,
        stack=usage["stack"],
        shared_bytes=max(int(compiled.metadata.shared), usage["shared"]),
        compile_seconds=seconds,
    )
    return compiled, resources


def compile_job(job: dict) -> list:
    """Compile the kernels of an `aot_job` in this process (which must compile): for each,
    (name, whether it is a backward kernel, its TileConfig, Triton's compiled kernel, its
    KernelResources). With the job's `retile`, a pass (forward, backward) whose kernels spill
    with its fixed tiles is compiled again with the next candidates of its search space
    (tiles.candidates, tiles.backward_candidates: the ones a GPU tunes over) until one spills
    nothing, or the last one (the job carries the candidates: aot_job's `retile`)."""
    from .tiles import BackwardTiles, TileConfig

    compiled = _compile_pass(job, TileConfig(**job["config"]), BackwardTiles.from_json(job["backward_config"]))
    if job.get("retile"):
        spaces = {False: [TileConfig(**c) for c in job["retile"]["forward"]], True: [BackwardTiles.from_json(c) for c in job["retile"]["backward"]]}
        for backward, space in spaces.items():
            for candidate in space:
                if not any(resources.spills for _, b, _, _, resources in compiled if b == backward):
                    break
                tiles = (TileConfig(**job["config"]), candidate) if backward else (candidate, BackwardTiles.from_json(job["backward_config"]))
                again = _compile_pass(dict(job, kernels=[k for k in job["kernels"] if k["backward"] == backward]), *tiles)
                compiled = [c for c in compiled if c[1] != backward] + again
    order = [k["name"] for k in job["kernels"]]
    return sorted(compiled, key=lambda c: order.index(c[0]))


def _compile_pass(job: dict, forward_config, backward_tiles) -> list:
    """compile_job's kernels with these tiles."""
    from .modules import import_module_file

    specialisation = Specialisation(**job.get("specialisation", {}))
    dtype, head_dim = job["dtype"], job["head_dim"]
    capability = parse_arch(job["arch"])
    module = import_module_file(job["module_path"], interpret=False)
    results = []
    for k in job["kernels"]:
        kernel = KernelInterface.from_json(k)
        config = backward_tiles.for_grid(kernel.grid) if kernel.backward else forward_config
        constants = _constants(kernel, dtype, head_dim, config, job["causal"])
        constants.update({c: v for c, v in job.get("constants", {}).items() if c in constants})
        compiled, resources = compile_kernel(
            getattr(module, kernel.name), k["types"], constants, config.launch_options(), capability, specialisation,
            name=kernel.name,
        )
        results.append((kernel.name, kernel.backward, config, compiled, dataclasses.replace(resources, tiles=dataclasses.asdict(config))))
    return results


def _compile_job(job: dict) -> list[KernelResources]:
    return [resources for *_, resources in compile_job(job)]


if __name__ == "__main__":  # the child process of compile_modules_ahead_of_time: jobs on stdin, JSON out
    results = [_compile_job(job) for job in json.loads(sys.stdin.read())]
    print(json.dumps([[dataclasses.asdict(r) for r in resources] for resources in results]))
