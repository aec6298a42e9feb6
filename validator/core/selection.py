"""Which uids a step visits and evaluates: the live validator's pool and pending rules (v1.0.16).

Pure: no I/O and no clock. The wall clock, the block, the random priority fractions and the
model download (a `visit` callback) are parameters, so a step can be replayed exactly.
Uids are the keys; the loop maps uid <-> hotkey and builds each uid's `Commit`.

Per competition a uid is in the `pool` (kept from the last step, priority 100) or `pending`
(waiting to be evaluated, with a priority). A chain update visits uids in three rounds (top
miners 80, new commitments 40 + r, a wall-clock slice of revisits 20 + r); a successful visit
puts the uid into its competition's pending list and takes it out of every other competition.
A step evaluates the pool and the best pending uids, then keeps the next pool the win rule
chose (`winrule.competition_step`).

Deliberate differences from the live validator (tests/data/live-compat/README.md section 5):
- A pool or pending uid whose commitment changed is visited (downloaded) in the new-commitment
  round; one whose commitment is gone leaves every competition. Live only refreshes its
  metadata, so its new model is never downloaded and it fails evaluation until it leaves the
  pool (README case S08).
- Ties in win rate at the pool cut keep the evaluation order (a stable sort, in
  `winrule.competition_step`); live's numpy sort reorders them on AVX-512 machines.
- Every competition of the config gets a state before the visits (live creates it at the
  first step, so a visit before that places nobody), and a competition no longer in the
  config is dropped (live keeps its uids "active", so they are never visited again).
"""
from __future__ import annotations

import enum
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Mapping, Protocol, Sequence

import constants
from validator.core.visits import ValidatorView, revisit_slice, top_miners


class SelectionError(ValueError):
    """A selection input or a saved selection state is malformed (the message says which)."""


class VisitResult(enum.Enum):
    OK = "ok"  # the model is on disk and verified: the uid joins its competition
    RETRY = "retry"  # transient failure: the commitment counts as new again at the next update
    FAILED = "failed"  # permanent for this commitment: not tried again until it changes


@dataclass(frozen=True)
class Commit:
    """A uid's commitment as the selection sees it.

    `key` names the commitment (the loop uses "<hotkey>/<commitment text>"): it changes when
    the miner recommits or the uid's hotkey changes, and it is what a discard marks."""

    key: str
    competition: str
    block: int | None = None


@dataclass
class CompetitionState:
    pool: list[int] = field(default_factory=list)
    pending: dict[int, float] = field(default_factory=dict)  # uid -> priority
    weights: dict[int, float] = field(default_factory=dict)  # uid -> weight of the last step (live uids_weight)

    def copy(self) -> "CompetitionState":
        return CompetitionState(list(self.pool), dict(self.pending), dict(self.weights))


