"""The hybrid backbone as Hugging Face models (SPEC 6): padding invariance, the genome in
the config, exact save/load through the Auto classes, backends, and transformers.Trainer."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import genomec  # noqa: F401  (registers genome-bert with the Auto classes)
from genomec.genome import GenomeError
from genomec.models import (
    BackendUnavailable,
    GenomeBertConfig,
    GenomeBertForMaskedLM,
    GenomeBertForSequenceClassification,
    GenomeBertModel,
)
from genomec.models import attention_backend

GENOMES = Path(__file__).resolve().parents[1] / "genomes"

# A small hybrid genome: conv and attention layers, including two of the paper's graphs
# (one without v) and a graph with a [d, d] state (a global reduction over tokens).
HYBRID = {
    "name": "tiny-hybrid",
    "config": {"hidden_size": 16, "num_heads": 2, "intermediate_size": 32, "vocab_size": 60, "max_kernel_size": 9},
    "layers": [
        {"type": "conv", "kernel_size": 5},
        {"type": "attention", "graph": {"expr": "matmul(softmax(scale(matmul(q,transpose(k)))),v)"}},
        {"type": "conv", "kernel_size": 9},
        {"type": "attention", "graph": {"inputs": ["q", "k"], "expr": "matmul(softmax(scale(matmul(q,neg(transpose(logsigmoid(k)))))),q)"}},
        {"type": "attention", "graph": {"expr": "matmul(softmax(q),matmul(softmax(transpose(k)),v))"}},
        {"type": "conv", "kernel_size": 3},
    ],
}


def tiny_config(**overrides) -> GenomeBertConfig:
    return GenomeBertConfig(genome=HYBRID, hidden_dropout_prob=0.0, **overrides)


# -- padding never changes a real token's output --------------------------------------------------


@pytest.mark.parametrize("side", ["right", "left", "scattered"])
def test_padding_does_not_change_real_tokens(side):
    torch.manual_seed(0)
    model = GenomeBertForSequenceClassification(tiny_config(num_labels=3)).double().eval()
    encoder = model.genome_bert
    lengths, padded_length = [7, 4, 11], 11
    sequences = [torch.randint(5, 60, (n,)) for n in lengths]
    # Padded positions hold random real-looking ids, so ignoring the mask would show.
    ids = torch.randint(5, 60, (len(lengths), padded_length))
    mask = torch.zeros(len(lengths), padded_length, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if side == "scattered":  # padded tokens between real ones, at seeded random places
            where = torch.randperm(padded_length)[: len(seq)].sort().values
        else:
            where = slice(0, len(seq)) if side == "right" else slice(padded_length - len(seq), padded_length)
        ids[row, where], mask[row, where] = seq, 1
    batched_hidden = encoder(ids, attention_mask=mask).last_hidden_state
    batched_logits = model(ids, attention_mask=mask).logits
    for row, seq in enumerate(sequences):
        alone = encoder(seq[None]).last_hidden_state[0]  # the oracle: no padding at all
        real = mask[row].bool()
        torch.testing.assert_close(batched_hidden[row, real], alone, rtol=0, atol=1e-10)
        torch.testing.assert_close(batched_logits[row], model(seq[None]).logits[0], rtol=0, atol=1e-10)


def test_padding_matters_without_the_mask():
    """The control for the test above: the same padded batch without its mask differs."""
    torch.manual_seed(0)
    encoder = GenomeBertModel(tiny_config()).double().eval()
    seq = torch.randint(5, 60, (6,))
    padded = torch.cat([seq, torch.randint(5, 60, (3,))])[None]
    alone = encoder(seq[None]).last_hidden_state[0]
    unmasked = encoder(padded).last_hidden_state[0, :6]
    assert (unmasked - alone).abs().max() > 1e-3


# -- config: the genome, explicit sizes ------------------------------------------------------------


def test_config_carries_the_genome_and_explicit_sizes_override_it():
    config = GenomeBertConfig(genome=str(GENOMES / "autobert-zero.json"), vocab_size=100, hidden_size=64, num_heads=2)
    assert config.model_type == "genome-bert"
    assert (config.vocab_size, config.hidden_size, config.num_heads, config.num_attention_heads) == (100, 64, 2, 2)
    assert config.intermediate_size == 1024  # from the genome's own config
    assert config.num_hidden_layers == 12
    assert json.loads(json.dumps(config.genome)) == config.genome  # plain JSON
    assert [type(layer).__name__ for layer in config.model_genome.layers[:2]] == ["ConvLayer", "AttentionLayer"]
    model = GenomeBertModel(config)
    assert model.layers[0].mixer.depthwise.kernel_size == (65,)
    # projections only for the inputs a graph reads: the paper's layer 2 reads q and k
    assert sorted(model.layers[1].mixer.projections) == ["k", "q"]
    assert sorted(model.layers[11].mixer.projections) == ["k", "q", "v"]


def test_a_bare_attention_graph_builds_a_stack_of_that_graph():
    config = GenomeBertConfig(genome=str(GENOMES / "cosine-attention.json"), num_hidden_layers=3, hidden_size=32, num_heads=4)
    assert config.num_hidden_layers == 3
    assert len(config.model_genome.layers) == 3


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"vocab_size": 0}, "'vocab_size' must be a positive integer"),
        ({"max_kernel_size": 7}, "kernel_size 9 exceeds max_kernel_size 7"),
        ({"attention_backend": "cuda"}, "attention_backend must be one of"),
    ],
)
def test_bad_sizes_are_genome_errors(arguments, message):
    with pytest.raises(GenomeError, match=message):
        GenomeBertConfig(genome=HYBRID, **arguments)


def test_heads_that_do_not_split_hidden_size_are_refused_by_the_model_not_the_config():
    """As in transformers: a config accepts any sizes, a model refuses what it cannot build."""
    config = GenomeBertConfig(genome=HYBRID, hidden_size=30, num_heads=4)
    assert (config.hidden_size, config.num_heads) == (30, 4)
    for model_class in (GenomeBertModel, GenomeBertForMaskedLM, GenomeBertForSequenceClassification):
        with pytest.raises(GenomeError, match="config: hidden_size 30 is not a multiple of num_heads 4"):
            model_class(config)


def test_num_attention_heads_is_an_alias_of_num_heads():
    from transformers import AutoConfig

    config = GenomeBertConfig(genome=HYBRID, num_attention_heads=4)
    assert (config.num_heads, config.num_attention_heads) == (4, 4)
    assert GenomeBertModel(config).layers[1].mixer.head_dim == 4  # hidden 16 over 4 heads
    config.num_attention_heads = 8
    assert config.num_heads == 8 and "num_attention_heads" not in config.to_dict()
    assert GenomeBertConfig.from_dict(config.to_dict()).num_attention_heads == 8
    assert GenomeBertConfig(genome=HYBRID, num_heads=4, num_attention_heads=4).num_heads == 4
    with pytest.raises(GenomeError, match="num_heads 2 and its alias num_attention_heads 4 disagree"):
        GenomeBertConfig(genome=HYBRID, num_heads=2, num_attention_heads=4)
    through_auto = AutoConfig.for_model("genome-bert", num_attention_heads=16)
    assert type(through_auto) is GenomeBertConfig and through_auto.num_heads == 16


# -- Hugging Face forward conventions ----------------------------------------------------------


@pytest.mark.parametrize("model_class", [GenomeBertModel, GenomeBertForMaskedLM, GenomeBertForSequenceClassification])
def test_output_options_fall_back_to_the_config(model_class):
    torch.manual_seed(0)
    model = model_class(tiny_config()).eval()
    ids = torch.randint(5, 60, (2, 7))
    assert model(ids).hidden_states is None and model(ids).attentions is None
    model.config.output_hidden_states = True
    hidden = model(ids).hidden_states
    assert len(hidden) == 1 + len(HYBRID["layers"]) and hidden[0].shape == (2, 7, 16)
    assert model(ids, output_hidden_states=False).hidden_states is None  # an argument beats the config
    model.config.output_attentions = True
    assert model(ids).attentions == (None,) * len(HYBRID["layers"])
    model.config.return_dict = False
    as_tuple = model(ids)
    assert isinstance(as_tuple, tuple) and as_tuple[-1] == (None,) * len(HYBRID["layers"])
    assert all(torch.equal(a, b) for a, b in zip(as_tuple[-2], hidden, strict=True))
    assert not isinstance(model(ids, return_dict=True), tuple)


def test_output_attentions_gives_none_per_layer_and_says_why(caplog):
    """A genome's graph has no probability matrix: attentions are one None per layer (as
    transformers' SDPA attention answers), in the output object and in the tuple."""
    from genomec.models import modeling

    torch.manual_seed(0)
    model = GenomeBertForMaskedLM(tiny_config()).eval()
    ids = torch.randint(5, 60, (2, 7))
    modeling._no_attention_maps_logged = False
    with caplog.at_level(logging.WARNING, logger="genomec.models"):
        out = model(ids, output_attentions=True)
        model(ids, output_attentions=True)
    assert out.attentions == (None,) * len(HYBRID["layers"])
    assert caplog.text.count("no attention probabilities") == 1
    logits, attentions = model(ids, output_attentions=True, return_dict=False)
    assert torch.equal(logits, out.logits) and attentions == out.attentions
    assert model.config._attn_implementation in (None, "eager")  # transformers' attention kernels never run


