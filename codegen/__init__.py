"""Fused Triton code generation: schedule, kernel templates, pointwise emitter (SPEC 3)."""