@dataclass
class SelectionState:
    """What the selection keeps between steps (persist it with `to_json` / `from_json`)."""

    competitions: dict[str, CompetitionState] = field(default_factory=dict)
    # what the validator holds per uid (live hk_metadata): the commitment the step evaluates
    held: dict[int, Commit | None] = field(default_factory=dict)
    uid_last_retried_ts: dict[int, float] = field(default_factory=dict)  # wall clock of each uid's last visit
    force_eval_until_uid_last: int | None = None  # end of the last revisit slice; None: none since start
    discarded: set[str] = field(default_factory=set)  # Commit keys never visited again (unless top miner)

    def copy(self) -> "SelectionState":
        return SelectionState({c: s.copy() for c, s in self.competitions.items()}, dict(self.held),
                              dict(self.uid_last_retried_ts), self.force_eval_until_uid_last, set(self.discarded))

    def active_uids(self) -> set[int]:
        """Uids in any competition's pool or pending list."""
        out: set[int] = set()
        for cs in self.competitions.values():
            out.update(cs.pool)
            out.update(cs.pending)
        return out

    def to_json(self) -> dict:
        return {
            "competitions": {c: {"pool": list(s.pool), "pending": {str(u): p for u, p in s.pending.items()},
                                 "weights": {str(u): w for u, w in s.weights.items()}}
                             for c, s in self.competitions.items()},
            "held": {str(u): None if c is None else {"key": c.key, "competition": c.competition, "block": c.block}
                     for u, c in self.held.items()},
            "uid_last_retried_ts": {str(u): t for u, t in self.uid_last_retried_ts.items()},
            "force_eval_until_uid_last": self.force_eval_until_uid_last,
            "discarded": sorted(self.discarded),
        }

    @classmethod
    def from_json(cls, data: Any) -> "SelectionState":
        """The state `to_json` wrote; raises SelectionError naming the first bad field."""
        if not isinstance(data, dict):
            raise SelectionError(f"selection state: expected a JSON object, got {type(data).__name__}")
        comps = {}
        for c, s in _field(data, "competitions", dict, {}).items():
            if not isinstance(s, dict):
                raise SelectionError(f"selection state: competitions[{c!r}]: expected an object")
            pool = _field(s, "pool", list, [], f"competitions[{c!r}].")
            comps[c] = CompetitionState(
                [_uid(u, f"competitions[{c!r}].pool") for u in pool],
                {_uid(u, f"competitions[{c!r}].pending"): _number(p, f"competitions[{c!r}].pending[{u}]")
                 for u, p in _field(s, "pending", dict, {}, f"competitions[{c!r}].").items()},
                {_uid(u, f"competitions[{c!r}].weights"): _number(w, f"competitions[{c!r}].weights[{u}]")
                 for u, w in _field(s, "weights", dict, {}, f"competitions[{c!r}].").items()})
        held: dict[int, Commit | None] = {}
        for u, c in _field(data, "held", dict, {}).items():
            uid = _uid(u, "held")
            if c is None:
                held[uid] = None
            elif (isinstance(c, dict) and isinstance(c.get("key"), str) and isinstance(c.get("competition"), str)
                  and (c.get("block") is None or _is_int(c.get("block")))):
                held[uid] = Commit(c["key"], c["competition"], c.get("block"))
            else:
                raise SelectionError(f"selection state: held[{u}]: expected null or {{key, competition, block}}")
        last = data.get("force_eval_until_uid_last")
        if last is not None and not (_is_int(last) and 0 <= last < constants.SUBNET_UIDS):
            raise SelectionError(f"selection state: force_eval_until_uid_last: expected null or 0..255, got {last!r}")
        discarded = _field(data, "discarded", list, [])
        if not all(isinstance(k, str) for k in discarded):
            raise SelectionError("selection state: discarded: expected a list of strings")
        return cls(comps, held,
                   {_uid(u, "uid_last_retried_ts"): _number(t, f"uid_last_retried_ts[{u}]")
                    for u, t in _field(data, "uid_last_retried_ts", dict, {}).items()},
                   last, set(discarded))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field(d: dict, name: str, typ: type, default: Any, where: str = "") -> Any:
    v = d.get(name, default)
    if not isinstance(v, typ):
        raise SelectionError(f"selection state: {where}{name}: expected {typ.__name__}, got {type(v).__name__}")
    return v


def _uid(v: Any, where: str) -> int:
    # JSON object keys are strings; live reloads them as strings and then never finds them again
    if isinstance(v, str) and v.isdigit():
        v = int(v)
    if not _is_int(v) or v < 0:
        raise SelectionError(f"selection state: {where}: {v!r} is not a uid")
    return v


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SelectionError(f"selection state: {where}: expected a finite number, got {v!r}")
    return v


# --- the chain update ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VisitRound:
    prio: float
    uids: list[int]  # the uids the round considers, in visit order
    retry_interval: float  # an unchanged commitment is visited again when its last visit is older (0: never)


@dataclass
class ChainUpdate:
    state: SelectionState
    top_miners: list[int]
    rounds: list[VisitRound]
    visited: list[int]  # uids whose model `visit` was asked for, in order
    synced: list[int]  # of those, the ones that succeeded


Fractions = Mapping[int, float] | Callable[[int], float]


def _fraction(fractions: Fractions, uid: int) -> float:
    if callable(fractions):
        r = fractions(uid)
    else:
        if uid not in fractions:
            raise SelectionError(f"random fractions: none given for uid {uid}")
        r = fractions[uid]
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
        raise SelectionError(f"random fractions: uid {uid}: expected a number in [0, 1), got {r!r}")
    return float(r)