# -- torch.export: no branch on the mask's values ----------------------------------------------------


def test_an_all_ones_mask_equals_no_mask():
    torch.manual_seed(0)
    model = GenomeBertForSequenceClassification(tiny_config(num_labels=3)).double().eval()
    ids = torch.randint(5, 60, (3, 11))
    unmasked = model(ids, output_hidden_states=True)
    masked = model(ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    for a, b in zip(unmasked.hidden_states + (unmasked.logits,), masked.hidden_states + (masked.logits,)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("with_mask", [False, True], ids=["no-mask", "mask"])
def test_exported_program_matches_eager(with_mask):
    """`torch.export` (non-strict: the reference executor is Python over the IR graph) traces
    the encoder; exported with an all-ones mask it must still honour any other mask."""
    torch.manual_seed(0)
    model = GenomeBertModel(tiny_config()).double().eval()
    ids = torch.randint(5, 60, (3, 11))
    mask = torch.ones_like(ids)
    kwargs = {"attention_mask": mask} if with_mask else {}
    exported = torch.export.export(model, (ids,), kwargs=kwargs, strict=False).module()
    out, expected = exported(ids, **kwargs), model(ids, **kwargs)
    torch.testing.assert_close(out.last_hidden_state, expected.last_hidden_state, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.pooler_output, expected.pooler_output, rtol=0, atol=1e-12)
    if with_mask:  # the mask is an input of the program, not a constant folded into it
        padded = mask.clone()
        padded[0, 7:], padded[2, :3] = 0, 0
        out, expected = exported(ids, attention_mask=padded), model(ids, attention_mask=padded)
        torch.testing.assert_close(out.last_hidden_state, expected.last_hidden_state, rtol=0, atol=1e-12)
        torch.testing.assert_close(out.pooler_output, expected.pooler_output, rtol=0, atol=1e-12)


# -- gradient checkpointing -------------------------------------------------------------------------


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(use_reentrant):
    import warnings

    def gradients(checkpointing: bool):
        torch.manual_seed(0)
        model = GenomeBertForMaskedLM(GenomeBertConfig(genome=HYBRID, hidden_dropout_prob=0.1)).double().train()
        assert model.supports_gradient_checkpointing
        if checkpointing:
            with warnings.catch_warnings():  # transformers 5 renames it activation_checkpointing_enable
                warnings.simplefilter("ignore", FutureWarning)
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
            assert model.genome_bert.gradient_checkpointing
        calls = []
        for layer in model.genome_bert.layers:
            layer.register_forward_pre_hook(lambda *_: calls.append(1))  # pre: a recompute may stop early
        ids = torch.randint(5, 60, (3, 11), generator=torch.Generator().manual_seed(1))
        mask = torch.ones_like(ids)
        mask[0, 8:], mask[2, 2:5] = 0, 0
        labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.3, ids, -100)
        torch.manual_seed(3)  # the same dropout draws in both runs (checkpointing replays them)
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, len(calls)

    plain, plain_calls = gradients(checkpointing=False)
    checkpointed, checkpointed_calls = gradients(checkpointing=True)
    assert checkpointed_calls == 2 * plain_calls == 2 * len(HYBRID["layers"])  # every layer ran again in backward
    assert plain.keys() == checkpointed.keys() and len(plain) > 20
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=1e-12, msg=name)


