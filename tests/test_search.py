"""The search engine (SPEC 5): op priority, filters, the super-net's slices, the run
directory, resume after kill -9, injected failures, and the command line."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genomec.cli import main
from genomec.genome import ConvLayer, parse_genome
from genomec.search.config import build_config, to_json
from genomec.search.engine import Search, replay
from genomec.search.filters import probe
from genomec.search.priority import OpStats, PrioritySampler, UniformSampler
from genomec.search.rundir import HISTORY, RunDirectory
from genomec.search.supernet import SuperNet, inherit, shared_slices, write_back

WORDS = ("the cat dog bird sat ran on under a mat tree house red blue small big quickly slowly and "
         "then because it was very happy sad today yesterday").split()
TIMING_KEYS = ("seconds", "time_split")


def write_corpus(path: Path, paragraphs: int = 240, seed: int = 0) -> Path:
    """A small seeded English-like corpus: sentences from a fixed word list."""
    rng = random.Random(seed)
    text = "\n\n".join(
        " ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + "." for _ in range(3))
        for _ in range(paragraphs)
    )
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def private_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def toy_settings(corpus: Path, **overrides) -> dict:
    settings = dict(
        corpus=str(corpus), num_layers=2, hidden_size=16, num_heads=2, intermediate_size=32, kernel_sizes=[3, 5, 7],
        seq_len=16, batch_size=4, vocab_size=128, eval_blocks=8, steps=3, evaluations=10, population_size=4,
        tournament_size=2,
    )
    settings.update(overrides)
    return settings


def toy_config(tmp_path, **overrides):
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        write_corpus(corpus)
    return build_config("tiny", toy_settings(corpus, **overrides))


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One toy search, shared by the tests that read a finished run."""
    tmp_path = tmp_path_factory.mktemp("run")
    os.environ.setdefault("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = toy_config(tmp_path, evaluations=14)
    summary = Search(config, tmp_path / "out", progress=False, log=lambda m: None).run()
    return config, tmp_path / "out", summary


# -- operation priority ------------------------------------------------------------------------


def test_ucb_matches_hand_computation():
    stats = OpStats(["add", "neg", "max"], c=0.5)
    genome = {"layers": [{"type": "attention", "graph": {"expr": "add(q,neg(k))"}}]}
    stats.update({"status": "ok", "fitness": 0.4, "ops_chosen": ["add"], "genome": genome})
    stats.update({"status": "ok", "fitness": 0.2, "ops_chosen": ["add", "neg"], "genome": genome})
    stats.update({"status": "rejected", "fitness": None, "ops_chosen": ["neg"], "genome": genome})
    n_add, n_neg, total = 2, 2, 4
    assert stats.ucb("add") == pytest.approx(0.3 + 0.5 * math.sqrt(2 * math.log(total) / n_add))
    assert stats.ucb("neg") == pytest.approx(0.3 + 0.5 * math.sqrt(2 * math.log(total) / n_neg))
    assert stats.ucb("max") == math.inf and stats.mean("max") == 0.0


def test_greedy_draw_picks_unseen_ops_first():
    stats = OpStats(["add", "neg", "max", "abs"], c=0.1)
    stats.chosen.update({"add": 3, "neg": 1})
    sampler = PrioritySampler(stats, "greedy")
    rng = random.Random(0)
    drawn = {sampler.draw(["add", "neg", "max", "abs"], rng) for _ in range(50)}
    assert drawn == {"max", "abs"}  # ties among the unseen at random
    stats.chosen.update({"max": 1, "abs": 1})
    stats.fitness_sum.update({"neg": 5.0})
    stats.fitness_count.update({"neg": 1})
    assert sampler.draw(["add", "neg", "max", "abs"], rng) == "neg"


def test_softmax_and_uniform_draws_follow_their_weights():
    stats = OpStats(["add", "neg"], c=0.0)
    stats.chosen.update({"add": 1, "neg": 1})
    stats.fitness_sum.update({"add": 0.1, "neg": 0.0})
    stats.fitness_count.update({"add": 1, "neg": 1})
    rng = random.Random(1)
    draws = [PrioritySampler(stats, "softmax", temperature=0.1).draw(["add", "neg"], rng) for _ in range(4000)]
    expected = 1 / (1 + math.exp(-1.0))  # exp(0.1/0.1) : exp(0)
    assert draws.count("add") / len(draws) == pytest.approx(expected, abs=0.03)
    uniform = [UniformSampler().draw(["add", "neg"], rng) for _ in range(4000)]
    assert uniform.count("add") / len(uniform) == pytest.approx(0.5, abs=0.03)


# -- filters ---------------------------------------------------------------------------------------


def model(*graphs):
    return parse_genome({"layers": [{"type": "attention", "graph": g} for g in graphs]})


STANDARD = {"expr": "matmul(softmax(scale(matmul(q,transpose(k)))),v)"}


def test_equivalent_genomes_share_a_key():
    renamed = {"nodes": [
        {"id": "keys", "op": "transpose", "args": ["k"]}, {"id": "scores", "op": "matmul", "args": ["q", "keys"]},
        {"id": "z", "op": "scale", "args": ["scores"]}, {"id": "p", "op": "softmax", "args": ["z"]},
        {"id": "out", "op": "matmul", "args": ["p", "v"]}], "output": "out"}
    algebraic = {"expr": "matmul(softmax(scale(matmul(neg(neg(q)),transpose(k)))),v)"}
    same_function = {"expr": "matmul(softmax(neg(scale(matmul(neg(q),transpose(k))))),v)"}
    base = probe(model(STANDARD), 8)
    for variant in (renamed, algebraic):
        result = probe(model(variant), 8)
        assert result.structural_hash == base.structural_hash and result.functional_hash == base.functional_hash
    assert probe(model(same_function), 8).functional_hash == base.functional_hash
    other = probe(model({"expr": "matmul(softmax(matmul(q,transpose(k))),v)"}), 8)
    assert other.functional_hash != base.functional_hash and other.structural_hash != base.structural_hash


@pytest.mark.parametrize("expr, reason", [
    ("sub(q,q)", "constant"),
    ("matmul(softmax(sub(matmul(q,transpose(k)),matmul(q,transpose(k)))),sub(v,v))", "constant"),
    ("matmul(softmax(matmul(q,transpose(k))),q)", None),
])
def test_probe_rejects_degenerate_outputs(expr, reason):
    result = probe(model({"expr": expr}), 8)
    if reason is None:
        assert not result.rejected
    else:
        assert result.rejected and reason in result.reason and "layers[0]" in result.reason


def test_probe_rejects_non_finite_outputs(monkeypatch):
    import genomec.search.filters as filters

    real = filters.execute
    monkeypatch.setattr(filters, "execute", lambda ir, *qkv: real(ir, *qkv) / 0.0)
    assert "NaN or Inf" in probe(model(STANDARD), 8).reason


# -- the super-net -----------------------------------------------------------------------------------


def test_conv_child_inherits_and_writes_back_only_its_centre_taps(tmp_path):
    from genomec.models import GenomeBertConfig, GenomeBertForMaskedLM

    genome = parse_genome({"config": {"hidden_size": 16, "num_heads": 2, "intermediate_size": 32, "max_kernel_size": 7},
                           "layers": [{"type": "conv", "kernel_size": 3},
                                      {"type": "attention", "graph": {"expr": "matmul(softmax(matmul(q,transpose(k))),q)"}}]})
    config = GenomeBertConfig(genome=genome, vocab_size=50, max_position_embeddings=16)
    torch.manual_seed(0)
    supernet = SuperNet(config, num_layers=2)
    candidate = GenomeBertForMaskedLM(config)
    slices = shared_slices(supernet, candidate, genome)
    inherit(supernet, candidate, slices)
    kernel = supernet.layers[0].mixer.depthwise.weight
    assert kernel.shape[-1] == 7
    assert torch.equal(candidate.genome_bert.layers[0].mixer.depthwise.weight, kernel[..., 2:5])
    assert torch.equal(candidate.genome_bert.layers[1].mixer.projections.q.weight, supernet.layers[1].attention.projections.q.weight)

    before = {name: p.detach().clone() for name, p in supernet.named_parameters()}
    with torch.no_grad():
        for p in candidate.parameters():
            p.add_(1.0)
    trained = {name for name, _ in candidate.named_parameters()}
    write_back(supernet, candidate, slices, trained)
    after = dict(supernet.named_parameters())
    changed_taps = (after["layers.0.mixer.depthwise.weight"] != before["layers.0.mixer.depthwise.weight"]).any(dim=(0, 1))
    assert changed_taps.tolist() == [False, False, True, True, True, False, False]
    # the attention graph reads q and k only: the super-net's v projection is untouched,
    # and so is the attention branch of the conv position and the conv branch of the attention one
    for name in ("layers.1.attention.projections.v.weight", "layers.0.attention.projections.q.weight",
                 "layers.1.mixer.depthwise.weight", "layers.1.mixer.input_projection.weight"):
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(after["layers.1.attention.projections.k.weight"], before["layers.1.attention.projections.k.weight"])
    # parameters that were not trained are not written
    supernet2 = SuperNet(config, num_layers=2)
    snapshot = {n: p.detach().clone() for n, p in supernet2.named_parameters()}
    write_back(supernet2, candidate, slices, trained={"genome_bert.layers.1.mixer.output.weight"})
    for name, p in supernet2.named_parameters():
        assert torch.equal(p, snapshot[name]) == (name != "layers.1.attention.output.weight"), name


# -- a whole run -------------------------------------------------------------------------------------


def test_run_directory_caches_equal_a_replay_of_the_history(finished_run):
    config, out, summary = finished_run
    records = RunDirectory(out).read_history()
    assert summary["evaluations"] == len(records) == 14
    assert [r["index"] for r in records] == list(range(14))
    for record in records:
        for key in ("index", "parent", "mutation", "ops_chosen", "genome", "hash", "status", "reason", "fitness",
                    "loss", "params", "seconds", "backend"):
            assert key in record
        parse_genome(record["genome"])
    state = replay(records, config)
    stats = OpStats.from_records(records, config.ops, config.ucb_c)
    assert json.loads((out / "op_stats.json").read_text()) == json.loads(json.dumps(stats.to_json()))
    assert [p["index"] for p in json.loads((out / "population.json").read_text())] == state.population
    best = json.loads((out / "best.json").read_text())
    assert best["fitness"] == max(r["fitness"] for r in records if r["status"] == "ok")
    assert (out / "fitness.png").read_bytes()[:4] == b"\x89PNG" and (out / "op_priority.png").is_file()
    kept = sorted(int(p.stem) for p in (out / "top").glob("*.pt"))
    assert kept == sorted(state.top(config.top_k))
    assert json.loads((out / "run.json").read_text())["settings"] == {**config.identity(), "processes": 1}


def test_finished_run_population_and_statistics(finished_run):
    config, out, summary = finished_run
    records = RunDirectory(out).read_history()
    assert records[0]["mutation"] == {"type": "seed", "name": "standard", "ops_chosen": []}
    mutated = [r for r in records if r["parent"] is not None]
    assert mutated, "after the initial population, children are mutations of parents"
    for r in mutated:
        assert records[r["parent"]]["status"] == "ok" and r["parent"] < r["index"]
        assert set(r["ops_chosen"]) <= set(config.ops)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "duplicate", "rejected", "failed")}
    assert (summary["trained"], summary["duplicates"], summary["rejected"], summary["failed"]) == tuple(counts.values())
    for r in records:
        if r["status"] == "duplicate":
            assert r["fitness"] == records[r["duplicate_of"]]["fitness"]