def place(state: SelectionState, uid: int, commit: Commit | None, prio: float) -> None:
    """Put `uid` into its commitment's competition's pending list (unless it is already in that
    pool or pending) and take it out of every other competition; no commitment: out of all."""
    for cname, cs in state.competitions.items():
        if commit is not None and cname == commit.competition:
            if uid not in cs.pool and uid not in cs.pending:
                cs.pending[uid] = prio
        else:
            if uid in cs.pool:
                cs.pool.remove(uid)
            cs.pending.pop(uid, None)


def update_chain(state: SelectionState, *, competitions: Iterable[str], chain: Mapping[int, Commit],
                 n_uids: int, validators: Iterable[ValidatorView], wall_clock: float,
                 visit: Callable[[int, Commit], VisitResult], fractions: Fractions,
                 should_stop: Callable[[], bool] | None = None,
                 hotkey_changed: Iterable[int] = ()) -> ChainUpdate:
    """One chain update: which uids are visited, and where the successful ones go.

    `chain`: uid -> its commitment now (parsed, deduplicated, known competitions only); `n_uids`:
    the metagraph size; `visit(uid, commit)` downloads and verifies the model (the hub);
    `fractions`: the random fraction r per uid added to its visit priority; `should_stop`: when
    it answers True (the download budget is spent) the current round ends. `hotkey_changed`:
    uids whose hotkey changed since the last update (their last visit time is forgotten).
    Returns a new state; `state` is not changed."""
    st = state.copy()
    names = list(competitions)
    st.competitions = {c: st.competitions.get(c) or CompetitionState() for c in names}
    for uid in hotkey_changed:
        st.uid_last_retried_ts.pop(uid, None)

    tops = top_miners(validators)
    top_set = set(tops)
    # A discarded commitment counts as none, unless its uid became a top miner: then it is forgiven.
    for uid in tops:
        c = chain.get(uid)
        if c is not None:
            st.discarded.discard(c.key)
    current = {uid: c for uid, c in chain.items() if 0 <= uid < n_uids and c.key not in st.discarded}

    active = st.active_uids()
    # Live refreshes an active uid's commitment without a visit; a changed one is visited instead
    # (see the module docstring), so its new model is downloaded before it is evaluated.
    changed_active = {uid for uid in active if uid < n_uids and current.get(uid) != st.held.get(uid)}

    rounds: list[VisitRound] = []
    visited: list[int] = []
    synced: list[int] = []

    def run_round(uids: list[int], prio: float, retry_interval: float) -> None:
        rounds.append(VisitRound(prio, list(uids), retry_interval))
        for uid in uids:
            if should_stop is not None and should_stop():
                return
            if uid >= n_uids:
                continue
            commit = current.get(uid)
            if commit is None:
                st.held[uid] = None
                place(st, uid, None, prio)
                continue
            if commit == st.held.get(uid):
                if retry_interval == 0:
                    continue
                if wall_clock - st.uid_last_retried_ts.get(uid, 0) < retry_interval:
                    continue
            st.uid_last_retried_ts[uid] = wall_clock
            visited.append(uid)
            result = visit(uid, commit)
            if not isinstance(result, VisitResult):
                raise SelectionError(f"visit(uid {uid}) returned {result!r}, expected a VisitResult")
            if result is VisitResult.RETRY:
                continue
            st.held[uid] = commit
            if result is VisitResult.OK:
                place(st, uid, commit, prio + _fraction(fractions, uid))
                synced.append(uid)

    new_top = sorted(top_set - active)
    run_round(new_top, constants.PRIO_TOP_MODEL, constants.TOP_MODEL_RETRY_INTERVAL_S)
    others = sorted((set(range(n_uids)) - active - set(new_top)) | changed_active)
    run_round(others, constants.PRIO_NEW_MODEL, 0)
    revisit, until = revisit_slice(wall_clock, st.force_eval_until_uid_last)
    run_round(revisit, constants.PRIO_REVISIT, constants.REVISIT_RETRY_INTERVAL_S)
    st.force_eval_until_uid_last = until
    return ChainUpdate(st, tops, rounds, visited, synced)


