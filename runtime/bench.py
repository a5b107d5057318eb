"""The kernel suite of SPEC 7 (`genomec bench`, `benchmarks/kernel_suite.py`), forward and
forward+backward.

With a CUDA GPU, per genome, shape, dtype and pass: ours (fused Triton; the backward fused
where the graph is in the backward class, else the reference recompute, said per row)
against the eager reference executor, `torch.compile` of it, FlexAttention where the genome
is `softmax(score_mod(QK^T))V`, and SDPA for standard attention; median of CUDA-event
timings, TFLOP/s (4*B*H*N^2*d forward, 2.5x that for the backward), peak memory.

Without one it cannot time kernels, and says so: it reports instead, per genome, the front
end (parse, passes, schedule, codegen), the generated source size, whether the backward is
fused, and the ahead-of-time compile time and resources of every kernel (forward and
backward, each with its own tiles) for sm_90.

Results: JSON (GPU or CPU, versions, date), a Markdown table and a PNG plot.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENOMES = ROOT / "genomes"

# (label, genome file, layer or None): the suite of SPEC 7; the paper's model contributes
# its distinct attention graphs.
SUITE = [
    ("standard", "standard-attention.json"),
    ("autobert-zero", "autobert-zero.json"),
    ("cosine", "cosine-attention.json"),
    ("euclidean", "euclidean-attention.json"),
    ("sigmoid", "sigmoid-attention.json"),
    ("logsigmoid", "logsigmoid-attention.json"),
    ("softsign", "softsign-attention.json"),
    ("max-of-two-maps", "max-of-two-maps.json"),
    ("linear-attention", "linear-attention.json"),
]
GPU_SHAPES = [(4, 16, n, d) for d in (64, 128) for n in (1024, 2048, 4096, 8192, 16384)]
GPU_DTYPES = ("bf16", "fp16")


def suite_graphs(distinct_graphs, files=None):
    """[(label, path, GraphEntry)] for the suite (or the given genome files);
    `distinct_graphs` is `genomec.api.distinct_graphs`."""
    from genomec.genome import load_genome

    items = [(Path(f).stem, Path(f)) for f in files] if files else [(label, GENOMES / name) for label, name in SUITE]
    graphs = []
    for label, path in items:
        entries = distinct_graphs(load_genome(path))
        for entry in entries:
            name = label if len(entries) == 1 else f"{label} layer {','.join(map(str, entry.layers))}"
            graphs.append((name, path, entry))
    return graphs


def environment() -> dict:
    import torch
    from importlib.metadata import version

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": gpu,
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        # what else ran: timings on a shared CPU read against the 1-minute load average
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": version("triton"),
        "genomec": version("genomec"),
    }


def environment_line(env: dict) -> str:
    machine = env["gpu"] or f"{env['cpu']} CPU, {env['cpu_cores']} cores, load average {env['load_average']} at the start"
    return f"_{env['date']}: {machine}; Python {env['python']}, torch {env['torch']}, Triton {env['triton']}, genomec {env['genomec']}_"


# -- without a GPU: front end and ahead-of-time compilation ----------------------------


def frontend_ms(path: Path, entry, repeat: int = 20) -> float:
    """Median time of parse + passes + stages + schedule + codegen of one graph, in ms."""
    from genomec.codegen.product import compile_graph
    from genomec.genome import loads_genome
    from genomec.genome.parse import attention_to_json
    from genomec.ir import lower

    text = json.dumps(attention_to_json(entry.genome, "expr"))
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        compile_graph(lower(loads_genome(text)))
        samples.append(time.perf_counter() - start)
    return 1e3 * statistics.median(samples)


def run_cpu(graphs, out_dir: Path, aot: bool = True, arch: str = "sm_90", dtype: str = "bf16", head_dim: int = 64, progress=print) -> dict:
    from genomec.codegen.aot import compile_ahead_of_time
    from genomec.codegen.product import compile_graph

    rows = []
    modules_dir = Path(tempfile.mkdtemp(prefix="genomec-bench-"))  # the AOT compiler reads modules from files
    for name, path, entry in graphs:
        product = compile_graph(entry.compiled)
        plan = product.plan
        row = {"genome": name, "hash": entry.compiled.hash, "fused": plan.fused, "frontend_ms": round(frontend_ms(path, entry), 3)}
        if plan.fused:
            row["stages"] = len(plan.stages)
            row["source_bytes"] = 0
            row["backward_fused"] = True
            for stage, generated in product.stages():
                row["source_bytes"] += len(generated.source.encode())
                if not generated.backward.fused:
                    row["backward_fused"] = False
                    row["backward_reason"] = generated.backward.reason
                module_path = modules_dir / f"{generated.hash}.py"
                module_path.write_text(generated.source)
                if aot:
                    resources = compile_ahead_of_time(generated, module_path, arch=arch, dtype=dtype, head_dim=head_dim, retile=True)
                    row.setdefault("kernels", []).extend(
                        {"name": (f"{stage.name}/" if plan.multi_stage else "") + r.name, "direction": "backward" if k.backward else "forward",
                         "registers": r.registers, "spills": r.spills, "shared_bytes": r.shared_bytes, "compile_s": round(r.compile_seconds, 3),
                         "tiles": r.tiles}
                        for k, r in zip(generated.kernels, resources)
                    )
                    row["aot_compile_s"] = round(row.get("aot_compile_s", 0) + sum(r.compile_seconds for r in resources), 3)
        else:
            row["reason"] = plan.reason
        progress(f"{name}: front end {row['frontend_ms']:.2f} ms" + (f", AOT {row.get('aot_compile_s', 0):.2f} s" if aot and plan.fused else ""))
        rows.append(row)
    return {
        "mode": "cpu",
        "note": "no CUDA GPU: kernels were not timed; reported instead: front-end time, generated source size, "
        f"ahead-of-time compile time and per-kernel resources ({arch}, {dtype}, head dim {head_dim})",
        "rows": rows,
    }


def cpu_markdown(result: dict) -> str:
    lines = [f"_{result['note']}_", "",
             "| genome | hash | fused | backward | front end (ms) | source (B) | AOT (s) | kernels: registers / spills / shared |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for r in result["rows"]:
        kernels = "; ".join(f"{k['name']}: {k['registers']} / {k['spills']} / {k['shared_bytes']}" for k in r.get("kernels", []))
        lines.append(
            f"| {r['genome']} | {r['hash']} | {'yes' if r['fused'] else 'no (reference)'} | "
            f"{'fused' if r.get('backward_fused') else 'reference recompute'} | {r['frontend_ms']:.2f} | "
            f"{r.get('source_bytes', '-')} | {r.get('aot_compile_s', '-')} | {kernels or r.get('reason', '-')} |"
        )
    return "\n".join(lines) + "\n"


# -- with a GPU: timed forward against the baselines --------------------------------------


def _flex_score_mod(entry):
    """A FlexAttention score_mod when the graph is softmax(c * q k^T) v (c: scale/neg
    chain on the raw inputs), else None."""
    from genomec.ir.graph import INPUT_OP

    ir = entry.compiled.simplified
    ops = [n.op for _, n in ir.nodes() if n.op != INPUT_OP]
    if ops in (["transpose", "matmul", "scale", "softmax", "matmul"],) and ir.inputs == ("q", "k", "v"):
        return "scale"
    return None


def time_cuda(fn, warmup: int = 3, repeat: int = 10) -> tuple[float, int]:
    """(median ms over CUDA events, peak bytes allocated during one call)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return statistics.median(times), torch.cuda.max_memory_allocated() - base