def test_equivalent_children_are_trained_once(tmp_path, monkeypatch):
    import genomec.search.engine as engine

    config = toy_config(tmp_path, evaluations=4, population_size=4, seeds=[])
    renamed = {"nodes": [{"id": "a", "op": "transpose", "args": ["k"]}, {"id": "b", "op": "matmul", "args": ["q", "a"]},
                         {"id": "c", "op": "softmax", "args": ["b"]}, {"id": "d", "op": "matmul", "args": ["c", "v"]}],
               "output": "d"}
    graphs = [{"expr": "matmul(softmax(matmul(q,transpose(k))),v)"}, renamed,
              {"expr": "matmul(softmax(matmul(neg(neg(q)),transpose(k))),v)"},
              {"expr": "matmul(softmax(matmul(k,transpose(q))),v)"}]
    children = [parse_genome({"config": {"hidden_size": 16, "num_heads": 2, "intermediate_size": 32, "max_kernel_size": 7},
                              "layers": [{"type": "attention", "graph": g}, {"type": "conv", "kernel_size": 3}]})
                for g in graphs]
    proposals = iter(children)
    monkeypatch.setattr(engine.Proposer, "propose", lambda self, state, rng: (next(proposals), None, {"type": "random", "ops_chosen": []}))
    trained = []
    real = engine.Evaluator.evaluate
    monkeypatch.setattr(engine.Evaluator, "evaluate", lambda self, g, b: trained.append(g) or real(self, g, b))
    Search(config, tmp_path / "out", progress=False, log=lambda m: None).run()
    records = RunDirectory(tmp_path / "out").read_history()
    assert [r["status"] for r in records] == ["ok", "duplicate", "duplicate", "ok"]
    assert [r["duplicate_of"] for r in records] == [None, 0, 0, None]
    assert len(trained) == 2


