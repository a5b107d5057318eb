"""`genomec export` (SPEC 4): a search candidate as a Hugging Face model directory that
scores the fitness its history records, or just its genome; every refusal is one line."""

import json
from pathlib import Path

import pytest
import torch

import genomec  # registers the Auto classes
from genomec.cli import main
from genomec.genome import genome_to_json, parse_genome
from genomec.search.config import build_config
from genomec.search.evaluate import make_proxy, model_config
from genomec.search.export import ExportError, export_candidate
from genomec.search.rundir import RunDirectory
from test_search import glue_toy_config, toy_settings, write_corpus

TOP_K = 3


def genome(first: dict, second: dict) -> dict:
    return {"config": {"hidden_size": 16, "num_heads": 2, "intermediate_size": 32, "max_kernel_size": 7},
            "layers": [first, second]}


def attention(graph) -> dict:
    return {"type": "attention", "graph": graph if isinstance(graph, dict) else {"expr": graph}}


def conv(size: int) -> dict:
    return {"type": "conv", "kernel_size": size}


STANDARD = "matmul(softmax(matmul(q,transpose(k))),v)"
RENAMED = {"nodes": [{"id": "a", "op": "transpose", "args": ["k"]}, {"id": "b", "op": "matmul", "args": ["q", "a"]},
                     {"id": "c", "op": "softmax", "args": ["b"]}, {"id": "d", "op": "matmul", "args": ["c", "v"]}],
           "output": "d"}
FAILS = genome(attention("matmul(softmax(matmul(k,transpose(q))),v)"), conv(3))  # its training is made to raise
# The run's children, in order: four trained (A B C D), a duplicate of each, one rejected,
# one failed. With the top 3 kept, one trained candidate and its duplicate have no weights.
CHILDREN = [
    genome(attention(STANDARD), conv(3)),                                   # 0 A
    genome(attention(RENAMED), conv(3)),                                    # 1 duplicate of A (renamed nodes)
    genome(conv(5), attention(STANDARD)),                                   # 2 B
    genome(conv(5), attention("matmul(softmax(matmul(neg(neg(q)),transpose(k))),v)")),  # 3 duplicate of B
    genome(attention("matmul(softmax(cos(q,k)),v)"), conv(7)),              # 4 C
    genome(attention("sub(q,q)"), conv(3)),                                 # 5 rejected: constant output
    FAILS,                                                                  # 6 failed
    genome(attention("matmul(softmax(cos(q,k)),v)"), conv(7)),              # 7 duplicate of C
    genome(conv(3), conv(5)),                                               # 8 D
    genome(conv(3), conv(5)),                                               # 9 duplicate of D
]