def inject_benchmark(state: SelectionState, benchmark: Mapping[int, str]) -> tuple[SelectionState, list[int]]:
    """benchmark.json entries (uid -> competition) join pending with priority 60 unless already in
    that pool or pending. Returns the new state and the uids whose competition has no state
    (ignored)."""
    st = state.copy()
    unknown = []
    for uid, cname in benchmark.items():
        cs = st.competitions.get(cname)
        if cs is None:
            unknown.append(uid)
            continue
        if uid not in cs.pool and uid not in cs.pending:
            cs.pending[uid] = constants.PRIO_INJECT
    return st, unknown


# --- the step -----------------------------------------------------------------------------------


@dataclass
class StepPick:
    evaluated: list[int]  # the uids the step evaluates, in this order
    state: CompetitionState  # after the pick: pool = evaluated, pending without the picked


def priority_order(cs: CompetitionState) -> list[int]:
    """Pool members (priority 100) and pending uids by (priority, uid), descending."""
    prio = dict(cs.pending)
    prio.update({uid: constants.PRIO_POOL for uid in cs.pool})
    return [uid for _, uid in sorted(((p, uid) for uid, p in prio.items()), reverse=True)]


def pick_step(cs: CompetitionState, *, pool_size: int, pend_size: int,
              has_index: Collection[int] | None = None) -> StepPick:
    """The uids one competition evaluates this step.

    The first `pool_size + pend_size` of `priority_order` (with the eval cache on, `has_index`:
    only uids whose model has a loss-matrix index). Picked pending uids leave pending; the
    others leave it when their priority is below 40."""
    if pool_size < 1 or pend_size < 0:
        raise SelectionError(f"pool_size/pend_size: expected >= 1 / >= 0, got {pool_size}/{pend_size}")
    order = priority_order(cs)
    if has_index is not None:
        order = [uid for uid in order if uid in has_index]
    evaluated = order[:pool_size + pend_size]
    picked = set(evaluated) - set(cs.pool)
    pending = {uid: p for uid, p in cs.pending.items()
               if uid not in picked and p >= constants.PRIO_NEW_MODEL}
    return StepPick(evaluated, CompetitionState(list(evaluated), pending, dict(cs.weights)))


class StepOutcome(Protocol):
    """What `finish_step` reads of `winrule.competition_step`'s result (indices into evaluated)."""

    weights: Any  # sequence aligned with evaluated, or None: nothing computed, keep the previous weights
    next_pool: Sequence[int]
    discarded: Sequence[int]


@dataclass
class StepFinish:
    state: SelectionState
    weights: dict[int, float]  # the competition's weights after the step (uid -> weight)
    next_pool: list[int]
    discarded: list[int]  # uids whose commitment was marked discarded


def finish_step(state: SelectionState, competition: str, pick: StepPick, outcome: StepOutcome | None, *,
                injected: Collection[int] = ()) -> StepFinish:
    """Apply a competition's step result: the next pool, its weights and the discards.

    `outcome` None (nothing was evaluated) clears the competition's weights, as live does.
    Weights None (every model failed, or no complete sample group) keep the previous weights.
    A discarded uid's held commitment joins `discarded` (benchmark uids, `injected`, never
    do). Returns a new state."""
    st = state.copy()
    cs = pick.state.copy()
    st.competitions[competition] = cs
    ev = pick.evaluated
    if outcome is None or not ev:
        cs.pool, cs.weights = list(ev), {}
        return StepFinish(st, {}, list(ev), [])
    for i in list(outcome.next_pool) + list(outcome.discarded):
        if isinstance(i, bool) or not hasattr(i, "__index__") or not 0 <= operator.index(i) < len(ev):
            raise SelectionError(f"step outcome of {competition}: index {i!r} outside the {len(ev)} evaluated")
    if outcome.weights is not None:
        if len(outcome.weights) != len(ev):
            raise SelectionError(f"step outcome of {competition}: {len(outcome.weights)} weights "
                                 f"for {len(ev)} evaluated uids")
        cs.weights = {uid: float(w) for uid, w in zip(ev, outcome.weights)}
    cs.pool = [ev[operator.index(i)] for i in outcome.next_pool]
    discarded = []
    for i in outcome.discarded:
        uid = ev[operator.index(i)]
        commit = st.held.get(uid)
        if uid in injected or commit is None:
            continue
        st.discarded.add(commit.key)
        discarded.append(uid)
    return StepFinish(st, dict(cs.weights), list(cs.pool), discarded)
