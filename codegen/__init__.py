"""Code generation: schedule an IR into kernels and passes, emit Triton source, compile
it ahead of time for a GPU target."""

from .generate import GENERATOR_VERSION, GeneratedModule, KernelInterface, NotFusable, generate
from .schedule import Schedule, format_schedule, schedule

__all__ = ["GENERATOR_VERSION", "GeneratedModule", "KernelInterface", "NotFusable", "Schedule", "format_schedule", "generate", "schedule"]
