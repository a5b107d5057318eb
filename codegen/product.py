"""One compile of an attention graph: its stage plan and, per stage, the generated module
(schedule, backward plan, source, kernel ABI).

`genomec show`, `genomec compile` (manifest.py), `genomec bench` and the static kernel
benchmark read this; the runtime's loader (runtime/launch.py `load`) does the same steps
lazily, generating only the stages its kernel cache does not hold. A graph is scheduled
once: the stage plan keeps each stage's schedule and code generation takes it from there.
"""

from __future__ import annotations

from dataclasses import dataclass

from genomec.ir import Compiled

from .generate import GeneratedModule, generate
from .stages import Stage, StagePlan, plan_stages


@dataclass(frozen=True)
class GraphKernels:
    plan: StagePlan
    modules: tuple[GeneratedModule, ...]  # one per stage, in launch order; none outside the fused class

    @property
    def fused(self) -> bool:
        return self.plan.fused

    @property
    def reason(self) -> str | None:
        return self.plan.reason

    def stages(self) -> list[tuple[Stage, GeneratedModule]]:
        return list(zip(self.plan.stages, self.modules))


def compile_graph(compiled: Compiled) -> GraphKernels:
    """The stages of a lowered graph and their generated modules (a module once per
    distinct stage graph: stages of one graph may repeat one)."""
    plan = plan_stages(compiled)
    by_hash: dict[str, GeneratedModule] = {}
    for stage in plan.stages:
        if stage.compiled.hash not in by_hash:
            by_hash[stage.compiled.hash] = generate(stage.compiled, stage.schedule)
    return GraphKernels(plan, tuple(by_hash[stage.compiled.hash] for stage in plan.stages))