def test_injected_failures_are_recorded_and_leave_the_supernet_untouched(tmp_path, monkeypatch):
    """A NaN loss (weights poisoned before training), a kernel build error and an
    out-of-memory error, each injected into one trained candidate: recorded as failed
    with the reason, the run finishes, and the super-net after each failure equals the
    super-net before it."""
    import genomec.search.evaluate as evaluate
    from genomec.models import modeling
    from genomec.models.modeling import GenomeAttention

    config = toy_config(tmp_path, evaluations=9)
    search = Search(config, tmp_path / "out", progress=False, log=lambda m: None)
    pending = ["nan", "build", "oom"]  # injected into the 2nd, 3rd, 4th trained candidates (build: one with attention)
    injected, snapshots, calls = {}, {}, []
    real_train, real_function = evaluate.train_loop, modeling.attention_function

    def train_loop(model, *args, **kwargs):
        index = len(search.state.records)
        calls.append(index)
        snapshots[index] = {n: p.detach().clone() for n, p in search.supernet.named_parameters()}
        has_attention = any(isinstance(m, GenomeAttention) for m in model.modules())
        if len(calls) >= 2 and pending and (pending[0] != "build" or has_attention):
            injected[index] = pending.pop(0)
        fault = injected.get(index)
        if fault == "nan":
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        if fault == "oom":
            real_train(model, *args, **kwargs)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(model, *args, **kwargs)

    def attention_function(compiled, name, device):
        if injected.get(len(search.state.records)) == "build":
            raise RuntimeError("CompilationError: kernel build failed")
        return real_function(compiled, name, device)

    monkeypatch.setattr(evaluate, "train_loop", train_loop)
    monkeypatch.setattr(modeling, "attention_function", attention_function)
    real_commit = search._commit

    def commit(records, *rest):
        for record, summary in zip(records, rest[0]):
            if summary is not None and summary["status"] == "failed":
                for name, p in search.supernet.named_parameters():
                    assert torch.equal(p, snapshots[record["index"]][name]), f"{name} changed by failed candidate {record['index']}"
        real_commit(records, *rest)

    search._commit = commit
    summary = search.run()
    records = RunDirectory(tmp_path / "out").read_history()
    assert summary["evaluations"] == 9 and not pending, injected
    expected = {"nan": "diverged", "build": "CompilationError", "oom": "out of memory"}
    for index, fault in injected.items():
        assert records[index]["status"] == "failed" and records[index]["fitness"] is None
        assert expected[fault] in records[index]["reason"], records[index]["reason"]
    assert summary["failed"] == 3
    last_failure = max(injected)
    assert any(r["status"] == "ok" for r in records[last_failure + 1:]), "the search goes on after failures"