PASSES = ("forward", "forward+backward")
BACKWARD_FLOP_FACTOR = 2.5  # SPEC 7: the backward counts 2.5x the forward's 4*B*H*N^2*d


def _with_backward(forward, inputs, grad_out):
    """forward(q, k, v) then backward of grad_out into the inputs."""

    def run():
        for t in inputs:
            t.grad = None
        forward(*inputs).backward(grad_out)

    return run


def run_gpu(graphs, shapes=GPU_SHAPES, dtypes=GPU_DTYPES, passes=PASSES, progress=print) -> dict:
    import torch

    from genomec.ir import execute
    from genomec.runtime import load

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    rows = []
    for name, path, entry in graphs:
        module = load(entry.compiled)
        ir = entry.compiled.simplified
        compiled_ref = torch.compile(lambda q, k, v, ir=ir: execute(ir, q, k, v))
        forwards = {
            "ours": lambda q, k, v: module(q, k, v),
            "eager": lambda q, k, v: execute(ir, q, k, v),
            "torch.compile": lambda q, k, v: compiled_ref(q, k, v),
        }
        if _flex_score_mod(entry):
            from torch.nn.attention.flex_attention import flex_attention

            flex = torch.compile(flex_attention)
            forwards["flex"] = lambda q, k, v: flex(q, k, v)
            forwards["sdpa"] = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v)
        for dtype in dtypes:
            for b, h, n, d in shapes:
                for which in passes:
                    backward = which == "forward+backward"
                    inputs = [torch.randn(b, h, n, d, device="cuda", dtype=torch_dtype[dtype], requires_grad=backward) for _ in range(3)]
                    grad_out = torch.randn(b, h, n, d, device="cuda", dtype=torch_dtype[dtype])
                    flops = 4 * b * h * n * n * d * (1 + BACKWARD_FLOP_FACTOR if backward else 1)
                    for impl, forward in forwards.items():
                        row = {"genome": name, "hash": entry.compiled.hash, "impl": impl, "pass": which, "dtype": dtype,
                               "B": b, "H": h, "N": n, "d": d}
                        if impl == "ours":
                            row["backend"] = module.backward_backend if backward else module.backend
                        fn = _with_backward(forward, inputs, grad_out) if backward else (lambda f=forward: f(*inputs))
                        try:
                            ms, peak = time_cuda(fn)
                            row.update(ms=round(ms, 4), tflops=round(flops / ms / 1e9, 2), peak_bytes=peak)
                        except Exception as e:  # out of memory for the [N,N] baselines at long N
                            row.update(error=f"{type(e).__name__}: {str(e)[:120]}")
                            torch.cuda.empty_cache()
                        rows.append(row)
                    progress(f"{name} {dtype} N={n} d={d} {which}: "
                             + ", ".join(f"{r['impl']} {r.get('ms', 'fail')}" for r in rows[-len(forwards):]))
    return {"mode": "gpu", "rows": rows}


