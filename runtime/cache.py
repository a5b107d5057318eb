"""The on-disk kernel cache (SPEC 3, Runtime).

An entry is a directory `<root>/<graph hash>-<key>/` holding the generated module
`kernels.py` and `entry.json` (what was generated, for which versions and options, the
SHA-256 of the module, and its kernel ABI: kernels, grids and buffers, `codegen/abi.py`). The key hashes (IR hash, generator version and fingerprint,
Triton version, options). Entries are built in a private temporary directory and renamed into place, so a
reader never sees half an entry and two processes building the same genome both succeed:
the first rename wins, the loser uses the winner's entry. An entry that fails its checks
(unreadable JSON, missing module, checksum mismatch) is moved aside and rebuilt. A cache
folder that cannot be written (a file, read-only, no permission) is replaced, for this
process, by a temporary one, with one warning on stderr: the kernels still run, only
uncached.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from genomec.codegen.abi import ModuleABI
from genomec.codegen.generate import GeneratedModule, generate, generator_fingerprint
from genomec.codegen.schedule import Schedule
from genomec.fileio import current_umask, output_folder_problem
from genomec.ir import Compiled

ENTRY_FILE, MODULE_FILE = "entry.json", "kernels.py"


def default_root() -> Path:
    """GENOMEC_CACHE_DIR, else $XDG_CACHE_HOME/genomec/kernels, else ~/.cache/genomec/kernels."""
    if os.environ.get("GENOMEC_CACHE_DIR"):
        return Path(os.environ["GENOMEC_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "genomec" / "kernels"


def triton_version() -> str:
    from importlib.metadata import version

    return version("triton")  # without importing triton (and fixing its interpreter mode)


class CorruptEntry(Exception):
    pass


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    hash: str
    abi: ModuleABI

    @property
    def module_path(self) -> Path:
        return self.path / MODULE_FILE


class KernelCache:
    def __init__(self, root: str | Path | None = None):
        root = Path(root) if root is not None else default_root()
        self.root = _TEMPORARY_ROOTS.get(root, root)  # an unusable folder's stand-in, once there is one

    def key(self, graph_hash: str, options: dict | None = None) -> str:
        text = json.dumps(
            {"hash": graph_hash, "generator": generator_fingerprint(), "triton": triton_version(), "options": options or {}},
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def entry_path(self, graph_hash: str, options: dict | None = None) -> Path:
        return self.root / f"{graph_hash}-{self.key(graph_hash, options)}"

    # -- reading ------------------------------------------------------------------------

    def lookup(self, graph_hash: str, options: dict | None = None) -> CacheEntry | None:
        """The valid entry, None if there is none; a corrupt one is moved aside."""
        path = self.entry_path(graph_hash, options)
        try:
            if not path.exists():
                return None
        except OSError:  # the cache folder cannot be searched (no permission): nothing cached
            return None
        try:
            return _read_entry(path, graph_hash)
        except CorruptEntry:
            self._discard(path)
            return None

    def _discard(self, path: Path) -> None:
        aside = path.with_name(f".corrupt-{path.name}-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            os.rename(path, aside)  # atomic: readers see the entry or nothing
        except FileNotFoundError:
            return  # another process discarded it first
        shutil.rmtree(aside, ignore_errors=True)

    # -- writing ------------------------------------------------------------------------

    def get_or_build(self, compiled: Compiled, options: dict | None = None, schedule: Schedule | None = None) -> CacheEntry:
        """The entry for a lowered graph, generating (from its `schedule`, when at hand) and
        storing it when missing or corrupt."""
        entry = self.lookup(compiled.hash, options)
        if entry is not None:
            return entry
        return self.store(generate(compiled, schedule), options)

    def store(self, generated: GeneratedModule, options: dict | None = None) -> CacheEntry:
        tmp = self._build_folder(generated.hash)
        path = self.entry_path(generated.hash, options)  # under the root the build folder is in
        try:
            source = generated.source.encode()
            (tmp / MODULE_FILE).write_bytes(source)
            meta = {
                "hash": generated.hash,
                "generator": generator_fingerprint(),
                "triton": triton_version(),
                "options": options or {},
                "module_sha256": hashlib.sha256(source).hexdigest(),
                "abi": generated.abi.to_json(),
            }
            (tmp / ENTRY_FILE).write_text(json.dumps(meta, indent=1))
            for f in (MODULE_FILE, ENTRY_FILE):
                with open(tmp / f, "rb") as fh:
                    os.fsync(fh.fileno())
            try:
                os.rename(tmp, path)
            except OSError:
                pass  # another process stored it first (the target exists and is not empty)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        entry = self.lookup(generated.hash, options)
        if entry is None:  # the winner's entry was corrupt and just discarded: store ours again
            return self.store(generated, options)
        return entry

    # -- the cache folder ---------------------------------------------------------------------

    def _build_folder(self, graph_hash: str) -> Path:
        """A private folder in the cache to build an entry in (with the permissions the umask
        gives, as the entry keeps them). If the cache folder cannot be created or written in,
        the cache moves to a temporary folder for the rest of this process, with a warning."""
        try:
            return self._make_build_folder(graph_hash)
        except OSError as e:
            self.root = _temporary_root(self.root, e)
            return self._make_build_folder(graph_hash)

    def _make_build_folder(self, graph_hash: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{graph_hash}-", dir=self.root))
        os.chmod(tmp, 0o777 & ~current_umask())
        return tmp


_TEMPORARY_ROOTS: dict[Path, Path] = {}  # unusable cache folder -> its stand-in in this process


def _temporary_root(root: Path, error: OSError) -> Path:
    """The stand-in for an unusable cache folder: made (and the warning printed) once per
    process, removed when the process exits."""
    if root not in _TEMPORARY_ROOTS:
        stand_in = Path(tempfile.mkdtemp(prefix="genomec-kernels-"))
        atexit.register(shutil.rmtree, stand_in, ignore_errors=True)
        reason = output_folder_problem(root) or error.strerror or str(error)
        print(f"genomec: warning: kernel cache {root} is not usable ({reason}); "
              f"caching kernels in {stand_in} for this run only (set GENOMEC_CACHE_DIR to a writable folder)",
              file=sys.stderr)
        _TEMPORARY_ROOTS[root] = stand_in
    return _TEMPORARY_ROOTS[root]


def _read_entry(path: Path, graph_hash: str) -> CacheEntry:
    try:
        meta = json.loads((path / ENTRY_FILE).read_text())
        source = (path / MODULE_FILE).read_bytes()
        if meta["hash"] != graph_hash or hashlib.sha256(source).hexdigest() != meta["module_sha256"]:
            raise CorruptEntry(f"{path}: checksum mismatch")
        return CacheEntry(path, graph_hash, ModuleABI.from_json(meta["abi"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptEntry(f"{path}: {e}") from None
