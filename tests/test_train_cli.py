"""`genomec train mlm|glue` end to end on tiny models: the loss falls, the output is a
Hugging Face model directory, an interrupted run resumes exactly, bad input exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genomec.cli import main
from genomec.data import DataError, train_wordpiece
from genomec.models.training import Checkpoints, MLMSettings, train_mlm

TINY_GENOME = {
    "name": "tiny",
    "config": {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64},
    "layers": [
        {"type": "conv", "kernel_size": 3},
        {"type": "attention", "graph": {"expr": "matmul(softmax(scale(matmul(q,transpose(k)))),v)"}},
    ],
}

SENTENCES = [
    "the cat sat on the mat and the dog sat on the log",
    "a bird sang in the tree while the cat slept on the mat",
    "dogs and cats are animals and birds are animals too",
    "the dog ran to the tree and the bird flew away",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "genome.json").write_text(json.dumps(TINY_GENOME))
    (root / "corpus.txt").write_text("\n\n".join(SENTENCES * 40))
    return root


def mlm_args(workspace, out, *extra):
    return [
        "train", "mlm", "--genome", str(workspace / "genome.json"), "--corpus", str(workspace / "corpus.txt"),
        "--out", str(out), "--seq-len", "16", "--batch-size", "8", "--vocab-size", "100", "--no-progress", *extra,
    ]


@pytest.fixture(scope="module")
def pretrained(workspace):
    """A tiny model pre-trained by the CLI: (its directory, the JSON it printed)."""
    out = workspace / "mlm"
    code = main(mlm_args(workspace, out, "--steps", "60", "--lr", "5e-3", "--json"))
    assert code == 0
    return out


def last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_tiny_mlm_run_lowers_the_loss_and_writes_a_model(workspace, pretrained, capsys):
    # rerunning a finished run reports its results again without training
    assert main(mlm_args(workspace, pretrained, "--steps", "60", "--lr", "5e-3", "--json")) == 0
    captured = capsys.readouterr()
    results = last_json_line(captured.out)
    assert "already holds this finished run" in captured.err
    assert results["steps"] == 60 and results["tokens_per_second"] > 0
    assert results["initial_loss"] > 4.0  # about ln(vocab) before training
    assert results["final_loss"] < results["initial_loss"] - 1.0
    assert results["train_loss_last"] < results["train_loss_first"]

    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(pretrained)
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    assert type(model).__name__ == "GenomeBertForMaskedLM" and model.config.genome["name"] == "tiny"
    assert model.config.vocab_size == len(tokenizer)
    assert not (pretrained / "checkpoints").exists()


def test_an_interrupted_run_resumes_from_its_checkpoint_exactly(workspace, tmp_path):
    settings = MLMSettings(seq_len=16, batch_size=8, vocab_size=100, learning_rate=3e-3, checkpoint_every=4)
    corpus, genome = workspace / "corpus.txt", workspace / "genome.json"
    # One tokenizer for both runs: WordPiece training breaks frequency ties differently
    # from run to run (a resumed run reuses the tokenizer it saved).
    train_wordpiece(SENTENCES, vocab_size=100).save_pretrained(tmp_path / "tokenizer")
    run = dict(corpus=corpus, tokenizer_dir=tmp_path / "tokenizer", settings=settings, progress=False)
    straight = train_mlm(genome, tmp_path / "straight", 10, **run)

    class Interrupt(Exception):
        pass

    def stop_at_step_7(step, loss):
        if step == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_mlm(genome, tmp_path / "resumed", 10, on_step=stop_at_step_7, **run)
    checkpoints = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("checkpoint-*.pt"))
    assert checkpoints == ["checkpoint-00000004.pt"]
    resumed = train_mlm(genome, tmp_path / "resumed", 10, **run)
    assert resumed["resumed_from"] == 4 and straight["resumed_from"] is None
    assert resumed["train_tokens"] == straight["train_tokens"]
    # Same batches, masks, dropout and optimizer state; the losses agree to float rounding
    # (bitwise once alone, but a full-suite run once differed in a late digit). A resume that
    # skipped or repeated a step, or lost the optimizer state, differs by far more.
    for key in ("initial_loss", "final_loss", "final_accuracy", "train_loss_last"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5, abs=1e-7), key


def test_resuming_with_other_settings_is_refused(workspace, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "run.json").write_text(json.dumps({"task": "mlm", "steps": 5}))
    assert main(mlm_args(workspace, out, "--steps", "3")) == 2
    assert "holds an unfinished run with other settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [(b"", "the corpus is empty"), (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "not a text file (binary data)")],
)
def test_bad_corpus_exits_2_with_one_clear_line(workspace, tmp_path, capsys, content, message):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(content)
    args = mlm_args(workspace, tmp_path / "out", "--steps", "2")
    args[args.index("--corpus") + 1] = str(corpus)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"genomec train: {corpus}: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_an_unreadable_checkpoint_falls_back_to_the_previous_one(tmp_path):
    checkpoints = Checkpoints(tmp_path, keep=2)
    for step in (4, 8, 12):
        checkpoints.save(step, {"step": step, "weights": torch.full((3,), float(step))})
    assert [p.name for p in checkpoints.paths()] == ["checkpoint-00000008.pt", "checkpoint-00000012.pt"]
    (tmp_path / "checkpoint-00000012.pt").write_bytes(b"truncated")
    messages = []
    assert checkpoints.latest(messages.append)["step"] == 8
    assert "checkpoint-00000012.pt is unreadable" in messages[0]
    (tmp_path / "checkpoint-00000008.pt").write_bytes(b"")
    with pytest.raises(DataError, match="no readable checkpoint"):
        checkpoints.latest(messages.append)


def write_sst2(root: Path, train_rows, dev_rows):
    (root / "SST-2").mkdir(parents=True, exist_ok=True)
    (root / "SST-2" / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(train_rows) + "\n")
    (root / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(dev_rows) + "\n")


def test_glue_fine_tuning_reports_the_task_metric(pretrained, tmp_path, capsys):
    positive = ["the cat sat on the mat", "the bird sang in the tree", "the dog sat on the log"]
    negative = ["cats and dogs ran away", "animals flew away too", "birds are animals"]
    rows = [f"{s}\t1" for s in positive] + [f"{s}\t0" for s in negative]
    write_sst2(tmp_path / "glue", rows * 4, rows)
    out = tmp_path / "sst2"
    args = ["train", "glue", "--task", "SST-2", "--data", str(tmp_path / "glue"), "--model", str(pretrained),
            "--out", str(out), "--steps", "6", "--batch-size", "8", "--lr", "1e-3", "--no-progress", "--json"]
    assert main(args) == 0
    results = last_json_line(capsys.readouterr().out)
    assert results["task"] == "sst2" and results["main_metric"] == "accuracy"
    assert results["score"] == results["metrics"]["dev"]["accuracy"]
    assert results["score"] in {k / 6 for k in range(7)}  # accuracy over the 6 dev rows
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 2 and model.config.problem_type == "single_label_classification"


def test_glue_regression_task_reports_correlations(pretrained, tmp_path, capsys):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    pairs = [("the cat sat", "the cat sat", 5.0), ("the cat sat", "a bird sang", 1.0), ("the dog ran", "the dog ran away", 4.0)]
    rows = [f"{i}\tm\tf\t2012\t{i}\tn\tn\t{a}\t{b}\t{s}" for i, (a, b, s) in enumerate(pairs)]
    (tmp_path / "STS-B").mkdir()
    (tmp_path / "STS-B" / "train.tsv").write_text("\n".join([header] + rows * 4) + "\n")
    (tmp_path / "STS-B" / "dev.tsv").write_text("\n".join([header] + rows) + "\n")
    args = ["train", "glue", "--task", "STS-B", "--data", str(tmp_path), "--model", str(pretrained),
            "--out", str(tmp_path / "out"), "--steps", "3", "--batch-size", "4", "--no-progress", "--json"]
    assert main(args) == 0
    results = last_json_line(capsys.readouterr().out)
    assert results["main_metric"] == "spearman" and set(results["metrics"]["dev"]) == {"pearson", "spearman"}
    assert -1.0 <= results["score"] <= 1.0


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "no such GLUE directory"),
        (lambda root: (root / "glue").mkdir(), "no SST-2/ folder"),
        (lambda root: write_sst2(root / "glue", ["good\t1"], []) or (root / "glue" / "SST-2" / "dev.tsv").unlink(), "dev.tsv: missing GLUE file"),
        (lambda root: write_sst2(root / "glue", ["good\t1", "no label here"], ["fine\t1"]), "train.tsv:3: expected 2 tab-separated fields, got 1"),
    ],
)
def test_bad_glue_directory_exits_2_with_one_clear_line(pretrained, tmp_path, capsys, setup, message):
    setup(tmp_path)
    args = ["train", "glue", "--task", "sst2", "--data", str(tmp_path / "glue"), "--model", str(pretrained), "--steps", "1", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("genomec train: ") and "Traceback" not in err


def test_commands_that_need_no_model_do_not_import_transformers():
    genome = Path(__file__).resolve().parents[1] / "genomes" / "standard-attention.json"
    script = (
        "import sys; from genomec.cli import main; code = main(['check', %r]); "
        "assert 'transformers' not in sys.modules, 'genomec check imported transformers'; sys.exit(code)" % str(genome)
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# -- bad options, model directories and sizes: exit 2 naming the option or file ---------------


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--lr", "-1", "--lr must be a positive number below 1, got -1.0"),
        ("--lr", "nan", "--lr must be a positive number below 1, got nan"),
        ("--warmup", "5", "--warmup must be a fraction of the steps, in [0, 1), got 5.0"),
        ("--steps", "0", "--steps must be at least 1, got 0"),
        ("--seq-len", "4", "--seq-len must be in 8..131072, got 4"),
        ("--seq-len", "1024", "--seq-len 1024 exceeds max_position_embeddings 512 of"),
        ("--batch-size", "0", "--batch-size must be in 1..65536, got 0"),
        ("--vocab-size", "10", "--vocab-size must be in 32..1048576, got 10"),
        ("--checkpoint-every", "0", "--checkpoint-every must be at least 1, got 0"),
        ("--hidden-size", str(2**40), "--hidden-size must be in 1..16384, got 1099511627776"),
        ("--num-heads", "3", "hidden size 32 is not divisible by 3 heads"),
        ("--seed", "-1", "--seed must be in 0..4294967295, got -1"),
    ],
)
def test_bad_mlm_options_exit_2_naming_the_option(workspace, tmp_path, capsys, option, value, message):
    args = mlm_args(workspace, tmp_path / "out", "--steps", "2")
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    assert main(args) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("genomec train: ") and message in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--epochs", "0", "--epochs must be a positive finite number, got 0.0"),
        ("--epochs", "inf", "--epochs must be a positive finite number, got inf"),
        ("--lr", "0", "--lr must be a positive number below 1, got 0.0"),
        ("--batch-size", "0", "--batch-size must be in 1..65536, got 0"),
    ],
)
def test_bad_glue_options_exit_2_naming_the_option(tmp_path, capsys, option, value, message):
    args = ["train", "glue", "--task", "sst2", "--data", str(tmp_path), "--model", str(tmp_path), option, value, "--no-progress"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == f"genomec train: {message}"


def test_the_out_folder_is_checked_before_any_work(workspace, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    assert main(mlm_args(workspace, tmp_path / "a-file" / "run", "--steps", "2")) == 2
    assert capsys.readouterr().err.strip() == f"genomec train: --out {tmp_path / 'a-file' / 'run'}: {tmp_path / 'a-file'} is a file, not a folder"


def test_glue_checks_the_model_directory_before_the_data(tmp_path, capsys):
    (tmp_path / "not-a-model").mkdir()
    args = ["train", "glue", "--task", "sst2", "--data", str(tmp_path / "no-data"), "--model", str(tmp_path / "not-a-model"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"genomec train: {tmp_path / 'not-a-model'}: not a model directory (no config.json); train one with `genomec train mlm`"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda model: (model / "config.json").write_text('{"model_type": "genome-bert", '), "config.json: corrupt (not JSON: "),
        (lambda model: (model / "config.json").write_text('{"model_type": "bert"}'), "config.json: not a genome-bert model (model_type 'bert')"),
        (lambda model: (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:5000]),
         "model.safetensors: corrupt or truncated (Error while deserializing header"),
        (lambda model: (model / "model.safetensors").unlink(), "no model.safetensors"),
    ],
    ids=["corrupt config", "foreign config", "truncated weights", "no weights"],
)
def test_a_damaged_model_directory_is_named_with_its_file(pretrained, tmp_path, capsys, damage, message):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(pretrained, model)
    damage(model)
    write_sst2(tmp_path / "glue", ["good\t1", "bad\t0"], ["fine\t1"])
    args = ["train", "glue", "--task", "sst2", "--data", str(tmp_path / "glue"), "--model", str(model), "--steps", "1", "--no-progress"]
    assert main(args) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"genomec train: {model}") and message in line and "tokenizer" not in line


def test_a_model_too_large_for_memory_exits_2_naming_its_sizes(workspace, tmp_path, capsys, monkeypatch):
    import genomec.models.training as training

    def allocate(config):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: not enough memory: you tried to allocate 68719476736 bytes.")

    monkeypatch.setattr(training, "GenomeBertForMaskedLM", allocate)
    assert main(mlm_args(workspace, tmp_path / "out", "--steps", "2", "--hidden-size", "16384", "--num-heads", "16")) == 2
    err = capsys.readouterr().err
    assert ("genomec train: the model does not fit in memory (2 layers, hidden size 16384, 16 heads, intermediate size 64, "
            "vocabulary ") in err and "choose smaller sizes" in err and "Traceback" not in err


def test_the_default_checkpoint_interval_fits_a_short_run(workspace, tmp_path, capsys):
    from genomec.models.training import checkpoint_interval

    assert [checkpoint_interval(steps, None, 50) for steps in (1, 9, 30, 200, 10_000)] == [1, 1, 3, 20, 50]
    assert checkpoint_interval(30, 7, 50) == 7
    settings = MLMSettings(seq_len=16, batch_size=8, vocab_size=100)  # the default interval: 30 steps -> every 3
    train_wordpiece(SENTENCES, vocab_size=100).save_pretrained(tmp_path / "tokenizer")
    run = dict(corpus=workspace / "corpus.txt", tokenizer_dir=tmp_path / "tokenizer", settings=settings, progress=False)

    def killed_at_step_8(step, loss):
        if step == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_mlm(workspace / "genome.json", tmp_path / "run", 30, on_step=killed_at_step_8, **run)
    assert "starting from scratch: 30 steps, a checkpoint every 3 steps in" in capsys.readouterr().err
    resumed = train_mlm(workspace / "genome.json", tmp_path / "run", 30, **run)
    assert resumed["resumed_from"] == 6
    assert "resuming from the checkpoint at step 6 of 30 (a checkpoint every 3 steps)" in capsys.readouterr().err