def _search_command(config_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "genomec", "search", str(config_file), "--out", str(out), "--no-progress", "--json"]


def test_kill_9_then_resume_gives_the_uninterrupted_history(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    config_file = tmp_path / "search.json"
    config_file.write_text(json.dumps(toy_settings(corpus, evaluations=12, steps=4)))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    whole = subprocess.run(_search_command(config_file, tmp_path / "whole"), env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr

    killed_out = tmp_path / "killed"
    kills = 0
    for target in (3, 8):  # kill twice, at different points of the run
        process = subprocess.Popen(_search_command(config_file, killed_out), env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        history = killed_out / HISTORY
        while time.time() < deadline and process.poll() is None:
            if history.exists() and history.read_text().count("\n") >= target:
                break
            time.sleep(0.02)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 1
    resumed = subprocess.run(_search_command(config_file, killed_out), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    expected = without_timing(RunDirectory(tmp_path / "whole").read_history())
    assert without_timing(RunDirectory(killed_out).read_history()) == expected
    assert json.loads(resumed.stdout.splitlines()[-1])["evaluations"] == 12


def test_resume_appends_the_committed_record_and_drops_a_torn_line(tmp_path):
    config = toy_config(tmp_path, evaluations=5)
    out = tmp_path / "out"
    Search(config, out, progress=False, log=lambda m: None).run()
    whole = RunDirectory(out).read_history()
    history = out / HISTORY
    lines = history.read_text().splitlines(keepends=True)
    # the last record committed (in the checkpoint) but its append torn halfway
    history.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    summary = Search(config, out, progress=False, log=lambda m: None).run()
    assert summary["evaluations"] == 5 and summary["session_evaluations"] == 0
    assert RunDirectory(out).read_history() == whole


def test_a_finished_run_continues_to_a_larger_budget(tmp_path):
    config = toy_config(tmp_path, evaluations=4)
    Search(config, tmp_path / "short", progress=False, log=lambda m: None).run()
    longer = build_config("tiny", {**to_json(config), "evaluations": 7})
    Search(longer, tmp_path / "short", progress=False, log=lambda m: None).run()
    Search(longer, tmp_path / "long", progress=False, log=lambda m: None).run()
    assert without_timing(RunDirectory(tmp_path / "short").read_history()) == without_timing(RunDirectory(tmp_path / "long").read_history())


def test_no_sharing_trains_from_scratch_and_keeps_no_supernet(tmp_path):
    config = toy_config(tmp_path, evaluations=3, sharing=False)
    search = Search(config, tmp_path / "out", progress=False, log=lambda m: None)
    search.run()
    assert search.supernet is None
    assert torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)["supernet"] is None


def test_inherited_optimizer_moments_travel_with_the_weights(tmp_path):
    config = toy_config(tmp_path, evaluations=3, optimizer_state="inherit")
    search = Search(config, tmp_path / "out", progress=False, log=lambda m: None)
    search.run()
    moments = search.moments.state_dict()
    trained = [name for name, step in moments["step"].items() if step > 0]
    assert "embeddings.word_embeddings.weight" in trained
    assert all(moments["exp_avg_sq"][name].abs().sum() > 0 for name in trained)
    untrained = [name for name, step in moments["step"].items() if step == 0]
    assert all(moments["exp_avg"][name].abs().sum() == 0 for name in untrained)


# -- the command line ----------------------------------------------------------------------------------


def test_search_cli_json_summary_and_refusal_of_other_settings(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt")
    config_file = tmp_path / "search.toml"
    config_file.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in toy_settings(corpus, evaluations=3).items()))
    out = tmp_path / "run"
    assert main(["search", str(config_file), "--out", str(out), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert set(summary) >= {"evaluations", "trained", "duplicates", "rejected", "failed", "best_index", "best_fitness", "wall_seconds"}
    assert summary["evaluations"] == 3
    before = (out / HISTORY).read_bytes()
    assert main(["search", str(config_file), "--out", str(out), "--no-progress", "--seed", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and "seed" in err[0]
    assert (out / HISTORY).read_bytes() == before


@pytest.mark.parametrize("setting, key", [
    ("stepz = 3", "'stepz'"),
    ("kernel_sizes = [3, 4]", "'kernel_sizes'"),
    ("ops = []", "'ops'"),
    ("evaluations = 0", "'evaluations'"),
    ("strategy = \"greedy\"", "'strategy'"),
    ("tournament_size = 9", "'tournament_size'"),
])
def test_bad_configs_exit_2_naming_the_key(tmp_path, capsys, setting, key):
    config_file = tmp_path / "bad.toml"
    config_file.write_text(setting + "\n")
    out = tmp_path / "run"
    assert main(["search", str(config_file), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and str(config_file) in err[0], err
    assert not out.exists()


def test_bad_flags_and_corpus_exit_2(tmp_path, capsys):
    assert main(["search", "--out", str(tmp_path / "a"), "--evaluations", "0"]) == 2
    assert "'evaluations'" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"corpus": str(empty)}))
    assert main(["search", str(config_file), "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def glue_toy_config(tmp_path, evaluations: int):
    """A search on SST-2 from a local directory: a separable toy task (sentences with
    "good" are positive, with "bad" negative), 96 training and 32 dev rows."""
    rng = random.Random(0)
    root = tmp_path / "glue" / "SST-2"
    root.mkdir(parents=True)

    def rows(count):
        lines = ["sentence\tlabel"]
        for _ in range(count):
            label = rng.randint(0, 1)
            words = [rng.choice(WORDS) for _ in range(6)] + ["good" if label else "bad"]
            rng.shuffle(words)
            lines.append(" ".join(words) + f"\t{label}")
        return "\n".join(lines) + "\n"

    (root / "train.tsv").write_text(rows(96))
    (root / "dev.tsv").write_text(rows(32))
    return build_config("tiny", {
        "proxy": "glue", "glue_task": "sst2", "glue_data": str(tmp_path / "glue"), "num_layers": 2, "hidden_size": 16,
        "num_heads": 2, "intermediate_size": 32, "kernel_sizes": [3, 5], "seq_len": 16, "batch_size": 8,
        "vocab_size": 80, "steps": 4, "evaluations": evaluations, "population_size": 2, "tournament_size": 1,
    })


def test_glue_proxy_search_scores_by_the_task_metric(tmp_path):
    """Fitness is dev accuracy, and the super-net holds a classification head."""
    config = glue_toy_config(tmp_path, evaluations=3)
    search = Search(config, tmp_path / "out", progress=False, log=lambda m: None)
    summary = search.run()
    records = RunDirectory(tmp_path / "out").read_history()
    assert summary["evaluations"] == 3 and summary["trained"] >= 1
    assert hasattr(search.supernet, "classifier") and not hasattr(search.supernet, "lm_head")
    for r in records:
        if r["status"] == "ok":
            assert r["fitness"] in {i / 32 for i in range(33)}  # an accuracy over the 32 dev rows
            assert r["loss"] is None