# -- save / load round trip through the Auto classes ------------------------------------------------


def test_save_and_load_round_trip_exactly_through_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

    torch.manual_seed(1)
    model = GenomeBertForMaskedLM(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is GenomeBertForMaskedLM
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    # the decoder stays tied to the word embeddings after loading
    assert loaded.lm_head.decoder.weight.data_ptr() == loaded.genome_bert.embeddings.word_embeddings.weight.data_ptr()
    ids = torch.randint(5, 60, (2, 9))
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    config = AutoConfig.from_pretrained(tmp_path)
    expected = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    assert {k: v for k, v in config.to_dict().items() if k != "_name_or_path"} == expected
    assert type(AutoModel.from_pretrained(tmp_path)) is GenomeBertModel
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    assert type(classifier) is GenomeBertForSequenceClassification and classifier.classifier.out_features == 3
    # the encoder weights carry over into the classifier
    assert torch.equal(classifier.genome_bert.layers[1].mixer.projections["q"].weight, model.genome_bert.layers[1].mixer.projections["q"].weight)


def test_fresh_process_registers_lazily_and_loads(tmp_path):
    torch.manual_seed(2)
    GenomeBertForMaskedLM(tiny_config()).save_pretrained(tmp_path)
    script = textwrap.dedent(
        f"""
        import sys
        import genomec
        assert "transformers" not in sys.modules, "import genomec must not import transformers"
        from transformers import AutoConfig
        config = AutoConfig.for_model("genome-bert")
        assert type(config).__name__ == "GenomeBertConfig" and config.num_hidden_layers == 12
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path)!r})
        print(type(model).__name__, model.config.hidden_size)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["GenomeBertModel", "16"]


# -- attention backends ---------------------------------------------------------------------------


def test_auto_backend_uses_the_reference_executor_on_cpu_and_says_so(caplog):
    from genomec.ir import execute, lower
    from genomec.genome import parse_genome

    compiled = lower(parse_genome({"expr": "matmul(softmax(cos(q, k)), v)"}))
    attention_backend._auto_fallback_logged.clear()
    with caplog.at_level(logging.INFO, logger="genomec.models"):
        run = attention_backend.attention_function(compiled, "auto", torch.device("cpu"))
    assert "uses the reference executor" in caplog.text
    q, k, v = torch.randn(3, 2, 2, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    torch.testing.assert_close(run(q, k, v, mask=mask), execute(compiled.simplified, q, k, v, mask=mask), rtol=0, atol=0)


def test_forced_triton_backend_without_a_runtime_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(attention_backend, "_runtime_loader", lambda: (None, "genomec.runtime has no loader"))
    model = GenomeBertModel(tiny_config(attention_backend="triton"))
    with pytest.raises(BackendUnavailable, match="attention backend 'triton' is unavailable: genomec.runtime has no loader"):
        model(torch.randint(5, 60, (1, 4)))


def test_backend_can_be_forced_on_a_built_model():
    model = GenomeBertModel(tiny_config())
    model.set_attention_backend("reference")
    assert model.config.attention_backend == "reference"
    assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {"reference"}


# -- transformers.Trainer ---------------------------------------------------------------------------


def test_trains_with_transformers_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(3)
    model = GenomeBertForSequenceClassification(tiny_config(num_labels=2))
    # label = whether token 7 occurs: learnable from the tokens
    rows = []
    for _ in range(32):
        ids = torch.randint(8, 60, (10,))
        label = int(torch.rand(()) < 0.5)
        if label:
            ids[torch.randint(0, 10, ())] = 7
        rows.append({"input_ids": ids, "attention_mask": torch.ones(10, dtype=torch.long), "labels": torch.tensor(label)})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, learning_rate=1e-3,
        report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True,
    )
    result = Trainer(model=model, args=args, train_dataset=rows).train()
    assert result.global_step == 4 and torch.isfinite(torch.tensor(result.training_loss))
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert any("layers.0.mixer.depthwise" in n for n in changed) and any("layers.1.mixer.projections.q" in n for n in changed)


def test_triton_backend_matches_the_reference_under_the_interpreter():
    """The whole paper model with compiled kernels (Triton's interpreter, in a fresh process
    because Triton fixes its mode at first import) against the reference executor."""
    pytest.importorskip("triton")
    script = textwrap.dedent(
        f"""
        import torch
        from genomec.models import GenomeBertConfig, GenomeBertModel
        torch.manual_seed(0)
        config = GenomeBertConfig(genome={str(GENOMES / "autobert-zero.json")!r}, hidden_size=48, num_heads=2,
                                  intermediate_size=64, vocab_size=50, hidden_dropout_prob=0.0)
        model = GenomeBertModel(config).eval()
        ids = torch.randint(5, 50, (2, 13))
        mask = torch.ones(2, 13, dtype=torch.long)
        mask[1, 9:] = 0
        reference = model(ids, attention_mask=mask).last_hidden_state
        model.set_attention_backend("triton")
        compiled = model(ids, attention_mask=mask).last_hidden_state
        real = mask.bool()
        print(float((compiled - reference)[real].abs().max()))
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) < 1e-4
