"""Crash safety: SIGKILL at many points of the save path and of a real validator step;
after each restart the state loads, equals the last completed save (or the one in flight)
and no cached loss that was saved is lost."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.reliability import tally
from tests.reliability.stepkill import POINTS
from tests.reliability.world import VAL, publish_and_commit, run_args, tree_snapshot
from validator.adapters.chain.local import LocalChain
from validator.adapters.evalcache import EvalCache
from validator.step.state import ValidatorState
from validator.adapters.files import KILL_AT_ENV

ROOT = Path(__file__).resolve().parents[2]


def test_real_step_killed_at_every_named_point_loses_nothing():
    # a RAM disk when there is one: the driver runs ~80 steps, each with several fsynced writes
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None) as tmp:
        out = subprocess.run([sys.executable, "-m", "tests.reliability.stepkill", tmp], cwd=ROOT,
                             capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    for name, kills in summary["kills"].items():
        tally.crash_point(name, kills)
    for run, n in summary["lost"].items():
        tally.lost(n)
    assert summary["unreached"] == [] and set(summary["kills"]) == set(POINTS), summary["unreached"]
    assert len(summary["lost"]) == 2 * len(POINTS)  # every kill was restarted and compared
    assert summary["reference_entries"] > 400  # losses of 4 models x 30 samples, pools, EMA, records
    assert summary["examples"] == {}, summary["examples"]  # entries that differ from the never-killed run
    assert summary["control_differences"] > 0  # a restart that did lose its EMA is seen


def test_sigkill_at_save_points_and_random_moments_loses_nothing(tmp_path):
    # the save path alone, in a synthetic loop (its kills are not crash points of the step path)
    hook_kills, delay_kills = 60, 15
    out = subprocess.run([sys.executable, "-m", "tests.reliability.saver", str(tmp_path), str(hook_kills),
                          str(delay_kills), "29"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    tally.lost(sum("LOST" in v for v in summary["violations"]))
    assert summary["violations"] == []
    assert summary["kills"]["hook"] >= 50 and summary["kills"]["delay"] >= delay_kills // 2, summary["kills"]
    # every point of one save cycle (cache, state, report: 5 points per write) was hit
    assert set(range(1, 16)) <= set(summary["hook_points"])
    assert summary["stale_temps"] > 0  # kills did land mid-write ...
    assert not list(tmp_path.rglob("*.tmp"))  # ... and a restart cleared their temporaries
    assert summary["final"]["cache_models"] > 10  # the state kept moving between the kills
    state = ValidatorState.load(tmp_path / "validator_state.json")
    assert state.step == summary["final"]["state_step"]


def _saved_losses(state_dir: Path) -> dict[tuple[str, str], float]:
    files = [p for p in (state_dir / "evalcache").glob("*.json") if not p.name.endswith(".samples.json")]
    out = {}
    for f in files:
        cache = EvalCache.load(f)
        for key in cache.losses.models():
            for sid in cache.losses.cached(key):
                out[(key, sid)] = cache.losses.get(key, sid)
    return out


def _check_kept(before: dict, after: dict) -> None:
    lost = [k for k, v in before.items() if k not in after or not (after[k] == v or (v != v and after[k] != after[k]))]
    tally.lost(len(lost))
    assert not lost, f"{len(lost)} saved losses lost after the restart, e.g. {lost[:3]}"


@pytest.fixture
def chain_with_three(real_field, tmp_path):
    chain = LocalChain(tmp_path / "chain.sqlite", hotkey=VAL)
    chain.register(VAL, stake=1000.0, validator=True)
    for i, (name, model) in enumerate(real_field["models"].items()):
        publish_and_commit(real_field, chain, f"5Miner{i}", model, f"team/kill-{name}")
        chain.advance(20)
    chain.advance(150)
    return chain


def test_real_validator_killed_mid_step_resumes(real_field, real_hub, chain_with_three, tmp_path):
    state_dir = tmp_path / "state"
    args = [sys.executable, "-m", "validator.cli.main"] + run_args(real_field, state_dir, tmp_path / "chain.sqlite",
                                                             real_hub.endpoint, "--steps", "1", "--dont-set-weights")
    outside = tree_snapshot(tmp_path, exclude=(state_dir,))
    saved: dict = {}

    # 1) killed by the save-path hook: mid samples-file write, mid first/second model's cache save
    for n, where in ((3, "samples file"), (8, "first model's cache"), (13, "second model's cache")):
        proc = subprocess.run(args + ["--no-isolation"], cwd=ROOT, env={**os.environ, KILL_AT_ENV: str(n)},
                              capture_output=True, timeout=180)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        tally.crash_point(f"cli run, real models: mid-write of the {where} (save point {n})")
        ValidatorState.load(state_dir / "validator_state.json")  # loads
        now = _saved_losses(state_dir)
        _check_kept(saved, now)
        saved = now
    assert saved, "nothing was saved before the kills"

    # 2) killed while a scoring worker runs: the worker must not outlive it
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    deadline = time.monotonic() + 120
    while worker is None and time.monotonic() < deadline and proc.poll() is None:
        for c in psutil.Process(proc.pid).children(recursive=True):
            try:  # a spawned worker, or one forked from the fork server (its child)
                parent = c.parent()
                if ("validator.scoring.worker" in " ".join(c.cmdline())
                        or (parent is not None and "validator.scoring.forkserver" in " ".join(parent.cmdline()))):
                    worker = c
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert worker is not None, "no scoring worker was seen"
    gone, alive = psutil.wait_procs([worker], timeout=20)
    assert not alive, "the scoring worker outlived the killed validator"
    tally.crash_point("cli run, real models: mid-scoring (isolated worker running)")
    now = _saved_losses(state_dir)
    _check_kept(saved, now)
    saved = now

    # 3) a clean restart completes the step, keeps every saved loss, and scores every model
    proc = subprocess.run(args + ["--no-isolation"], cwd=ROOT, capture_output=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = _saved_losses(state_dir)
    _check_kept(saved, final)
    report = json.loads((state_dir / "last_step.json").read_text())
    statuses = [m["status"] for m in report["competitions"]["c00"]["models"]]
    assert len(statuses) == 3 and set(statuses) <= {"scored", "cached"}, statuses
    assert not list(state_dir.rglob(".*.tmp")), "temporary files of the killed saves were left behind"
    assert tree_snapshot(tmp_path, exclude=(state_dir,)).keys() - {"chain.sqlite-wal", "chain.sqlite-shm"} \
        <= outside.keys() | {"chain.sqlite-wal", "chain.sqlite-shm"}
