"""The search space (SPEC 5): which model genomes a search may propose.

A `SearchSpace` fixes the layer count and the model's sizes (every candidate is a model
genome of that shape), the ops a mutation may introduce, the node limit per attention
graph, the conv kernel sizes allowed and whether a graph may drop `v`. Mutations,
random genomes and seeds all produce genomes of this space, validated by the parser's
rules (`genomec.genome.validate_model`).
"""

from __future__ import annotations

from dataclasses import dataclass

from genomec.genome import OPS
from genomec.genome.schema import DEFAULT_CONFIG

# The paper's first op group plus `max` (SPEC 5): the default op set of a search.
DEFAULT_OPS = tuple(sorted(name for name, op in OPS.items() if op.paper_group)) + ("max",)
DEFAULT_KERNEL_SIZES = tuple(range(3, 66, 2))


@dataclass(frozen=True)
class SearchSpace:
    num_layers: int = 4
    hidden_size: int = 64
    num_heads: int = 2
    intermediate_size: int = 256
    ops: tuple[str, ...] = DEFAULT_OPS  # the ops a mutation may introduce
    max_nodes: int = 24  # node limit per attention graph
    kernel_sizes: tuple[int, ...] = DEFAULT_KERNEL_SIZES  # odd, ascending
    allow_drop_v: bool = True  # whether a graph may leave out the v input

    @property
    def max_kernel_size(self) -> int:
        return max(self.kernel_sizes)

    def model_config(self) -> dict:
        """The `config` of every candidate's model genome."""
        config = dict(DEFAULT_CONFIG)
        config.update(
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_kernel_size=self.max_kernel_size,
        )
        return config
