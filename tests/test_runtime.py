"""The kernel cache and loader: hits, keys, atomic entries, corruption, two processes at
once, persisted autotuning choices."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

if not torch.cuda.is_available():  # Triton's mode is fixed by its first import: interpret here
    os.environ.setdefault("TRITON_INTERPRET", "1")

from genomec.genome import parse_genome
from genomec.ir import execute, lower
from genomec.runtime import KernelCache, load
from genomec.runtime import autotune
from genomec.runtime.cache import ENTRY_FILE, MODULE_FILE

STANDARD = "matmul(softmax(scale(matmul(q, transpose(k)))), v)"


def lowered(expr=STANDARD, causal=False):
    return lower(parse_genome({"expr": expr, "causal": causal}))


def assert_runs(module, compiled):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 11, 16, generator=g) for _ in range(3))
    out = module.launch(q, k, v)
    reference = execute(compiled.simplified, q.double(), k.double(), v.double())
    torch.testing.assert_close(out.double(), reference, rtol=1e-4, atol=1e-5)


def test_second_load_is_a_cache_hit(tmp_path, monkeypatch):
    cache = KernelCache(tmp_path)
    compiled = lowered()
    first = cache.get_or_build(compiled)
    import genomec.runtime.cache as cache_module

    monkeypatch.setattr(cache_module, "generate", lambda *_: pytest.fail("regenerated on a hit"))
    second = cache.get_or_build(compiled)
    assert second.path == first.path and (first.path / MODULE_FILE).exists()
    assert_runs(load(compiled, cache), compiled)


def test_key_covers_hash_generator_triton_and_options(tmp_path):
    cache = KernelCache(tmp_path)
    h = lowered().hash
    assert cache.key(h) == cache.key(h)
    assert cache.key(h) != cache.key(h, {"dtype": "bf16"})
    assert cache.key(h) != cache.key(lowered("matmul(softmax(cos(q, k)), v)").hash)
    assert cache.entry_path(h).name.startswith(h)


@pytest.mark.parametrize("damage", ["truncate module", "garbage entry", "missing entry", "wrong checksum"])
def test_a_corrupt_entry_is_rebuilt(tmp_path, damage):
    cache = KernelCache(tmp_path)
    compiled = lowered()
    entry = cache.get_or_build(compiled)
    if damage == "truncate module":
        (entry.path / MODULE_FILE).write_text("import triton\n@triton.jit\ndef attention_fwd(")
    elif damage == "garbage entry":
        (entry.path / ENTRY_FILE).write_bytes(b"\x00\xff not json")
    elif damage == "missing entry":
        (entry.path / ENTRY_FILE).unlink()
    else:
        meta = json.loads((entry.path / ENTRY_FILE).read_text())
        meta["module_sha256"] = "0" * 64
        (entry.path / ENTRY_FILE).write_text(json.dumps(meta))
    assert cache.lookup(compiled.hash) is None  # detected and moved aside
    rebuilt = cache.get_or_build(compiled)
    assert rebuilt.path == entry.path
    assert_runs(load(compiled, cache), compiled)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


CHILD = textwrap.dedent(
    """
    import sys
    from genomec.genome import parse_genome
    from genomec.ir import lower
    from genomec.runtime import KernelCache
    compiled = lower(parse_genome({"expr": sys.argv[2]}))
    entry = KernelCache(sys.argv[1]).get_or_build(compiled)
    print(entry.path)
    """
)


def test_two_processes_compiling_the_same_genome_both_succeed(tmp_path):
    for attempt in range(3):  # several rounds, to give the race a chance
        root = tmp_path / f"round{attempt}"
        children = [
            subprocess.Popen([sys.executable, "-c", CHILD, str(root), STANDARD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        results = [c.communicate(timeout=120) for c in children]
        assert all(c.returncode == 0 for c in children), results
        paths = {out.strip() for out, _ in results}
        assert len(paths) == 1
        entries = [p for p in root.iterdir()]
        assert [p.name for p in entries] == [os.path.basename(paths.pop())]  # one entry, no leftovers
        assert KernelCache(root).lookup(lowered().hash) is not None


def test_fallback_graph_loads_without_an_entry(tmp_path):
    # a softmax over the product of two maps: the [N,N] x [N,N] contraction is needed whole
    compiled = lowered("matmul(softmax(matmul(softmax(matmul(q, transpose(k))), softmax(matmul(k, transpose(q))))), v)")
    module = load(compiled, KernelCache(tmp_path))
    assert not module.fused and module.backend == "reference (fallback)"
    assert list(tmp_path.iterdir()) == []
    assert_runs(module, compiled)


def test_autotune_choice_is_persisted(tmp_path):
    table = autotune.TuningTable(tmp_path / "autotune.json")
    key = autotune.tuning_key("sm_90", "bf16", 64, 3000)
    assert key == "sm_90/bf16/d64/n4096"
    timings = {c: 1.0 + i for i, c in enumerate(autotune.candidates(64))}
    best = list(timings)[0]
    timings[best], timings[list(timings)[-1]] = 9.0, 0.5
    calls = []

    def timer(config):
        calls.append(config)
        return timings[config]

    chosen = autotune.choose(table, "abc", key, autotune.candidates(64), timer)
    assert chosen == list(timings)[-1] and len(calls) == len(timings)
    # another process (a fresh table object) reads the choice without timing again
    again = autotune.choose(autotune.TuningTable(tmp_path / "autotune.json"), "abc", key, autotune.candidates(64), pytest.fail)
    assert again == chosen


def test_autotune_skips_configs_that_fail_and_survives_a_corrupt_table(tmp_path):
    path = tmp_path / "autotune.json"
    path.write_text("{ not json")
    table = autotune.TuningTable(path)
    configs = autotune.candidates(128)

    def timer(config):
        if config == configs[0]:
            raise RuntimeError("out of shared memory")
        return float(config.block_m)

    chosen = autotune.choose(table, "h", "sm_90/fp16/d128/n1024", configs, timer)
    assert chosen != configs[0] and table.get("h", "sm_90/fp16/d128/n1024") == chosen


def test_length_buckets():
    assert [autotune.length_bucket(n) for n in (1, 64, 65, 1000, 1024, 1025)] == [64, 64, 128, 1024, 1024, 2048]


def test_backward_has_its_own_key_and_search_space():
    forward_key = autotune.tuning_key("sm_90", "fp16", 64, 3000)
    backward_key = autotune.tuning_key("sm_90", "fp16", 64, 3000, backward=True)
    assert backward_key == "sm_90/fp16/d64/n4096/bwd" != forward_key
    for dtype in ("fp32", "fp16", "bf16"):
        for head_dim in (24, 64, 96, 128, 256):
            space = autotune.backward_candidates(dtype, head_dim)
            assert space[0] == autotune.backward_config(dtype, head_dim)  # the fixed choice leads
            assert len(set(space)) == len(space)


class FakeGPU:
    """Makes a module on the CPU interpreter tune as on a GPU: each timing runs the launches it
    times (so they must be complete) and answers from a script, in candidate order. Records
    the config of every kernel sequence launched and the backward's choices."""

    def __init__(self, module, monkeypatch, times=()):
        self.times = list(times)
        self.timed = 0
        self.launched = []  # ("forward" | "backward", config) per kernel sequence
        self.backward_choices = []
        module.interpret = False  # tune as on a GPU; Triton still interprets
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
        monkeypatch.setattr(autotune, "benchmark", self.benchmark)
        run, launch_backward, backward_config = module._run, module.launch_backward, module._backward_config

        def recorded_run(tensors, mask, ref, config, saved=None):
            self.launched.append(("forward", config))
            return run(tensors, mask, ref, config, saved)

        def recorded_backward(q, k, v, mask, saved, grad_out, config=None):
            self.launched.append(("backward", config))
            return launch_backward(q, k, v, mask, saved, grad_out, config)

        def recorded_backward_config(*args):
            self.backward_choices.append(backward_config(*args))
            return self.backward_choices[-1]

        module._run, module.launch_backward, module._backward_config = recorded_run, recorded_backward, recorded_backward_config

    def benchmark(self, run):
        if self.timed == len(self.times):
            pytest.fail("timed more candidates than scripted: a persisted choice was not read back")
        run()
        self.timed += 1
        return self.times[self.timed - 1]


