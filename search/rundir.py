"""The run directory of a search (SPEC 5), written like a database's write-ahead log.

    RUN/run.json          the settings (a rerun with other settings is refused)
    RUN/history.jsonl     the log of record: one JSON object per evaluation, appended,
                          flushed and fsynced
    RUN/checkpoint.pt     super-net, optimizer moments, every RNG state, and the newest
                          record (the commit point of an evaluation)
    RUN/population.json, op_stats.json, best.json, *.png
                          caches of the history, rewritten after each evaluation
    RUN/top/<index>.pt    trained weights of the current top-k candidates
    RUN/data/             the run's tokenizer and token blocks

An evaluation commits when its checkpoint is renamed into place; the checkpoint carries
the evaluation's record, and the record is appended to the history right after. A run
killed between the two appends the record on resume; a run killed while appending
(a torn last line) has that line replaced by the record. Everything but the history is
written atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from genomec.models.training import write_atomic

HISTORY = "history.jsonl"
SETTINGS = "run.json"
CHECKPOINT = "checkpoint.pt"
POPULATION = "population.json"
OP_STATS = "op_stats.json"
BEST = "best.json"
TOP = "top"
DATA = "data"


class RunError(ValueError):
    """The run directory cannot be used as asked (other settings, corrupt files)."""


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def data_dir(self) -> Path:
        return self.path / DATA

    @property
    def top_dir(self) -> Path:
        return self.path / TOP

    def open(self, identity: dict, evaluations: int) -> bool:
        """Prepare the folder for a run with these settings; True when it resumes one."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"--out {self.path}: exists and is not a directory")
        settings_file = self.path / SETTINGS
        if settings_file.is_file():
            try:
                previous = json.loads(settings_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RunError(f"{settings_file}: corrupt; choose another --out") from None
            old = previous.get("settings", {})
            if old != identity:
                changed = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
                raise RunError(
                    f"{self.path} holds a search with other settings ({', '.join(changed)} differ); "
                    f"rerun it with the same settings to resume, or choose another --out"
                )
            if previous.get("evaluations") != evaluations:
                self.write_json(SETTINGS, {"settings": identity, "evaluations": evaluations})
            return True
        if self.path.is_dir() and any(self.path.iterdir()):
            raise RunError(f"--out {self.path}: the folder is not empty and holds no search; choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"--out {self.path}: cannot create the folder ({e.strerror or e})") from None
        self.write_json(SETTINGS, {"settings": identity, "evaluations": evaluations})
        return False

    # -- the history ----------------------------------------------------------------------

    def read_history(self, repair: bool = True) -> list[dict]:
        """The records so far. A torn last line (a kill while appending) is left out, and
        with `repair` (the search resuming) cut off the file: the checkpoint holds that
        record and the resume appends it again. Readers of a live run pass repair=False."""
        path = self.path / HISTORY
        if not path.exists():
            return []
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        records, good_bytes = [], 0
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                good_bytes += len(line) + 1
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if number >= len(lines) - 1:  # the last line, torn
                    if repair:
                        with open(path, "r+b") as f:
                            f.truncate(good_bytes)
                    break
                raise RunError(f"{path}:{number}: not a JSON record; the history is corrupt") from None
            if record.get("index") != len(records):
                raise RunError(f"{path}:{number}: record index {record.get('index')}, expected {len(records)}")
            records.append(record)
            good_bytes += len(line) + 1
        return records

    def append(self, record: dict) -> None:
        with open(self.path / HISTORY, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # -- everything else, atomic ------------------------------------------------------------

    def write_json(self, name: str, value) -> None:
        write_atomic(self.path / name, json.dumps(value, indent=1, sort_keys=True) + "\n")

    def save_checkpoint(self, state: dict) -> None:
        write_atomic(self.path / CHECKPOINT, lambda f: torch.save(state, f), durable=True)

    def load_checkpoint(self) -> dict | None:
        path = self.path / CHECKPOINT
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RunError(f"{path}: unreadable checkpoint ({type(e).__name__}); the run cannot resume") from None
