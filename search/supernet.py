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


Contribution = tuple[str, "slice | None", torch.Tensor]  # (super-net name, taps, the candidate's values)


@torch.no_grad()
def average_into(targets: dict[str, torch.Tensor], contributions: list[Contribution], all_reduce=lambda t: t) -> None:
    """Set every element of `targets` that some contribution covers to the mean of the
    values contributed to it; other elements keep theirs. `all_reduce` sums a tensor over
    the processes of a distributed search (the identity in one process), so each element
    is averaged over the ranks whose child trained it, and overlapping conv centre slices
    are averaged per element. With one contribution per element this is a plain copy."""
    names = list(targets)
    reference = targets[names[0]]
    total = torch.zeros(sum(targets[n].numel() for n in names), dtype=torch.float32, device=reference.device)
    count = torch.zeros_like(total)
    views, offset = {}, 0
    for name in names:
        size = targets[name].numel()
        views[name] = (total[offset : offset + size].view(targets[name].shape), count[offset : offset + size].view(targets[name].shape))
        offset += size
    for name, taps, value in contributions:
        summed, counted = views[name]
        (summed if taps is None else summed[..., taps]).add_(value.to(total.device, torch.float32))
        (counted if taps is None else counted[..., taps]).add_(1.0)
    all_reduce(total)
    all_reduce(count)
    for name in names:
        summed, counted = views[name]
        covered = counted > 0
        targets[name][covered] = (summed[covered] / counted[covered]).to(targets[name].dtype)


def weight_contributions(candidate: nn.Module, slices: list[SharedSlice], trained) -> list[Contribution]:
    """What a candidate writes back: its trained parameters (named in `trained`), each into
    the super-net slice it views."""
    own = dict(candidate.named_parameters())
    return [(s.supernet, s.taps, own[s.candidate].detach()) for s in slices if s.candidate in trained]


@torch.no_grad()
def write_back(supernet: SuperNet, candidate: nn.Module, slices: list[SharedSlice], trained, all_reduce=lambda t: t) -> None:
    """Copy the candidate's trained weights (parameters named in `trained`) back into the
    super-net, only into the slices they view (averaged over ranks: `average_into`)."""
    average_into(dict(supernet.named_parameters()), weight_contributions(candidate, slices, trained), all_reduce)


class OptimizerMoments:
    """AdamW state per super-net element, for the "inherit" optimizer policy: first and
    second moments shaped like each super-net parameter, and a step count per parameter."""

    KINDS = ("exp_avg", "exp_avg_sq", "step")

    def __init__(self, supernet: SuperNet):
        self.moments = {kind: {} for kind in self.KINDS}
        for name, p in supernet.named_parameters():
            self.moments["exp_avg"][name] = torch.zeros_like(p)
            self.moments["exp_avg_sq"][name] = torch.zeros_like(p)
            self.moments["step"][name] = torch.zeros(1, device=p.device)

    def state_dict(self) -> dict:
        return self.moments

    def load_state_dict(self, state: dict) -> None:
        for kind in self.KINDS:
            for name, value in state[kind].items():
                self.moments[kind][name].copy_(value)

    @torch.no_grad()
    def inherit(self, optimizer: torch.optim.Optimizer, candidate: nn.Module, slices: list[SharedSlice]) -> None:
        """Seed `optimizer` (over `candidate`'s parameters) with the stored moments."""
        own = dict(candidate.named_parameters())
        for s in slices:
            step = float(self.moments["step"][s.supernet])
            if step == 0:
                continue  # never trained: AdamW starts it fresh
            optimizer.state[own[s.candidate]] = {
                "step": torch.tensor(step),
                "exp_avg": s.of_supernet(self.moments["exp_avg"][s.supernet]).clone(),
                "exp_avg_sq": s.of_supernet(self.moments["exp_avg_sq"][s.supernet]).clone(),
            }

    def contributions(self, optimizer: torch.optim.Optimizer, candidate: nn.Module, slices: list[SharedSlice], trained) -> dict:
        """Per kind, what the candidate's optimizer writes back for its trained slices."""
        own = dict(candidate.named_parameters())
        found = {kind: [] for kind in self.KINDS}
        for s in slices:
            state = optimizer.state.get(own[s.candidate]) if s.candidate in trained else None
            if state:
                found["exp_avg"].append((s.supernet, s.taps, state["exp_avg"]))
                found["exp_avg_sq"].append((s.supernet, s.taps, state["exp_avg_sq"]))
                found["step"].append((s.supernet, None, torch.as_tensor(state["step"], dtype=torch.float32).reshape(1)))
        return found

    def write_back(self, contributions: dict, all_reduce=lambda t: t) -> None:
        for kind in self.KINDS:
            average_into(self.moments[kind], contributions[kind], all_reduce)
