"""The fused backward (SPEC 3, Backward), in three modules:

    backward_plan     which kernels a fused forward's backward runs, or why it keeps the
                      reference executor's (backward_schedule, BackwardSchedule, BackwardKind,
                      format_backward)
    autodiff          reverse-mode differentiation on the IR: Backprop and its table of
                      derivative rules (DERIVATIVE_RULES)
    backward_kernels  the kernel builders, and the math of the whole backward in its docstring
                      (generate_backward); backward_template holds their pieces

This module keeps the names the rest of the compiler imports.
"""

from __future__ import annotations

from .backward_kernels import BACKWARD_CONSTEXPRS, generate_backward, key_side_cotangents
from .backward_plan import (
    BACKWARD_KERNELS,
    COLUMN_ROWS_KERNEL,
    GLOBAL_BACKWARD_KERNELS,
    BackwardKind,
    BackwardSchedule,
    OutsideBackwardClass,
    backward_schedule,
    format_backward,
)

__all__ = [
    "BACKWARD_CONSTEXPRS", "BACKWARD_KERNELS", "COLUMN_ROWS_KERNEL", "GLOBAL_BACKWARD_KERNELS",
    "BackwardKind", "BackwardSchedule", "OutsideBackwardClass", "backward_schedule", "format_backward", "generate_backward",
    "key_side_cotangents",
]
