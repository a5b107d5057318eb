"""Run by test_distributed.py under torchrun (2 processes, gloo): each rank writes back one
candidate into the same super-net; rank 0 saves the results to the path given."""

import sys

import torch

from genomec.genome import parse_genome
from genomec.models import GenomeBertConfig, GenomeBertForMaskedLM
from genomec.search.distributed import World
from genomec.search.supernet import SuperNet, inherit, shared_slices, write_back

CONFIG = {"hidden_size": 8, "num_heads": 2, "intermediate_size": 16, "max_kernel_size": 7}


def main(out: str) -> None:
    world = World.from_environment()
    assert world.size == 2
    supernet_genome = parse_genome({"config": CONFIG, "layers": [{"type": "conv", "kernel_size": 7}]})
    torch.manual_seed(0)  # the same super-net on both ranks
    supernet = SuperNet(GenomeBertConfig(genome=supernet_genome, vocab_size=20, max_position_embeddings=8), num_layers=1)
    before = supernet.layers[0].mixer.depthwise.weight.detach().clone()
    untouched_before = supernet.layers[0].attention.projections.q.weight.detach().clone()

    # rank 0: a conv child of 3 taps; rank 1: one of 5 taps; they overlap in the centre 3
    size = 3 if world.rank == 0 else 5
    genome = parse_genome({"config": CONFIG, "layers": [{"type": "conv", "kernel_size": size}]})
    candidate = GenomeBertForMaskedLM(GenomeBertConfig(genome=genome, vocab_size=20, max_position_embeddings=8))
    slices = shared_slices(supernet, candidate, genome)
    inherit(supernet, candidate, slices)
    value = 1.0 if world.rank == 0 else 3.0
    with torch.no_grad():
        for p in candidate.parameters():
            p.fill_(value)
    trained = {name for name, _ in candidate.named_parameters()}
    write_back(supernet, candidate, slices, trained, all_reduce=world.all_reduce_sum)

    # then an attention child at the same position, whose v projection only rank 1 trained
    attention = parse_genome({"config": CONFIG, "layers": [{"type": "attention", "graph": {"expr": "matmul(softmax(matmul(k,transpose(k))),v)"}}]})
    child = GenomeBertForMaskedLM(GenomeBertConfig(genome=attention, vocab_size=20, max_position_embeddings=8))
    child_slices = shared_slices(supernet, child, attention)
    with torch.no_grad():
        for p in child.parameters():
            p.fill_(3.0)
    only_v = {"genome_bert.layers.0.mixer.projections.v.weight"} if world.rank == 1 else set()
    write_back(supernet, child, child_slices, only_v, all_reduce=world.all_reduce_sum)

    if world.is_main:
        torch.save({
            "before": before,
            "after": supernet.layers[0].mixer.depthwise.weight.detach().clone(),
            "v_after": supernet.layers[0].attention.projections.v.weight.detach().clone(),
            "untouched_before": untouched_before,
            "untouched_after": supernet.layers[0].attention.projections.q.weight.detach().clone(),
        }, out)
    world.close()


if __name__ == "__main__":
    main(sys.argv[1])
