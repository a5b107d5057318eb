"""The BIWS super-net (SPEC 5): the weights every candidate of a search shares.

It is built from the model's own blocks. At every layer position a `SuperLayer` is a
`GenomeBertLayer` whose mixer is the conv branch at the largest allowed kernel size (a
kernel of size k is its centre k taps), with the attention branch beside it: the Q, K, V
and output projections that every attention graph at that position shares (a graph adds
no parameters). Embeddings and the task head are shared by all positions.

A candidate is an ordinary `GenomeBertForMaskedLM` (or `...ForSequenceClassification`) of
its own genome, so it trains, scores and exports like any model. `shared_slices` names,
for each of its parameters, the part of the super-net it views; `inherit` copies those
parts in, and `write_back` copies back exactly the parts the candidate trained.

Optimizer state (the AdamW moments) is fresh per candidate by default; with the
"inherit" policy `OptimizerMoments` keeps them per super-net element and they travel with
the weights, through the same slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genomec.genome import INPUT_NAMES, ConvLayer, ModelGenome
from genomec.models import GenomeBertConfig
from genomec.models.modeling import (
    AttentionProjections,
    GenomeBertEmbeddings,
    GenomeBertLayer,
    MaskedLMHead,
    init_bert_weights,
)

CANDIDATE_PREFIX = "genome_bert."  # the encoder's attribute in the task models


class SuperLayer(GenomeBertLayer):
    """One layer position: the conv branch (as `mixer`, largest kernel), the attention
    branch (`attention`), the FFN and both LayerNorms."""

    def __init__(self, config: GenomeBertConfig):
        super().__init__(config, ConvLayer(config.max_kernel_size))
        self.attention = AttentionProjections(config, INPUT_NAMES)


class SuperNet(nn.Module):
    """Shared weights of a search: embeddings, `num_layers` super-layers and the proxy
    task's head (`mlm`: the MLM head tied to the word embeddings; `classification`: the
    pooler and classifier). Parameter names are the candidates' without `genome_bert.`."""

    def __init__(self, config: GenomeBertConfig, num_layers: int, head: str = "mlm"):
        super().__init__()
        self.embeddings = GenomeBertEmbeddings(config)
        self.layers = nn.ModuleList(SuperLayer(config) for _ in range(num_layers))
        if head == "mlm":
            self.lm_head = MaskedLMHead(config)
            self.lm_head.decoder.weight = self.embeddings.word_embeddings.weight
        elif head == "classification":
            self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        else:
            raise ValueError(f"unknown super-net head {head!r} (mlm, classification)")
        self.apply(lambda module: init_bert_weights(module, config.initializer_range))


@dataclass(frozen=True)
class SharedSlice:
    """A candidate parameter and the part of the super-net it views."""

    candidate: str  # parameter name in the candidate model
    supernet: str  # parameter name in the super-net
    taps: slice | None = None  # a conv kernel: the centre taps of the super-net's kernel

    def of_supernet(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.taps is None else tensor[..., self.taps]


def _supernet_name(candidate_name: str, genome: ModelGenome) -> str:
    """`genome_bert.layers.3.mixer.projections.q.weight` -> `layers.3.attention.projections.q.weight`
    (an attention layer's mixer is the attention branch; a conv layer's is the mixer)."""
    name = candidate_name.removeprefix(CANDIDATE_PREFIX)
    parts = name.split(".")
    if parts[0] == "layers" and parts[2] == "mixer" and not isinstance(genome.layers[int(parts[1])], ConvLayer):
        parts[2] = "attention"
    return ".".join(parts)


def shared_slices(supernet: SuperNet, candidate: nn.Module, genome: ModelGenome) -> list[SharedSlice]:
    """Every parameter of `candidate` (a model of `genome`) with the super-net part it views."""
    shared = dict(supernet.named_parameters())
    slices = []
    for name, parameter in candidate.named_parameters():
        target = _supernet_name(name, genome)
        if target not in shared:
            raise KeyError(f"candidate parameter {name!r} has no place in the super-net (looked for {target!r})")
        full = shared[target]
        taps = None
        if full.shape != parameter.shape:  # a conv kernel of k taps inside the largest one
            width, size = full.shape[-1], parameter.shape[-1]
            if full.shape[:-1] != parameter.shape[:-1] or (width - size) % 2:
                raise ValueError(f"{name}: shape {list(parameter.shape)} is no centre slice of {target} {list(full.shape)}")
            start = (width - size) // 2
            taps = slice(start, start + size)
        slices.append(SharedSlice(name, target, taps))
    return slices


@torch.no_grad()
def inherit(supernet: SuperNet, candidate: nn.Module, slices: list[SharedSlice]) -> None:
    """Copy the super-net's weights into the candidate, slice by slice."""
    shared = dict(supernet.named_parameters())
    own = dict(candidate.named_parameters())
    for s in slices:
        own[s.candidate].copy_(s.of_supernet(shared[s.supernet]))


@torch.no_grad()
def write_back(supernet: SuperNet, candidate: nn.Module, slices: list[SharedSlice], trained) -> list[SharedSlice]:
    """Copy the candidate's trained weights (parameters named in `trained`) back into the
    super-net, only into the slices they view. Returns the slices written."""
    shared = dict(supernet.named_parameters())
    own = dict(candidate.named_parameters())
    written = [s for s in slices if s.candidate in trained]
    for s in written:
        s.of_supernet(shared[s.supernet]).copy_(own[s.candidate])
    return written


class OptimizerMoments:
    """AdamW state per super-net element, for the "inherit" optimizer policy: first and
    second moments shaped like each super-net parameter, and a step count per parameter."""

    def __init__(self, supernet: SuperNet):
        self.moments = {
            name: {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p), "step": 0.0}
            for name, p in supernet.named_parameters()
        }

    def state_dict(self) -> dict:
        return self.moments

    def load_state_dict(self, state: dict) -> None:
        self.moments = state

    @torch.no_grad()
    def inherit(self, optimizer: torch.optim.Optimizer, candidate: nn.Module, slices: list[SharedSlice]) -> None:
        """Seed `optimizer` (over `candidate`'s parameters) with the stored moments."""
        own = dict(candidate.named_parameters())
        for s in slices:
            stored = self.moments[s.supernet]
            if stored["step"] == 0:
                continue  # never trained: AdamW starts it fresh
            optimizer.state[own[s.candidate]] = {
                "step": torch.tensor(stored["step"]),
                "exp_avg": s.of_supernet(stored["exp_avg"]).clone(),
                "exp_avg_sq": s.of_supernet(stored["exp_avg_sq"]).clone(),
            }

    @torch.no_grad()
    def write_back(self, optimizer: torch.optim.Optimizer, candidate: nn.Module, slices: list[SharedSlice]) -> None:
        """Store the moments of the slices written back (those `write_back` returned)."""
        own = dict(candidate.named_parameters())
        for s in slices:
            state = optimizer.state.get(own[s.candidate])
            if not state:
                continue
            stored = self.moments[s.supernet]
            s.of_supernet(stored["exp_avg"]).copy_(state["exp_avg"])
            s.of_supernet(stored["exp_avg_sq"]).copy_(state["exp_avg_sq"])
            stored["step"] = float(state["step"])
