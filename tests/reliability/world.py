"""Fields for the reliability campaign.

FakeField: a real LocalChain (frozen clock), model dirs with fake content hashes, a scorer
with synthetic losses and a text source, all in-process and torch-free, so a validator
step takes milliseconds and faults can be injected per hotkey.

real_field(): tiny random-init Llama models, a tokenizer, a local corpus and
competitions.json, published to a git mirror served by olah (LocalHub) on 127.0.0.1: what
`coldint-validator run` needs, built once per session (tests/test_loop_e2e.py's approach,
without the training).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tests.reliability import tally
from validator.core.chain import ChainError, Commitment
from validator.adapters.chain.local import LocalChain
from validator.core.competitions import parse_competitions
from validator.core.identity import ModelId, dir_hash, secure_hash
from validator.core.scores import ScoreResult
from validator.step.validator import Settings, Validator

VAL = "5Val"


def b64sha(s: str) -> str:
    return base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()


def fake_commitment(name: str, comp: str = "c00") -> str:
    return ModelId("team", name, hashlib.sha1(name.encode()).hexdigest(), b64sha(name), comp).to_commitment()


def tree_snapshot(root: Path, exclude: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file under root, minus the excluded dirs."""
    out = {}
    excl = [str(Path(e).resolve()) for e in exclude]
    for cur, dirs, files in os.walk(root):
        if any(str(Path(cur).resolve()).startswith(e) for e in excl):
            dirs[:] = []
            continue
        for f in files:
            p = Path(cur) / f
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


class FaultyChain:
    """Wraps a Chain: sync / set_weights / block_hash raise ChainError while told to, extra
    (hostile) commitments are mixed into sync, and every set_weights call is recorded."""

    def __init__(self, inner: LocalChain):
        self.inner, self.netuid = inner, inner.netuid
        self.fail_sync = self.fail_set = self.fail_block_hash = 0  # number of calls to fail
        self.extra: dict[str, Commitment] = {}
        self.sets: list[tuple[list[int], list[float], int]] = []

    @property
    def block(self) -> int:
        return self.inner.block

    def _maybe_fail(self, attr: str, what: str) -> None:
        if getattr(self, attr) > 0:
            setattr(self, attr, getattr(self, attr) - 1)
            tally.fault_fired(f"chain {what}")  # each armed call is one fault, counted when it is made
            raise ChainError(f"{what}: connection refused (injected)")

    def sync(self):
        self._maybe_fail("fail_sync", "sync")
        meta, commits = self.inner.sync()
        return meta, {**commits, **self.extra}

    def block_hash(self, block: int) -> str:
        self._maybe_fail("fail_block_hash", "block_hash")
        return self.inner.block_hash(block)

    def commit(self, signer, text):
        return self.inner.commit(signer, text)

    def set_weights(self, uids, weights, version_key):
        self.sets.append((list(uids), list(weights), version_key))
        self._maybe_fail("fail_set", "set_weights")
        self.inner.set_weights(uids, weights, version_key)


class Source:
    name = "texts"

    def __init__(self, n: int = 30):
        self.n = n
        self.fail: Exception | None = None
        self.garbage = False

    def sample(self, seed: int, n: int):
        if self.fail is not None:
            tally.fault_fired("text source raises", self.fail)
            raise self.fail
        rows: list[Any] = [(f"s{i}", "word " * (5 + i % 7)) for i in range(min(n, self.n))]
        if self.garbage:
            bad = [(None, "x"), ("g1", None), ("g2", ""), ("g3", 7), "not a pair", ("a", "b", "c"), (5, "t")]
            for row in bad:  # handed to the sample db, which must drop them
                tally.fault_fired("text source garbage row", repr(row))
            rows += bad
        return rows


class Clock:
    """The validator's wall clock, moved by the test: chain updates come every
    constants.CHAIN_UPDATE_INTERVAL_S of it, weight sets at most every MIN_WEIGHT_SET_INTERVAL_S."""

    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


COMPS = parse_competitions({"c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 10**6,
                                    "model_size": 10**8, "dataset": "texts", "pend_size": 50}})


