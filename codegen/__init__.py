"""Code generation: schedule an IR into kernels and passes, emit Triton source, compile
it ahead of time for a GPU target."""

from .abi import KernelInterface, ModuleABI
from .generate import GENERATOR_VERSION, GeneratedModule, NotFusable, generate
from .schedule import Schedule, format_schedule, schedule

__all__ = ["GENERATOR_VERSION", "GeneratedModule", "KernelInterface", "ModuleABI", "NotFusable", "Schedule", "format_schedule", "generate", "schedule"]
