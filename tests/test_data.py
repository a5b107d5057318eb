"""Data for the proxy tasks: corpora, tokenizers, MLM batches, GLUE files and metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genomec.data import (
    DataError,
    MaskedBatches,
    compute_metrics,
    default_corpus,
    get_task,
    load_tokenizer,
    read_corpus,
    read_split,
    split_heldout,
    tokenize_blocks,
    train_wordpiece,
)
from genomec.data.glue import TASKS, accuracy, average_ranks, f1, matthews_corrcoef, pearson, spearman

TEXT = (
    "The cat sat on the mat. The dog sat on the log.\n"
    "A bird sang in the tree while the cat slept.\n\n"
    "Dogs and cats are animals; birds are animals too.\n"
) * 20


# -- corpora ------------------------------------------------------------------------------------------


def test_corpus_from_a_file_and_from_a_folder(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\nstill first\n\nsecond one\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("third\n")
    (tmp_path / ".hidden").write_bytes(b"\0\1\2")  # hidden files are skipped
    assert read_corpus(tmp_path / "a.txt") == ["first paragraph still first", "second one"]
    assert read_corpus(tmp_path) == ["first paragraph still first", "second one", "third"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the corpus is empty"),
        (b"  \n\n\t\n", "the corpus is empty"),
        (b"PK\x03\x04\x00\x00binary", "not a text file \\(binary data\\)"),
        ("caf\u00e9".encode("latin-1"), "not UTF-8 text"),
    ],
)
def test_bad_corpus_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_corpus(path)


def test_missing_corpus_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        read_corpus(tmp_path / "nope")
    with pytest.raises(DataError, match="holds no files"):
        read_corpus(tmp_path)


def test_default_corpus_is_english_from_python_itself():
    documents = default_corpus()
    text = " ".join(documents)
    assert len(text) > 500_000
    words = text.lower().split()
    assert words.count("the") / len(words) > 0.02  # English prose, not code
    assert any("Return" in d for d in documents)
    assert default_corpus()[:50] == documents[:50]  # deterministic


# -- tokenizer ----------------------------------------------------------------------------------------


def test_wordpiece_training_saving_and_loading(tmp_path):
    tokenizer = train_wordpiece(TEXT.splitlines(), vocab_size=120)
    assert len(tokenizer) <= 120
    assert tokenizer.pad_token_id == 0 and tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    encoded = tokenizer("The cat sat.", "Dogs.")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and "cat" in tokens
    assert encoded["token_type_ids"] == [0] * (tokens.index("[SEP]") + 1) + [1] * (len(tokens) - tokens.index("[SEP]") - 1)
    assert tokenizer.decode(encoded["input_ids"], skip_special_tokens=True) == "the cat sat. dogs."
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded("the bird sang")["input_ids"] == tokenizer("the bird sang")["input_ids"]


def test_bad_tokenizer_directories(tmp_path):
    with pytest.raises(DataError, match="no such tokenizer directory"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(DataError, match="not a tokenizer directory"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{ not json")
    with pytest.raises(DataError, match="cannot load the tokenizer"):
        load_tokenizer(tmp_path)


# -- MLM batches --------------------------------------------------------------------------------------


def test_mlm_blocks_and_batches_are_deterministic_per_step():
    tokenizer = train_wordpiece(TEXT.splitlines(), vocab_size=120)
    blocks = tokenize_blocks(TEXT.split("\n\n"), tokenizer, seq_len=16)
    assert blocks.shape[1] == 16
    assert (blocks[:, 0] == tokenizer.cls_token_id).all() and (blocks[:, -1] == tokenizer.sep_token_id).all()
    train, heldout = split_heldout(blocks, fraction=0.1)
    assert len(train) + len(heldout) == len(blocks) and torch.equal(heldout, blocks[-len(heldout) :])

    batches = MaskedBatches(train, tokenizer, batch_size=8, seed=3)
    first, again, other = batches(0), batches(0), batches(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["labels"], other["labels"])
    original = train[batches.indices(0)]
    predicted = first["labels"] != -100
    assert torch.equal(first["labels"][predicted], original[predicted])  # labels are the true tokens
    assert torch.equal(first["input_ids"][~predicted], original[~predicted])  # the rest is untouched
    assert not predicted[:, 0].any() and not predicted[:, -1].any()  # [CLS] and [SEP] are never masked
    rate = float(np.mean([(batches(s)["labels"] != -100).float().mean() for s in range(20)]))
    assert 0.09 < rate < 0.2  # 15% of the non-special tokens


def test_a_corpus_smaller_than_one_block_is_an_error():
    tokenizer = train_wordpiece(TEXT.splitlines(), vocab_size=120)
    with pytest.raises(DataError, match="fewer than one block"):
        tokenize_blocks(["the cat"], tokenizer, seq_len=64)


# -- GLUE files ---------------------------------------------------------------------------------------


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def make_glue(root):
    """A miniature GLUE directory: the real header layouts, two or three rows per file."""
    write(root / "CoLA" / "train.tsv", ["gj04\t1\t\tThe cat sat.", "gj04\t0\t*\tCat the sat."])
    write(root / "CoLA" / "dev.tsv", ["gj04\t1\t\tA dog ran."])
    write(root / "SST-2" / "train.tsv", ["sentence\tlabel", "a \"great\" film\t1", "dull\t0"])
    write(root / "SST-2" / "dev.tsv", ["sentence\tlabel", "fine\t1"])
    mrpc_header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    write(root / "MRPC" / "train.tsv", [mrpc_header, "1\t1\t2\tHe left.\tHe went away.", "0\t3\t4\tRain.\tSun."])
    write(root / "MRPC" / "dev.tsv", [mrpc_header, "1\t5\t6\tYes.\tYes indeed."])
    stsb_header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    write(root / "STS-B" / "train.tsv", [stsb_header, "0\tmain\tf\t2012\t1\tnone\tnone\tA man eats.\tA man is eating.\t4.750"])
    write(root / "STS-B" / "dev.tsv", [stsb_header, "0\tmain\tf\t2012\t1\tnone\tnone\tA cat.\tA car.\t0.5"])
    write(root / "QQP" / "train.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "0\t1\t2\tWhy?\tHow come?\t1"])
    write(root / "QQP" / "dev.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "1\t3\t4\tWho?\tWhen?\t0"])
    mnli_header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
    row = "0\t1\t1n\tfiction\t(x)\t(y)\t(X)\t(Y)\tA man sleeps.\tA person rests.\t{0}\t{0}"
    write(root / "MNLI" / "train.tsv", [mnli_header, row.format("entailment"), row.format("neutral")])
    write(root / "MNLI" / "dev_matched.tsv", [mnli_header, row.format("contradiction")])
    write(root / "MNLI" / "dev_mismatched.tsv", [mnli_header, row.format("neutral"), row.format("entailment")])
    for name, first in (("QNLI", "question\tsentence"), ("RTE", "sentence1\tsentence2")):
        write(root / name / "train.tsv", [f"index\t{first}\tlabel", "0\tWho won?\tBob won.\tentailment"])
        write(root / name / "dev.tsv", [f"index\t{first}\tlabel", "0\tWho lost?\tBob won.\tnot_entailment"])
    write(root / "WNLI" / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\tIt fell.\tThe vase fell.\t1"])
    write(root / "WNLI" / "dev.tsv", ["index\tsentence1\tsentence2\tlabel", "0\tIt broke.\tThe cup broke.\t0"])


def test_glue_reader_reads_every_task(tmp_path):
    make_glue(tmp_path)
    cola = read_split(tmp_path, get_task("CoLA"), "train")
    assert [(e.text_a, e.text_b, e.label) for e in cola] == [("The cat sat.", None, 1), ("Cat the sat.", None, 0)]
    sst = read_split(tmp_path, get_task("SST-2"), "train")
    assert sst[0].text_a == 'a "great" film' and sst[0].label == 1  # quotes are kept as text
    mrpc = read_split(tmp_path, get_task("mrpc"), "train")
    assert (mrpc[0].text_a, mrpc[0].text_b, mrpc[0].label) == ("He left.", "He went away.", 1)
    stsb = read_split(tmp_path, get_task("STS-B"), "train")
    assert stsb[0].label == 4.75 and get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert read_split(tmp_path, get_task("qqp"), "dev")[0].text_b == "When?"
    mnli = get_task("mnli")
    assert [e.label for e in read_split(tmp_path, mnli, "train")] == [1, 2]  # contradiction, entailment, neutral
    assert [e.label for e in read_split(tmp_path, mnli, "matched")] == [0]
    assert [e.label for e in read_split(tmp_path, mnli, "mismatched")] == [2, 1]
    assert read_split(tmp_path, get_task("qnli"), "dev")[0].label == 1
    assert read_split(tmp_path, get_task("rte"), "train")[0].text_b == "Bob won."
    assert read_split(tmp_path, get_task("wnli"), "dev")[0].label == 0
    # one task's folder works as the data directory too
    assert read_split(tmp_path / "RTE", get_task("rte"), "train")[0].label == 0
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}


@pytest.mark.parametrize(
    "lines, message",
    [
        (["sentence\tlabel", "good\t1", "bad"], r"train.tsv:3: expected 2 tab-separated fields, got 1"),
        (["sentence\tlabel", "good\tpositive"], r"train.tsv:2: unknown label 'positive' \(labels: 0, 1\)"),
        (["text\tlabel", "good\t1"], r"the header lacks column\(s\) 'sentence'"),
        (["sentence\tlabel"], r"train.tsv: no examples"),
    ],
)
def test_malformed_glue_files_name_the_file_and_line(tmp_path, lines, message):
    write(tmp_path / "SST-2" / "train.tsv", lines)
    with pytest.raises(DataError, match=message):
        read_split(tmp_path, get_task("sst2"), "train")


def test_malformed_rows_can_be_skipped_and_bad_scores_are_errors(tmp_path):
    write(tmp_path / "SST-2" / "train.tsv", ["sentence\tlabel", "good\t1", "broken row", "bad\t0"])
    assert [e.label for e in read_split(tmp_path, get_task("sst2"), "train", skip_malformed=True)] == [1, 0]
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    write(tmp_path / "STS-B" / "train.tsv", [header, "0\tm\tf\t2012\t1\tn\tn\tA.\tB.\thigh"])
    with pytest.raises(DataError, match=r"train.tsv:2: score 'high' is not a number"):
        read_split(tmp_path, get_task("stsb"), "train")


def test_missing_glue_directories_and_files(tmp_path):
    with pytest.raises(DataError, match="no such GLUE directory"):
        read_split(tmp_path / "nope", get_task("rte"), "train")
    with pytest.raises(DataError, match=r"no RTE/ folder"):
        read_split(tmp_path, get_task("rte"), "train")
    write(tmp_path / "RTE" / "train.tsv", ["index\tsentence1\tsentence2\tlabel"])
    with pytest.raises(DataError, match=r"RTE/dev.tsv: missing GLUE file"):
        read_split(tmp_path, get_task("rte"), "dev")
    with pytest.raises(DataError, match="unknown GLUE task 'imdb'"):
        get_task("imdb")


# -- metrics, against values computed by hand ----------------------------------------------------------

# predictions and labels with tp = 2, tn = 2, fp = 1, fn = 1
PREDICTIONS = [1, 1, 0, 0, 1, 0]
LABELS = [1, 0, 0, 1, 1, 0]


def test_classification_metrics_match_hand_computed_values():
    assert accuracy(PREDICTIONS, LABELS) == pytest.approx(4 / 6)
    assert f1(PREDICTIONS, LABELS) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # 2/3
    assert matthews_corrcoef(PREDICTIONS, LABELS) == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))  # 1/3
    assert matthews_corrcoef([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # an empty marginal
    assert f1([0, 0], [1, 1]) == 0.0


def test_correlations_match_hand_computed_values():
    x, y = [1, 2, 3, 4], [2, 4, 5, 4]
    # deviations (-1.5, -.5, .5, 1.5) and (-1.75, .25, 1.25, .25): 3.5 / sqrt(5 * 4.75)
    assert pearson(x, y) == pytest.approx(3.5 / math.sqrt(5 * 4.75))
    # y's ranks with the tie averaged: (1, 2.5, 4, 2.5); 3 / sqrt(5 * 4.5)
    assert list(average_ranks(y)) == [1.0, 2.5, 4.0, 2.5]
    assert spearman(x, y) == pytest.approx(3 / math.sqrt(5 * 4.5))
    assert spearman([1, 2, 3], [10, 200, 3000]) == pytest.approx(1.0)  # monotone, not linear
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_each_task_reports_its_metrics():
    assert compute_metrics(get_task("cola"), PREDICTIONS, LABELS) == {"mcc": pytest.approx(1 / 3)}
    assert compute_metrics(get_task("mrpc"), PREDICTIONS, LABELS) == {"f1": pytest.approx(2 / 3), "accuracy": pytest.approx(4 / 6)}
    assert set(compute_metrics(get_task("stsb"), [0.1, 0.5, 0.9], [1.0, 2.0, 5.0])) == {"pearson", "spearman"}
    assert {task.name: task.main_metric for task in TASKS.values()} == {
        "cola": "mcc", "sst2": "accuracy", "mrpc": "f1", "stsb": "spearman", "qqp": "f1",
        "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy",
    }