@pytest.fixture(autouse=True)
def private_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One toy search whose children are the list above: (run dir, records, config)."""
    import genomec.search.engine as engine

    tmp = tmp_path_factory.mktemp("export")
    config = build_config("tiny", toy_settings(write_corpus(tmp / "corpus.txt"), evaluations=len(CHILDREN), top_k=TOP_K))
    children = iter(CHILDREN)
    real_evaluate = engine.Evaluator.evaluate

    def evaluate(self, child, first_batch):
        if genome_to_json(child) == genome_to_json(parse_genome(FAILS)):
            raise RuntimeError("injected failure")
        return real_evaluate(self, child, first_batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
        patch.setattr(engine.Proposer, "propose",
                      lambda self, state, rng: (parse_genome(next(children)), None, {"type": "random", "ops_chosen": []}))
        patch.setattr(engine.Evaluator, "evaluate", evaluate)
        engine.Search(config, tmp / "run", progress=False, log=lambda m: None).run()
    records = RunDirectory(tmp / "run").read_history(repair=False)
    assert [r["status"] for r in records] == ["ok", "duplicate", "ok", "duplicate", "ok", "rejected", "failed",
                                              "duplicate", "ok", "duplicate"]
    assert [r["duplicate_of"] for r in records if r["status"] == "duplicate"] == [0, 2, 4, 8]
    return tmp / "run", records, config


def kept(run_dir: Path) -> list[int]:
    return sorted(int(p.stem) for p in (run_dir / "top").glob("*.pt"))


def rebuilt_proxy(run_dir: Path):
    """The run's proxy task, rebuilt from run.json and the run's data as a reader would."""
    saved = json.loads((run_dir / "run.json").read_text())
    settings = {k: v for k, v in saved["settings"].items() if k != "processes"} | {"evaluations": saved["evaluations"]}
    config = build_config("tiny", settings)
    return config, make_proxy(config, RunDirectory(run_dir).data_dir, log=lambda m: None)


# -- the round trip ----------------------------------------------------------------------------------


def test_best_loads_with_auto_classes_and_scores_its_recorded_fitness(run, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    run_dir, records, _ = run
    best = max((r for r in records if r["status"] == "ok"), key=lambda r: (r["fitness"], -r["index"]))
    assert best["index"] == json.loads((run_dir / "best.json").read_text())["index"]
    summary = export_candidate(run_dir, tmp_path / "best")
    assert (summary["index"], summary["candidate"], summary["fitness"]) == (best["index"], best["index"], best["fitness"])
    assert {"config.json", "model.safetensors", "search.json", "tokenizer_config.json"} <= set(summary["files"])

    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "best")
    assert type(model) is genomec.GenomeBertForMaskedLM
    assert model.config.genome == best["genome"]
    assert model.lm_head.decoder.weight is model.genome_bert.embeddings.word_embeddings.weight
    config, proxy = rebuilt_proxy(run_dir)
    expected = model_config(parse_genome(best["genome"]), config, proxy).to_dict()  # the config the search built
    saved_only = ("_name_or_path", "architectures", "dtype", "transformers_version")
    assert {k: v for k, v in model.config.to_dict().items() if k not in saved_only} == {
        k: v for k, v in expected.items() if k not in saved_only}
    fitness, loss = proxy.score(model)
    # Bit-for-bit in practice (same weights, eval mode, no dropout, the same CPU reference
    # executor); the tolerance is only float rounding.
    assert fitness == pytest.approx(best["fitness"], abs=1e-6)
    assert loss == pytest.approx(best["loss"], abs=1e-6)

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "best")
    assert tokenizer.get_vocab() == proxy.tokenizer.get_vocab()
    assert tokenizer.pad_token_id == proxy.tokenizer.pad_token_id == model.config.pad_token_id
    provenance = json.loads((tmp_path / "best" / "search.json").read_text())
    assert provenance["run"] == str(run_dir.resolve())
    assert (provenance["candidate"], provenance["index"], provenance["duplicate_of"]) == (best["index"], best["index"], None)
    assert (provenance["fitness"], provenance["loss"]) == (best["fitness"], best["loss"])
    assert provenance["settings"] == json.loads((run_dir / "run.json").read_text())["settings"]


def test_export_by_index_writes_that_candidates_weights(run, tmp_path):
    from transformers import AutoModelForMaskedLM

    run_dir, records, _ = run
    index = min(kept(run_dir))
    summary = export_candidate(run_dir, tmp_path / "out", str(index))
    assert (summary["index"], summary["fitness"], summary["loss"]) == (index, records[index]["fitness"], records[index]["loss"])
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "out")
    weights = torch.load(run_dir / "top" / f"{index}.pt", weights_only=True)
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    _, proxy = rebuilt_proxy(run_dir)
    assert proxy.score(model)[0] == pytest.approx(records[index]["fitness"], abs=1e-6)


def test_a_duplicate_exports_the_candidate_it_duplicates(run, tmp_path):
    from transformers import AutoModelForMaskedLM

    run_dir, records, _ = run
    duplicate = next(r for r in records if r["status"] == "duplicate" and r["duplicate_of"] in kept(run_dir))
    original = records[duplicate["duplicate_of"]]
    summary = export_candidate(run_dir, tmp_path / "out", duplicate["index"])
    assert (summary["candidate"], summary["index"], summary["duplicate_of"]) == (duplicate["index"], original["index"], original["index"])
    provenance = json.loads((tmp_path / "out" / "search.json").read_text())
    assert provenance["duplicate_of"] == original["index"] and f"duplicate of candidate {original['index']}" in provenance["note"]
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "out")
    assert model.config.genome == original["genome"]  # the weights are the original's, so is the architecture
    _, proxy = rebuilt_proxy(run_dir)
    assert proxy.score(model)[0] == pytest.approx(duplicate["fitness"], abs=1e-6)


def test_genome_only_gives_the_records_genome_for_any_candidate(run, tmp_path, capsys):
    run_dir, records, _ = run
    without_weights = [r["index"] for r in records if r["status"] == "ok" and r["index"] not in kept(run_dir)]
    for index in (1, 5, 6, *without_weights):  # a duplicate, rejected, failed, trained but not kept
        out = tmp_path / f"g{index}"
        summary = export_candidate(run_dir, out, index, genome_only=True)
        assert summary["files"] == ["genome.json"] and summary["index"] == index
        assert json.loads((out / "genome.json").read_text()) == records[index]["genome"]
        assert main(["check", str(out / "genome.json")]) == 0
    assert "ok (model" in capsys.readouterr().out


def test_an_interrupted_export_leaves_nothing(run, tmp_path, monkeypatch):
    run_dir, _, _ = run

    def broken(self, folder, *args, **kwargs):
        (Path(folder) / "config.json").write_text("{")
        raise OSError("disk full")

    monkeypatch.setattr(genomec.GenomeBertForMaskedLM, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        export_candidate(run_dir, tmp_path / "out")
    assert not [p for p in tmp_path.iterdir() if p.name != "cache"]  # neither OUT nor its staging folder


def test_an_earlier_export_is_replaced_whole(run, tmp_path):
    run_dir, records, _ = run
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is taken
    export_candidate(run_dir, out)
    export_candidate(run_dir, out, 1, genome_only=True)
    assert sorted(p.name for p in out.iterdir()) == ["genome.json"]
    export_candidate(run_dir, out, min(kept(run_dir)))
    assert json.loads((out / "search.json").read_text())["index"] == min(kept(run_dir))
    assert not [p for p in tmp_path.iterdir() if p.name not in ("out", "cache")]


# -- refusals ------------------------------------------------------------------------------------------


def test_refusals_name_the_problem(run, tmp_path):
    run_dir, records, _ = run
    not_kept = next(r["index"] for r in records if r["status"] == "ok" and r["index"] not in kept(run_dir))
    cases = [
        ((tmp_path / "nowhere", tmp_path / "o"), {}, "no such run directory"),
        ((tmp_path, tmp_path / "o"), {}, "not a search run directory (no run.json)"),
        ((run_dir, tmp_path / "o"), {"candidate": 10}, "candidate 10: out of range"),
        ((run_dir, tmp_path / "o"), {"candidate": "-1"}, "candidate -1: out of range"),
        ((run_dir, tmp_path / "o"), {"candidate": "first"}, "'best' or an index"),
        ((run_dir, tmp_path / "o"), {"candidate": 5}, "candidate 5 was rejected"),
        ((run_dir, tmp_path / "o"), {"candidate": 6}, "candidate 6 failed (RuntimeError: injected failure)"),
        ((run_dir, tmp_path / "o"), {"candidate": not_kept},
         f"the run keeps the weights of its top {TOP_K}: {', '.join(map(str, kept(run_dir)))}"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ExportError) as caught:
            export_candidate(*args, **kwargs)
        assert message in str(caught.value) and "\n" not in str(caught.value), (message, str(caught.value))
    assert not (tmp_path / "o").exists()


# -- the command line ------------------------------------------------------------------------------------


def test_cli_json_line_and_text(run, tmp_path, capsys):
    run_dir, records, _ = run
    assert main(["export", str(run_dir), "-o", str(tmp_path / "a"), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    summary = json.loads(out[0])
    assert set(summary) >= {"index", "fitness", "out", "files"} and summary["out"] == str(tmp_path / "a")
    assert summary["fitness"] == json.loads((run_dir / "best.json").read_text())["fitness"]
    assert main(["export", str(run_dir), "--candidate", "1", "-o", str(tmp_path / "b"), "--genome-only"]) == 0
    assert "exported the genome of candidate 1" in capsys.readouterr().out


def test_cli_refusals_exit_2_with_one_line(run, tmp_path, capsys):
    run_dir, records, _ = run
    a_file = tmp_path / "file"
    a_file.write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    not_kept = next(r["index"] for r in records if r["status"] == "ok" and r["index"] not in kept(run_dir))
    cases = [
        ([str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")], "no such run directory"),
        ([str(foreign), "-o", str(tmp_path / "o")], "not a search run directory"),
        ([str(run_dir), "--candidate", "99", "-o", str(tmp_path / "o")], "out of range"),
        ([str(run_dir), "--candidate", "5", "-o", str(tmp_path / "o")], "rejected"),
        ([str(run_dir), "--candidate", "6", "-o", str(tmp_path / "o")], "failed"),
        ([str(run_dir), "--candidate", str(not_kept), "-o", str(tmp_path / "o")], "--genome-only"),
        ([str(run_dir), "-o", str(a_file)], "exists and is not a directory"),
        ([str(run_dir), "-o", str(foreign)], "not empty and holds no export"),
        ([str(run_dir), "--genome-only", "-o", str(foreign)], "not empty and holds no export"),
    ]
    for argv, message in cases:
        assert main(["export", *argv]) == 2, argv
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("genomec export: ") and message in lines[0], (argv, captured.err)
        assert captured.out == ""
    assert a_file.read_text() == "x" and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "o").exists()


# -- the GLUE proxy ----------------------------------------------------------------------------------------


def test_a_glue_candidate_exports_its_classifier(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from genomec.search.engine import Search

    config = glue_toy_config(tmp_path, evaluations=2)
    Search(config, tmp_path / "run", progress=False, log=lambda m: None).run()
    summary = export_candidate(tmp_path / "run", tmp_path / "out")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert type(model) is genomec.GenomeBertForSequenceClassification and model.config.num_labels == 2
    _, proxy = rebuilt_proxy(tmp_path / "run")
    assert proxy.score(model)[0] == pytest.approx(summary["fitness"], abs=1e-6)