def gpu_markdown(result: dict) -> str:
    lines = ["| genome | pass | dtype | N | d | impl | ms | TFLOP/s | peak MiB |", "|---|---|---|---:|---:|---|---:|---:|---:|"]
    for r in result["rows"]:
        peak = f"{r['peak_bytes'] / 2**20:.1f}" if "peak_bytes" in r else "-"
        impl = r["impl"] + (f" ({r['backend']})" if "backend" in r else "")
        lines.append(f"| {r['genome']} | {r['pass']} | {r['dtype']} | {r['N']} | {r['d']} | {impl} | {r.get('ms', r.get('error'))} | "
                     f"{r.get('tflops', '-')} | {peak} |")
    return "\n".join(lines) + "\n"


# -- driver ----------------------------------------------------------------------------


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if result["mode"] == "cpu":
        rows = result["rows"]
        names = [r["genome"] for r in rows]
        fig, (front, aot) = plt.subplots(1, 2, figsize=(12, 4))
        front.bar(range(len(rows)), [r["frontend_ms"] for r in rows])
        front.axhline(20.0, color="red", linestyle="--", label="SPEC 7 target: 20 ms")
        front.set_ylabel("ms")
        front.set_title("front end: parse, passes, schedule, codegen")
        front.legend()
        aot.bar(range(len(rows)), [r.get("aot_compile_s", 0) for r in rows], color="tab:orange")
        aot.set_ylabel("s")
        aot.set_title("ahead-of-time compile for sm_90 (no GPU)")
        for ax in (front, aot):
            ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=7)
    else:
        fig, ax = plt.subplots(figsize=(12, 4))
        timed = [r for r in result["rows"] if "tflops" in r]
        for which in sorted({r["pass"] for r in timed}):
            for impl in sorted({r["impl"] for r in timed}):
                rows = [r for r in timed if r["impl"] == impl and r["pass"] == which]
                if rows:
                    ax.plot(range(len(rows)), [r["tflops"] for r in rows], marker="o" if which == "forward" else "x", label=f"{impl} {which}")
        ax.set_ylabel("TFLOP/s")
        ax.set_xlabel("(genome, dtype, N, d) in suite order")
        ax.set_title("throughput, forward and forward+backward")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_suite(graphs, out_dir: str | Path, aot: bool = True, progress=print, shapes=GPU_SHAPES, dtypes=GPU_DTYPES) -> dict:
    """Run the suite over `graphs` (from suite_graphs) on a GPU if there is one, at
    `shapes` ([B, H, N, d]) and `dtypes`; write results.json, results.md, results.png."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()  # before the run: its load average is what else was running
    if torch.cuda.is_available():
        result = run_gpu(graphs, shapes=shapes, dtypes=dtypes, progress=progress)
        table = gpu_markdown(result)
    else:
        progress("no CUDA GPU: reporting front-end time, source size and ahead-of-time compilation instead of kernel timings")
        result = run_cpu(graphs, out_dir, aot=aot, progress=progress)
        table = cpu_markdown(result)
    result["environment"] = env
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "results.md").write_text(table + "\n" + environment_line(env) + "\n")
    plot(result, out_dir / "results.png")
    return result