class FakeField:
    def __init__(self, root: Path, qualities: dict[str, float]):
        self.root = root
        self.qualities = dict(qualities)
        inner = LocalChain(root / "chain.sqlite", hotkey=VAL, clock=lambda: 0.0)
        inner.register(VAL, stake=100.0, validator=True)
        for hk in qualities:
            inner.register(hk)
            inner.commit(hk, fake_commitment(hk))
            inner.advance(10)
            (root / "models" / hk).mkdir(parents=True)
        inner.advance(200)
        self.local = inner
        self.chain = FaultyChain(inner)
        self.source = Source()
        self.fetch_faults: dict[str, Exception] = {}
        self.score_faults: dict[str, str] = {}
        self.calls: list[tuple[str, int]] = []
        self.clock = Clock()

    def uid(self, hk: str) -> int:
        return self.local.sync()[0].uid_of(hk)

    def fetch(self, mid, hotkey, comp, deadline=None):
        if hotkey in self.fetch_faults:
            tally.fault_fired("fetch raises", self.fetch_faults[hotkey])  # one armed exception, once
            raise self.fetch_faults[hotkey]
        return self.root / "models" / hotkey, b64sha("content-" + hotkey)

    def score(self, path: Path, samples, comp, step_samples=None) -> dict:
        self.calls.append((path.name, len(samples)))
        if path.name in self.score_faults:
            tally.fault_fired(f"scoring {self.score_faults[path.name].split(':')[0]}")  # this call failed
            return ScoreResult({}, {}, self.score_faults[path.name], 0.0)
        q = self.qualities[path.name]
        return ScoreResult({sid: q * len(t) + (hash((path.name, sid)) % 7) * 1e-3 for sid, t in samples},
                           {sid: len(t.split()) for sid, t in samples}, None, 0.0)

    def validator(self, state_dir: Path | None = None, benchmark_path: Path | None = None, **settings) -> Validator:
        from validator.adapters.candidates import BenchmarkCandidates

        s = Settings(state_dir=state_dir or self.root / "state", eval_samples=30, step_interval_s=0, **settings)
        return Validator(self.chain, lambda: COMPS, self.fetch, self.score, lambda name, **kw: self.source, s,
                         hotkey=VAL, retry_after=lambda reason, attempts: 0.0, clock=self.clock,
                         candidates=BenchmarkCandidates(benchmark_path))


def rows(report: dict, comp: str = "c00") -> dict[str, dict]:
    return {m["label"]: m for m in report["competitions"][comp]["models"]}


def assert_weights_sane(chain: FaultyChain, version_key: int) -> None:
    """Every set_weights call the validator made: finite, non-negative, positive sum, version key."""
    import math

    for uids, weights, vk in chain.sets:
        assert uids and len(uids) == len(weights) == len(set(uids))
        assert all(math.isfinite(w) and w >= 0 for w in weights) and sum(weights) > 0, weights
        assert vk == version_key


# --- the real field ------------------------------------------------------------------------------

TINY = dict(hidden=16, layers=1)


def build_real_field(root: Path) -> dict:
    from tests.factories import make_model, make_texts, make_tokenizer

    texts = make_texts(40, seed=3, min_words=5, max_words=30)
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok = root / "tok"
    make_tokenizer(tok, make_texts(200, seed=4), vocab_size=300)
    models = {f"good{i}": make_model(root / f"good{i}", vocab_size=300, seed=i, **TINY) for i in range(3)}
    comp = {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 1_000_000, "model_size": 5_000_000,
            "dataset": str(corpus), "tokenizer": str(tok), "pend_size": 20, "max_sequence_len": 256}
    comps_path = root / "competitions.json"
    comps_path.write_text(json.dumps({"c00": comp}))
    mirror = root / "mirror"
    (mirror / "models").mkdir(parents=True)
    return {"root": root, "corpus": corpus, "tok": tok, "models": models, "comps": comps_path, "mirror": mirror,
            "competition": parse_competitions({"c00": comp})["c00"]}


def publish_and_commit(field: dict, chain: LocalChain, hotkey: str, model_dir: Path, repo: str,
                       competition: str = "c00", hash_of=dir_hash) -> str:
    """Publish model_dir to the mirror as `repo` and commit it on chain as `hotkey`; the commitment.
    `hash_of` the dir: every file (dir_hash) by default; hub.model_dir_hash hashes what validators hash."""
    from validator.adapters.hub import publish_local

    ns, name = repo.split("/")
    sha = publish_local(model_dir, field["mirror"], ns, name)
    text = ModelId(ns, name, sha, secure_hash(hash_of(model_dir), hotkey), competition).to_commitment()
    chain.register(hotkey)
    chain.commit(hotkey, text)
    return text


def run_args(field: dict, state_dir: Path, chain_db: Path, endpoint: str, *extra: str) -> list[str]:
    return ["run", "--network", "local", "--chain-db", str(chain_db), "--hotkey", VAL,
            "--competitions", str(field["comps"]), "--state-dir", str(state_dir), "--hf-endpoint", endpoint,
            "--device", "cpu", "--eval-samples", "24", "--step-interval", "0", "--log-level", "WARNING", *extra]
