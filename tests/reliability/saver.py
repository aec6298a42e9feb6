"""Crash-safety driver: `python -m tests.reliability.saver DIR HOOK_KILLS DELAY_KILLS SEED`.

A light process (no torch) that forks one child per crash point. Each child restarts the
way the validator does (removes stale temporaries, loads validator_state.json and the eval
cache), then saves an evolving state through the real save path -- per-model eval cache
save, ValidatorState.save, last_step.json -- reporting "begin/done <file> <step>" on a pipe
before and after each save. It is SIGKILLed either by the state.py test hook
(COLDINT_TEST_KILL_AT=N: at the N-th point of the save path) or by this driver after a
random delay. After each death the driver loads the state like a restarted validator and
checks: it loads; each file equals the last completed save or the one in flight; no loss
that was ever saved is missing. Prints a JSON summary.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from validator.adapters.evalcache import EvalCache
from validator.step.state import ValidatorState
from validator.core.selection import Commit, CompetitionState, SelectionState
from validator.adapters.files import KILL_AT_ENV, atomic_write_json, read_json, remove_stale_temps

SAMPLES = [(f"s{i}", f"text number {i} " * (1 + i % 5)) for i in range(24)]
FILES = ("cache", "state", "report")


def loss(k: int, sid: str) -> float:
    if k % 7 == 3 and sid == "s5":
        return float("inf")  # a failed sample: inf must survive the round trip too
    return 1.0 + k / 97.0 + int(sid[1:]) / 1013.0


def expected_state(k: int) -> ValidatorState:
    if k == 0:
        return ValidatorState()
    return ValidatorState(
        step=k, ema=[(j + 1) / (k + 1) for j in range(k % 9 + 1)], last_weights_block=100 * k if k % 2 else None,
        last_weights_at=60.0 * k if k % 2 else None,
        selection=SelectionState(
            competitions={"c00": CompetitionState(pool=list(range(max(1, k - 3), k + 1)), pending={k + 1: 40.5},
                                                  weights={k: 1.0})},
            held={j: Commit(f"hk{j}/commit{j}", "c00", j) for j in range(1, k + 1)},
            uid_last_retried_ts={k: float(k)}, force_eval_until_uid_last=k % 256,
            discarded={f"hk{j}/old" for j in range(k % 4)}).to_json(),
        uid_hotkeys={str(j): f"hk{j}" for j in range(1, k + 1)},
        records={f"hk{k}": {"commitment": f"commit{k}", "reason": "network" if k % 3 == 0 else None,
                            "detail": "", "attempts": k % 3, "retry_at": float(k), "path": None, "content_hash": None}})


def paths(d: Path) -> dict[str, Path]:
    return {"cache": d / "evalcache" / "texts.json", "state": d / "validator_state.json", "report": d / "last_step.json"}


def restart(d: Path) -> tuple[ValidatorState, EvalCache, int]:
    """What Validator.__init__ / cache_for do on start."""
    removed = len(remove_stale_temps(d)) + len(remove_stale_temps(d / "evalcache"))
    p = paths(d)
    state = ValidatorState.load(p["state"])
    cache = EvalCache.load(p["cache"])
    return state, cache, removed


def child(d: Path, w: int, steps: int) -> None:
    def say(msg: str) -> None:
        os.write(w, (msg + "\n").encode())

    state, cache, _ = restart(d)
    if not len(cache.db):
        cache.db.add(SAMPLES, now=0.0)
    p = paths(d)
    for k in range(state.step + 1, state.step + 1 + steps):
        cache.losses.put(f"c00:h{k}", {sid: loss(k, sid) for sid, _ in SAMPLES}, {sid: 3 for sid, _ in SAMPLES})
        cache.first_seen.observe(f"h{k}", f"hk{k}", k)
        say(f"begin cache {k}")
        cache.save(p["cache"])
        say(f"done cache {k}")
        say(f"begin state {k}")
        expected_state(k).save(p["state"])
        say(f"done state {k}")
        say(f"begin report {k}")
        atomic_write_json(p["report"], {"step": k})
        say(f"done report {k}")


def models_of(cache: EvalCache) -> set[int]:
    return {int(key.split(":h")[1]) for key in cache.losses.models()}


def verify(d: Path, msgs: list[str], done: dict[str, int], ever: dict[str, int]) -> list[str]:
    """Check the on-disk state after a death; updates `done` (last completed save per file)."""
    begun = dict(done)
    for m in msgs:
        what, name, k = m.split()
        (done if what == "done" else begun)[name] = max(int(k), (done if what == "done" else begun)[name])
    allowed = {f: {done[f], max(done[f], begun[f])} for f in FILES}
    errors = []
    try:
        state, cache, _ = restart(d)
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        return [f"state does not load after the kill: {type(e).__name__}: {e}"]
    if list(d.glob("*.bad")) or list(d.glob("evalcache/*.bad")):
        errors.append("a state file was found corrupt (a .bad copy was made)")
    if state.step not in allowed["state"] or asdict(state) != asdict(expected_state(state.step)):
        errors.append(f"validator_state.json holds step {state.step}, expected one of {sorted(allowed['state'])}")
    got = models_of(cache)
    k_cache = max(got, default=0)
    if got != set(range(1, k_cache + 1)) or k_cache not in allowed["cache"]:
        errors.append(f"eval cache holds models {sorted(got)[-3:]}, expected 1..k for k in {sorted(allowed['cache'])}")
    for k in got:
        for sid, _ in SAMPLES:
            if cache.losses.get(f"c00:h{k}", sid) != loss(k, sid):
                errors.append(f"loss of model {k} on {sid} changed")
    if set(cache.db.ids()) != {sid for sid, _ in SAMPLES} and k_cache:
        errors.append("the sample database lost samples")
    report = read_json(paths(d)["report"], {"step": 0})["step"]
    if report not in allowed["report"]:
        errors.append(f"last_step.json holds step {report}, expected one of {sorted(allowed['report'])}")
    # nothing ever saved may go missing
    if k_cache < ever["cache"]:
        errors.append(f"LOST: losses of models {k_cache + 1}..{ever['cache']} were saved and are gone")
    if state.step < ever["state"]:
        errors.append(f"LOST: state step {ever['state']} was saved, {state.step} loaded")
    for f in FILES:
        ever[f] = max(ever[f], done[f])
    # what is on disk now is what the next child starts from
    done.update({"cache": k_cache, "state": state.step, "report": report})
    return errors


def main() -> None:
    d, hook_kills, delay_kills, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    # every point of the first three save cycles once, then random ones
    points = list(range(1, 46))[:hook_kills] + [rng.randint(1, 45) for _ in range(hook_kills - 45)]
    plan = [("hook", n) for n in points] + [("delay", rng.uniform(0.0, 0.04)) for _ in range(delay_kills)]
    rng.shuffle(plan)
    done = {f: 0 for f in FILES}
    ever = {f: 0 for f in FILES}
    summary = {"kills": {"hook": 0, "delay": 0}, "not_killed": 0, "violations": [], "stale_temps": 0,
               "hook_points": sorted({n for kind, n in plan if kind == "hook"})}
    for kind, arg in plan:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the "validator" that is about to die
            os.close(r)
            if kind == "hook":
                os.environ[KILL_AT_ENV] = str(arg)
            try:
                child(d, w, steps=3 if kind == "hook" else 10_000)
            finally:
                os._exit(0)
        os.close(w)
        if kind == "delay":
            time.sleep(arg)
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(r, "rb") as f:
            msgs = f.read().decode().split("\n")
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        summary["kills"][kind] += killed
        summary["not_killed"] += not killed
        summary["stale_temps"] += len(list(d.glob(".*.tmp"))) + len(list(d.glob("evalcache/.*.tmp")))
        errors = verify(d, [m for m in msgs if m], done, ever)
        summary["violations"] += [f"{kind} {arg}: {e}" for e in errors]
    summary["final"] = {"cache_models": done["cache"], "state_step": done["state"]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
