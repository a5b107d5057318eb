"""Importing generated Triton modules, compiled or interpreted.

Triton decides whether a kernel is compiled or interpreted from TRITON_INTERPRET at
decoration time (`@triton.jit`), and its own library functions (tl.sigmoid, ...) are
decorated when triton.language is first imported: in effect one mode per process.
`set_triton_mode` fixes it before that first import (the runtime: interpret without a
CUDA GPU) and refuses a mix; ahead-of-time compilation from an interpreting process runs
in a child process (codegen/aot.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
from pathlib import Path


@contextlib.contextmanager
def triton_interpret(enabled: bool):
    """TRITON_INTERPRET set (or unset) for the duration of the block."""
    before = os.environ.get("TRITON_INTERPRET")
    if enabled:
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = before


def triton_mode() -> str | None:
    """How this process's Triton runs kernels: "interpret" or "compile", fixed when
    triton.language was first imported; None if it has not been imported yet."""
    if "triton.language" not in sys.modules:
        return None
    import triton.language.standard as standard
    from triton.runtime.interpreter import InterpretedFunction

    return "interpret" if isinstance(standard.sigmoid, InterpretedFunction) else "compile"


def set_triton_mode(interpret: bool) -> None:
    """Fix this process's Triton mode (before its first import), or check that it matches."""
    mode, wanted = triton_mode(), "interpret" if interpret else "compile"
    if mode is not None and mode != wanted:
        raise RuntimeError(
            f"Triton was imported in {mode} mode in this process and cannot {wanted} kernels "
            "(set TRITON_INTERPRET before the first import of triton)"
        )
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    elif mode is None:
        os.environ.pop("TRITON_INTERPRET", None)
    import triton.language  # noqa: F401  (fixes the mode)

    if interpret:
        _index_scalars_of_one_element()


def _index_scalars_of_one_element() -> None:
    """Triton's interpreter holds a scalar kernel argument as a one-element array; Triton
    3.6 turns one into a Python int (`range(0, seq_len, BLOCK)`) with `int(data)`, which
    NumPy 2.4 refuses for arrays that are not 0-d. Wrap the interpreter's tensor patching
    so that `__index__` reads the one element (as Triton 3.9 does); idempotent."""
    from triton.runtime import interpreter

    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "genomec_index", False):
        return

    def patch_lang_tensor(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(())))

    patch_lang_tensor.genomec_index = True
    interpreter._patch_lang_tensor = patch_lang_tensor


def use_interpreter() -> bool:
    """Run kernels on the CPU interpreter: asked for, or no CUDA GPU."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    import torch

    return not torch.cuda.is_available()


def import_module_file(path: str | Path, interpret: bool):
    """Import a generated module from its file. The module name is derived from the path and
    the mode, so compiled and interpreted copies of one file can coexist."""
    path = Path(path).resolve()
    tag = hashlib.sha256(f"{path}:{interpret}".encode()).hexdigest()[:16]
    name = f"genomec_generated_{tag}"
    set_triton_mode(interpret)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    with triton_interpret(interpret):
        sys.modules[name] = module  # triton resolves the kernels' globals through the module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
    return module
