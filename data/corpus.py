"""Plain-text corpora for masked language modelling (SPEC 5, proxy tasks).

A corpus is a UTF-8 text file or a folder of them (read recursively, in sorted order,
hidden files skipped). It becomes a list of documents, one per non-empty paragraph.

The built-in default corpus needs no download: it is English text gathered at run time
from the documentation installed with Python itself, the language reference topics that
`help()` shows (`pydoc_data.topics`) and the docstrings of the standard library's modules,
classes and functions, read from their source with `ast` (nothing is imported or run).
"""

from __future__ import annotations

import ast
import re
import sysconfig
from pathlib import Path

DEFAULT_CORPUS_NAME = "python-docs"

# How much of a file is sniffed for NUL bytes, the mark of a binary file.
SNIFF_BYTES = 8192


class DataError(ValueError):
    """Bad input data (a corpus, a tokenizer directory, a GLUE directory)."""


def read_corpus(path: str | Path) -> list[str]:
    """Documents (non-empty paragraphs) of a text file or a folder of text files."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
        if not files:
            raise DataError(f"{path}: the corpus folder holds no files")
    else:
        files = [path]
    documents = []
    for file in files:
        documents.extend(split_documents(_read_text(file)))
    if not documents:
        raise DataError(f"{path}: the corpus is empty (no text)")
    return documents


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _read_text(file: Path) -> str:
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise DataError(f"{file}: cannot read ({e.strerror or e})") from None
    if b"\0" in raw[:SNIFF_BYTES]:
        raise DataError(f"{file}: not a text file (binary data); a corpus is UTF-8 plain text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{file}: not UTF-8 text (byte {e.start}); a corpus is UTF-8 plain text") from None


def split_documents(text: str) -> list[str]:
    """Paragraphs (separated by blank lines), each with its lines joined by spaces."""
    paragraphs = re.split(r"\n\s*\n", text)
    return [" ".join(p.split()) for p in paragraphs if p.strip()]


# -- the built-in default corpus ----------------------------------------------------------------

# Standard-library folders whose docstrings are not prose worth learning from.
_SKIPPED_STDLIB_PARTS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "__pycache__"}


def default_corpus() -> list[str]:
    """The built-in corpus: Python's own documentation, gathered from this installation.

    About 2 MB of English text on CPython 3.11 (the reference topics of `help()` and about
    7,000 standard-library docstrings); deterministic for a given Python installation."""
    documents = []
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        topics = {}
    for name in sorted(topics):
        documents.extend(split_documents(topics[name]))
    documents.extend(stdlib_docstrings())
    if not documents:
        raise DataError("the default corpus is empty: this Python has neither pydoc_data nor standard-library sources; pass --corpus")
    return documents


def stdlib_docstrings() -> list[str]:
    """Docstrings of the standard library's modules, classes and functions, without doctest lines."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not _SKIPPED_STDLIB_PARTS & set(p.relative_to(root).parts))
    documents = []
    for file in files:
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node)
                if docstring:
                    prose = "\n".join(line for line in docstring.splitlines() if not line.lstrip().startswith((">>>", "...")))
                    documents.extend(split_documents(prose))
    return documents