def test_backward_tiles_are_tuned_persisted_and_apart_from_the_forward(tmp_path, monkeypatch):
    cache = KernelCache(tmp_path)
    compiled = lowered()
    g = torch.Generator().manual_seed(0)
    q, k, v, grad_out = (torch.randn(1, 2, 45, 16, generator=g).half() for _ in range(4))
    forward_space, backward_space = autotune.candidates(16), autotune.backward_candidates("fp16", 16)
    assert len(backward_space) > 1
    # the last candidate wins each search: neither is the fixed default
    times = [2.0] * (len(forward_space) - 1) + [1.0] + [2.0] * (len(backward_space) - 1) + [1.0]

    def forward_and_backward(module):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        module(*inputs).backward(grad_out)
        return [t.grad for t in inputs]

    first = load(compiled, cache)
    fake = FakeGPU(first, monkeypatch, times)
    grads = forward_and_backward(first)
    assert fake.timed == len(times)
    # the forward's candidates, then the backward's (each on a whole backward sequence) were timed
    assert [c for phase, c in fake.launched if phase == "forward"] == [*forward_space, forward_space[-1]]
    assert [c for phase, c in fake.launched if phase == "backward"] == [None, *backward_space]
    assert fake.backward_choices == [backward_space[-1]]
    table = autotune.TuningTable(cache.root / "autotune.json")
    assert table.get(compiled.hash, autotune.tuning_key("sm_90", "fp16", 16, 45)) == forward_space[-1]
    assert table.get(compiled.hash, autotune.tuning_key("sm_90", "fp16", 16, 45, backward=True)) == backward_space[-1]

    # a second module (as another process: a fresh table object) reads both choices back
    second = load(compiled, cache)
    again = FakeGPU(second, monkeypatch)  # no timings scripted: any would fail
    second_grads = forward_and_backward(second)
    assert [c for phase, c in again.launched if phase == "forward"] == [forward_space[-1]]
    assert again.backward_choices == [backward_space[-1]]
    reference = [t.double().requires_grad_(True) for t in (q, k, v)]
    execute(compiled.simplified, *reference).backward(grad_out.double())
    for ours, before, exact in zip(second_grads, grads, reference):
        torch.testing.assert_close(ours, before)
        torch.testing.assert_close(ours.double(), exact.grad, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("expr", [STANDARD, "matmul(sigmoid(scale(matmul(q, transpose(k)))), v)", "matmul(softmax(cos(q, k)), v)"])
def test_gpu_forward_at_real_sizes(tmp_path, expr, dtype):
    compiled = lowered(expr)
    module = load(compiled, KernelCache(tmp_path))
    q, k, v = (torch.randn(2, 8, 2048, 64, device="cuda", dtype=dtype) for _ in range(3))
    mask = torch.rand(2, 2048, device="cuda") > 0.2
    out = module.launch(q, k, v, mask)
    reference = execute(compiled.simplified, q.double(), k.double(), v.double(), mask=mask)
    error = ((out.double() - reference).abs().max() / reference.abs().max()).item()
    assert error < (1e-4 if dtype == torch.float32 else 2e-2)
