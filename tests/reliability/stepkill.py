"""Kill a real validator step at every named point, restart, and measure what was lost.

`python -m tests.reliability.stepkill DIR` prints one JSON summary. A light world (a real
LocalChain, fake model dirs, a deterministic scorer, no torch) drives real `Validator.step`s
over STEPS steps; a new model is committed before step 2. Each port of the step calls
`point(name)`: sync, fetch <hk>, samples, score <hk>, saved <hk> (after that model's cache
save), rank (the hall-of-fame reload), weights (after the chain took them), cleanup, save,
state mid-write (validator_state.json written, not yet renamed: the state.py hook) and report.

A control run whose saved EMA is wiped before the restart shows the comparison sees a loss.
First a never-killed run of the STEPS steps gives the reference state. Then for every point,
at step 1 and at step 2: a forked child runs the steps and SIGKILLs itself when it reaches
the point; a second child restarts on the same state dir (as the validator does) and runs the
remaining steps; the parent compares the saved state (cached losses and samples, selection,
EMA, fetch records, weight-set times) entry by entry with the reference and counts differences.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
from pathlib import Path

import constants
import validator.adapters.files as state_mod
from tests.reliability.world import COMPS, VAL, Clock, Source, fake_commitment
from validator.adapters.chain.local import LocalChain, local_block_hash
from validator.adapters.evalcache import EvalCache
from validator.core.scores import ScoreResult
from validator.step.state import ValidatorState
from validator.step.validator import Settings, Validator

STEPS = 3
FIRST = {"m1": 1.0, "m2": 0.9, "m3": 0.95}
LATE = {"m4": 0.85}  # committed between step 1 and step 2
QUALITY = {**FIRST, **LATE}
DT = max(constants.CHAIN_UPDATE_INTERVAL_S, constants.MIN_WEIGHT_SET_INTERVAL_S) + 1  # every step updates, sets
BLOCKS_PER_STEP = 150
HEAD0 = 200  # the head at step k is HEAD0 + BLOCKS_PER_STEP * k
LATE_BLOCK = 400  # between the heads of step 1 (350) and step 2 (500)

POINTS = (["sync"] + [f"fetch {hk}" for hk in QUALITY] + ["samples"] + [f"score {hk}" for hk in QUALITY]
          + [f"saved {hk}" for hk in QUALITY] + ["rank", "weights", "cleanup", "save", "state mid-write", "report"])

_armed: tuple[str, int] | None = None  # (point, first step it may fire at)
_step = 0
_pipe: int | None = None


def point(name: str) -> None:
    """A named point of the step path: SIGKILL this process here when it is armed."""
    if _armed is None or name != _armed[0] or _step < _armed[1]:
        return
    os.write(_pipe, f"{name}\t{_step}\n".encode())
    if name == "state mid-write":  # die inside the real atomic write: after the data, before the rename
        os.environ[state_mod.KILL_AT_ENV] = str(state_mod._crash_points_passed + 2)
        return
    os.kill(os.getpid(), signal.SIGKILL)


def build(root: Path) -> None:
    """The chain (all commitments, the late one at LATE_BLOCK) and the model dirs."""
    chain = LocalChain(root / "chain.sqlite", hotkey=VAL, clock=lambda: 0.0)
    chain.register(VAL, stake=100.0, validator=True)
    for hk in QUALITY:
        chain.register(hk)
        (root / "models" / hk).mkdir(parents=True)
    for hk in FIRST:
        chain.advance(10)
        chain.commit(hk, fake_commitment(hk))
    chain.advance(LATE_BLOCK - chain.block)
    for hk in LATE:
        chain.commit(hk, fake_commitment(hk))


class StepChain:
    """The LocalChain seen at the head of the current step: commitments up to that block;
    weights are recorded, not written, so a redone step sees the chain the first try saw."""

    def __init__(self, root: Path):
        self.inner = LocalChain(root / "chain.sqlite", hotkey=VAL, clock=lambda: 0.0)
        self.netuid = self.inner.netuid
        self.sets: list = []

    @property
    def block(self) -> int:
        return HEAD0 + BLOCKS_PER_STEP * _step

    def sync(self):
        meta, commits = self.inner.sync()
        head = self.block
        point("sync")
        return (dataclasses.replace(meta, block=head, block_hash=local_block_hash(self.netuid, head)),
                {hk: c for hk, c in commits.items() if c.block <= head})

    def block_hash(self, block: int) -> str:
        return local_block_hash(self.netuid, block)

    def set_weights(self, uids, weights, version_key) -> None:
        self.sets.append((list(uids), list(weights)))
        point("weights")


class PointSource(Source):
    def sample(self, seed: int, n: int):
        rows = super().sample(seed, n)
        point("samples")
        return rows


class HallOfFame:
    hall_of_fame: dict = {}

    def maybe_reload(self) -> None:
        point("rank")  # called in the rank stage, after scoring, before the weights

    def problems(self) -> list[str]:
        return []


class Progress:
    def __init__(self, hotkey_of_label):
        self.hotkey_of_label = hotkey_of_label

    def start(self, stage: str, n: int) -> None:
        return None

    def advance(self, stage: str, msg: str) -> None:
        if stage == "score":  # after the model's losses were saved
            point(f"saved {self.hotkey_of_label(msg.split(':')[0])}")


def _loss(name: str, sid: str, text: str) -> float:
    noise = int.from_bytes(hashlib.sha256(f"{name}/{sid}".encode()).digest()[:4], "big") / 2**32
    return QUALITY[name] * len(text) + noise * 1e-3


def validator(root: Path) -> Validator:
    chain = StepChain(root)

    def fetch(mid, hotkey, comp, deadline=None):
        out = root / "models" / hotkey, base64.b64encode(hashlib.sha256(f"content-{hotkey}".encode()).digest()).decode()
        point(f"fetch {hotkey}")
        return out

    def score(path: Path, samples, comp, step_samples=None) -> ScoreResult:
        out = ScoreResult({sid: _loss(path.name, sid, t) for sid, t in samples},
                          {sid: len(t.split()) for sid, t in samples}, None, 0.0)
        point(f"score {path.name}")
        return out

    def cleanup(held) -> None:
        point("cleanup")

    s = Settings(state_dir=root / "state", eval_samples=30, step_interval_s=0)
    v = Validator(chain, lambda: COMPS, fetch, score, lambda name, **kw: PointSource(), s, hotkey=VAL,
                  retry_after=lambda reason, attempts: 0.0, cleanup=cleanup, hall_of_fame=HallOfFame(),
                  clock=Clock(1_000_000.0))
    meta = chain.inner.sync()[0]
    v.progress = Progress(lambda label: meta.hotkey_of(int(label.split()[1])))
    return v


def _patch_saves() -> None:
    save, state_save, finish = Validator.save, ValidatorState.save, Validator._finish

    def v_save(self) -> None:
        point("save")
        save(self)

    def s_save(self, path) -> None:
        point("state mid-write")
        state_save(self, path)

    def v_finish(self, report, timer):
        point("report")
        return finish(self, report, timer)

    Validator.save, ValidatorState.save, Validator._finish = v_save, s_save, v_finish


def run_steps(root: Path) -> None:
    """Run the steps still to do (from the saved step on), as a restarted validator does."""
    global _step
    v = validator(root)
    while v.state.step < STEPS:
        _step = v.state.step + 1
        v.clock.t = 1_000_000.0 + DT * _step
        v.step()


def snapshot(root: Path) -> dict:
    """The saved state as flat {entry: value}: what a restart would work from."""
    st = root / "state"
    out: dict = {}
    s = ValidatorState.load(st / "validator_state.json")

    def flat(prefix: str, v) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                flat(f"{prefix}/{k}", x)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                flat(f"{prefix}/{i}", x)
        else:  # a path in the state is the run's own dir: compared relative to it
            out[prefix] = v.replace(str(root), "<root>") if isinstance(v, str) else v

    for name in ("step", "last_weights_block", "last_weights_at", "ema", "selection", "records", "uid_hotkeys"):
        flat(name, getattr(s, name))
    for f in sorted((st / "evalcache").glob("*.json")):
        if f.name.endswith(".samples.json"):
            continue
        cache = EvalCache.load(f)
        for key in cache.losses.models():
            for sid in cache.losses.cached(key):
                out[f"loss/{key}/{sid}"] = cache.losses.get(key, sid)
        for sid in cache.db.ids():
            out[f"sample/{sid}"] = True
        flat("first_seen", json.loads(json.dumps(cache.first_seen.__dict__, default=str)))
    return out


def differences(a: dict, b: dict) -> list[str]:
    def same(x, y) -> bool:
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))

    return sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not same(a[k], b[k]))


def fork_run(root: Path, armed: tuple[str, int] | None) -> tuple[bool, list[str]]:
    """Run the remaining steps in a child; (killed by SIGKILL, the kill lines it wrote)."""
    global _armed, _pipe
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _armed, _pipe = armed, w
        code = 0
        try:
            _patch_saves()
            run_steps(root)
        except BaseException as e:  # noqa: BLE001 - reported to the parent by the exit code
            os.write(w, f"error\t{type(e).__name__}: {e}\n".encode())
            code = 3
        os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        lines = [x for x in f.read().split("\n") if x]
    errors = [x for x in lines if x.startswith("error\t")]
    if errors or (os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0):
        raise RuntimeError(f"step run failed: {errors or status}")
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, lines


def main() -> None:
    base = Path(sys.argv[1])
    ref = base / "reference"
    build(ref)
    fork_run(ref, None)
    reference = snapshot(ref)
    summary: dict = {"kills": {}, "unreached": [], "lost": {}, "examples": {}, "reference_entries": len(reference)}
    for i, name in enumerate(POINTS):
        for from_step in (1, 2):
            root = base / f"run{i}-{from_step}"
            build(root)
            killed, lines = fork_run(root, (name, from_step))
            if not killed:
                summary["unreached"].append(f"{name} from step {from_step}")
                continue
            summary["kills"][name] = summary["kills"].get(name, 0) + 1
            fork_run(root, None)  # the restart
            diff = differences(reference, snapshot(root))
            run = f"{name} (armed from step {from_step}), killed at step {lines[-1].split(chr(9))[1]}"
            summary["lost"][run] = len(diff)
            if diff:
                summary["examples"][run] = diff[:5]
    # the control: a restart that really lost something (the saved EMA) must show differences
    root = base / "control"
    build(root)
    fork_run(root, ("report", 2))
    saved = json.loads((root / "state" / "validator_state.json").read_text())
    (root / "state" / "validator_state.json").write_text(json.dumps({**saved, "ema": []}))
    fork_run(root, None)
    summary["control_differences"] = len(differences(reference, snapshot(root)))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
