"""A graph that runs as several stages (genomec.codegen.stages): one fused module per stage.

Each stage is a CompiledAttention of its own; the value a stage writes is handed to the
later stages that read it, in the input slot their graph reads it from. Autograd chains the
stages, so each stage's backward is its own (fused where its graph is in the fused
backward class) and the gradients of the intermediate values flow back through the earlier
stages to q, k and v.
"""

from __future__ import annotations

import torch

from genomec.codegen.stages import StagePlan


class StagedAttention(torch.nn.Module):
    """The same interface as CompiledAttention: `module(q, k, v, mask)`."""

    def __init__(self, plan: StagePlan, modules):
        super().__init__()
        self.plan = plan
        self.compiled = plan.compiled
        self.stage_modules = torch.nn.ModuleList(modules)
        self.reason = None

    @property
    def fused(self) -> bool:
        return all(m.fused for m in self.stage_modules)

    @property
    def interpret(self) -> bool:
        return any(m.interpret for m in self.stage_modules)

    @property
    def backward_fused(self) -> bool:
        return all(m.backward_fused for m in self.stage_modules)

    @property
    def backward_reason(self) -> str | None:
        reasons = [f"{s.name}: {m.backward_reason}" for s, m in zip(self.plan.stages, self.stage_modules) if not m.backward_fused]
        return "; ".join(reasons) or None

    @property
    def backend(self) -> str:
        return f"{self.stage_modules[-1].backend}, {len(self.stage_modules)} stages"

    @property
    def backward_backend(self) -> str:
        backends = {m.backward_backend for m in self.stage_modules}
        return (backends.pop() if len(backends) == 1 else "mixed: " + ", ".join(sorted(backends))) + f", {len(self.stage_modules)} stages"

    def forward(self, q, k=None, v=None, mask=None):
        values = {"q": q, "k": k, "v": v}
        for stage, module in zip(self.plan.stages, self.stage_modules):
            slots = stage.inputs
            read = {slot: values[slots[slot]] if slot in slots else None for slot in ("q", "k", "v")}
            values[stage.name] = module(read["q"], read["k"], read["v"], mask)
        return values[self.plan.stages[-1].name]

    def launch(self, q, k=None, v=None, mask=None):
        """The forward without autograd (what benchmarks and `genomec run` time)."""
        with torch.no_grad():
            return self.forward(q, k, v, mask)
