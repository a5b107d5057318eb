"""The search under torchrun (SPEC 5, Scale-out): gloo on CPU, two processes.

Each test starts real worker processes with torch's own launcher (`python -m
torch.distributed.run`, the `torchrun` command), on the loopback rendezvous of
`--standalone`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genomec.search.rundir import HISTORY, RunDirectory
from test_search import toy_settings, without_timing, write_corpus

HERE = Path(__file__).resolve().parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _env(tmp_path) -> dict:
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def _search(processes: int, config_file: Path, out: Path, *extra) -> list[str]:
    return [*TORCHRUN, f"--nproc-per-node={processes}", *extra, "-m", "genomec", "search", str(config_file),
            "--out", str(out), "--no-progress", "--json"]


@pytest.fixture
def config_file(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    path = tmp_path / "search.json"
    path.write_text(json.dumps(toy_settings(corpus, evaluations=8, steps=3)))
    return path


def test_write_back_averages_each_element_over_the_ranks_that_trained_it(tmp_path):
    """Rank 0's child has a kernel of 3 taps, rank 1's of 5, both inside the super-net's 7;
    rank 0 sets its trained values to 1, rank 1 to 3 (hand computation: the 3 centre taps
    average to 2, the two taps only rank 1 trained become 3, the outer two keep theirs)."""
    result = tmp_path / "result.pt"
    done = subprocess.run([*TORCHRUN, "--nproc-per-node=2", str(HERE / "distributed_write_back.py"), str(result)],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    import torch

    found = torch.load(result, weights_only=True)
    before, after = found["before"], found["after"]
    assert torch.all(after[..., 2:5] == 2.0)
    assert torch.all(after[..., 1] == 3.0) and torch.all(after[..., 5] == 3.0)
    assert torch.equal(after[..., [0, 6]], before[..., [0, 6]])
    # a parameter only rank 1's child has (its v projection) takes rank 1's value alone
    assert torch.all(found["v_after"] == 3.0)
    # a parameter neither child trained is unchanged
    assert torch.equal(found["untouched_after"], found["untouched_before"])


def test_two_process_search_finishes_and_repeats_its_history(tmp_path, config_file):
    env = _env(tmp_path)
    runs = []
    for name in ("first", "second"):
        done = subprocess.run(_search(2, config_file, tmp_path / name), env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["evaluations"] == 8 and summary["processes"] == 2
        runs.append(RunDirectory(tmp_path / name).read_history())
    assert without_timing(runs[0]) == without_timing(runs[1])
    assert [r["index"] for r in runs[0]] == list(range(8))
    # a run started with 2 processes is not continued by 1
    single = subprocess.run([sys.executable, "-m", "genomec", "search", str(config_file), "--out", str(tmp_path / "first"),
                             "--evaluations", "10", "--no-progress"], env=env, capture_output=True, text=True, timeout=200)
    assert single.returncode == 2 and "processes" in single.stderr


def test_a_worker_killed_mid_generation_is_restarted_and_nothing_finished_is_lost(tmp_path, config_file):
    env = _env(tmp_path)
    reference = subprocess.run(_search(2, config_file, tmp_path / "whole"), env=env, capture_output=True, text=True, timeout=400)
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "killed"
    launcher = subprocess.Popen(_search(2, config_file, out, "--max-restarts=1"), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    history = out / HISTORY
    deadline = time.time() + 300
    while time.time() < deadline and not (history.exists() and history.read_text().count("\n") >= 4):
        time.sleep(0.05)
    workers = _workers_of(launcher.pid)
    assert workers, "torchrun started no workers"
    os.kill(workers[-1], signal.SIGKILL)  # the rank-1 worker, mid-run
    try:
        stdout, stderr = launcher.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        for pid in _workers_of(launcher.pid):  # workers run in sessions of their own
            os.kill(pid, signal.SIGKILL)
        os.killpg(launcher.pid, signal.SIGKILL)
        stdout, stderr = launcher.communicate()
        pytest.fail(f"torchrun did not finish after the kill; its output:\n{stderr[-6000:]}")
    assert launcher.returncode == 0, stderr[-3000:]
    assert "resuming" in stderr
    assert without_timing(RunDirectory(out).read_history()) == without_timing(RunDirectory(tmp_path / "whole").read_history())


def _workers_of(pid: int) -> list[int]:
    """The worker processes torchrun started (its children running genomec)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and "genomec" in cmdline:
            children.append(int(entry.name))
    return sorted(children)
