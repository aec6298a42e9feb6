"""selection.json (tests/data/live-compat/README.md section 5): which uids a step visits and
evaluates, replayed through validator.core.selection and winrule.competition_step.

Each case is a chain update, the benchmark injection and one step per competition. The visit
callback stands in for the hub: every visit succeeds, and a uid's model is on disk when the
validator held that commitment before (`known`) or synced it in this update.

Live breaks (deliberate differences, asserted as OUR behaviour):
- S08: a pool member that recommits is visited and downloaded (live never downloads it, so it
  fails evaluation in its old competition and never joins the new one).
"""
import json
from pathlib import Path

import pytest

import constants
from validator.core import winrule
from validator.core import selection as S
from validator.core import visits as V

DATA = Path(__file__).parent / "data" / "live-compat" / "selection.json"
CASES = json.loads(DATA.read_text())["cases"]
BY_ID = {c["id"]: c for c in CASES}


def case_ids():
    return [c["id"] for c in CASES]


def commit_of(entry: dict) -> S.Commit:
    return S.Commit(key=f"{entry['label']}:{entry['commit']}", competition=entry["competition"], block=entry["block"])


def uid_map(d: dict) -> dict:
    return {int(k): v for k, v in d.items()}


def initial_state(case: dict) -> S.SelectionState:
    chain = uid_map(case["chain"])
    held = {uid: commit_of(chain[uid] if v == "same" else v) for uid, v in uid_map(case["known"]).items()}
    comps = {c: S.CompetitionState(list(s["uids_pool"]), {int(u): p for u, p in s["uids_pending"].items()})
             for c, s in case["cstate"].items()}
    return S.SelectionState(comps, held, {int(u): t for u, t in case["uid_last_retried_ts"].items()},
                            case["force_eval_until_uid_last"])


def validators(case: dict) -> list[V.ValidatorView]:
    return [V.ValidatorView(v["uid"], v["stake"], v.get("idle_blocks", 0), uid_map(v["weights"]))
            for v in case["validators"]]


def run_update(case: dict) -> tuple[S.ChainUpdate, set]:
    """The chain update of a case, and the (uid, commit) pairs on disk after it."""
    state = initial_state(case)
    on_disk = {(uid, c) for uid, c in state.held.items()}
    rf = uid_map(case["random_fraction"])

    def visit(uid: int, commit: S.Commit) -> S.VisitResult:
        on_disk.add((uid, commit))
        return S.VisitResult.OK

    up = S.update_chain(state, competitions=list(case["competitions"]),
                        chain={u: commit_of(e) for u, e in uid_map(case["chain"]).items()},
                        n_uids=case["n_uids"], validators=validators(case), wall_clock=case["wall_clock"],
                        visit=visit, fractions=lambda uid: rf.get(uid, 0.5))
    return up, on_disk


def run_update_with(case, state, vals):
    rf = uid_map(case["random_fraction"])
    return S.update_chain(state, competitions=list(case["competitions"]),
                          chain={u: commit_of(e) for u, e in uid_map(case["chain"]).items()},
                          n_uids=case["n_uids"], validators=vals, wall_clock=case["wall_clock"],
                          visit=lambda uid, c: S.VisitResult.OK, fractions=lambda uid: rf.get(uid, 0.5))


def pools(state: S.SelectionState) -> dict:
    return {c: {"uids_pool": sorted(s.pool), "uids_pending": s.pending} for c, s in state.competitions.items()}


def golden_pools(d: dict) -> dict:
    return {c: {"uids_pool": sorted(s["uids_pool"]), "uids_pending": pytest.approx(uid_map(s["uids_pending"]))}
            for c, s in d.items()}


# --- our behaviour where live breaks -----------------------------------------------------------

S08 = BY_ID["S08"]["expected"]
OURS = {
    "S08": {
        # uid 5 recommitted c00 -> c01: visited with 40 + r (r = 0.6), downloaded, moved to c01
        "visit_calls": [S08["visit_calls"][0],
                        {**S08["visit_calls"][1], "uids": sorted(S08["visit_calls"][1]["uids"] + [5])},
                        S08["visit_calls"][2]],
        "synced_uids": [5],
        "after_update_chain": {"c00": {"uids_pool": [1, 2, 3, 4, 6], "uids_pending": {}},
                               "c01": {"uids_pool": [10, 11], "uids_pending": {"5": 40.6}}},
        "pending_after_inject": {"c00": {}, "c01": {"5": 40.6}},
        # c00 is live's step without the failed uid 5 (it had no loss row and weight 0 there);
        # c01 evaluates uid 5's new model: its weights come from reference_weights below
        "steps": {"c00": {"evaluated": [6, 4, 3, 2, 1], "n_evaluated": 5,
                          "uids_weight": {u: w for u, w in S08["steps"]["c00"]["uids_weight"].items() if u != "5"},
                          "next_pool": [6, 4, 3, 2, 1], "pending_after": {}},
                  "c01": {"evaluated": [11, 10, 5], "n_evaluated": 3, "uids_weight": None,
                          "next_pool": [11, 10, 5], "pending_after": {}}},
        "discarded_uids": [],
    },
}


def expected(case: dict, name: str):
    return OURS.get(case["id"], {}).get(name, case["expected"][name])


def reference_weights(losses: dict, blocks: dict, now: int, comp: dict) -> dict:
    """The win rule of README section 3 written plainly (group_samples 1, finite losses)."""
    order = sorted(losses, key=lambda u: blocks[u])  # ascending block; the uids here have distinct blocks
    factor = {u: 1 - comp["advantage_initial"] * comp["advantage_decay"] ** ((now - blocks[u]) / 361)
              for u in order}
    wins = {u: 0 for u in order}
    n = len(next(iter(losses.values())))
    for k in range(n):
        holder, held = order[0], losses[order[0]][k] * factor[order[0]]
        for u in order[1:]:
            if losses[u][k] < held:
                holder, held = u, losses[u][k] * factor[u]
        wins[holder] += 1
    raw = {u: (wins[u] / n) ** comp["weight_skew_factor"] for u in order}
    total = sum(raw.values())
    return {u: r / total for u, r in raw.items()}


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cid", case_ids())
def test_top_miners(cid):
    case = BY_ID[cid]
    assert V.top_miners(validators(case)) == sorted(case["expected"]["top_miners"])


@pytest.mark.parametrize("cid", case_ids())
def test_chain_update_visits(cid):
    case = BY_ID[cid]
    up, _ = run_update(case)
    assert up.top_miners == sorted(case["expected"]["top_miners"])
    got = [{"prio": r.prio, "uids": r.uids, "retry_interval": r.retry_interval} for r in up.rounds]
    assert got == expected(case, "visit_calls")
    assert up.synced == expected(case, "synced_uids")
    assert up.state.force_eval_until_uid_last == case["expected"]["force_eval_until_uid_last_after"]


@pytest.mark.parametrize("cid", case_ids())
def test_chain_update_pools(cid):
    case = BY_ID[cid]
    up, _ = run_update(case)
    assert pools(up.state) == golden_pools(expected(case, "after_update_chain"))


@pytest.mark.parametrize("cid", case_ids())
def test_benchmark_injection(cid):
    case = BY_ID[cid]
    up, _ = run_update(case)
    st, unknown = S.inject_benchmark(up.state, {int(u): b["competition"] for u, b in case["benchmark"].items()})
    assert unknown == []
    want = expected(case, "pending_after_inject")
    assert {c: s.pending for c, s in st.competitions.items()} == {c: pytest.approx(uid_map(p)) for c, p in want.items()}


def run_steps(case: dict) -> tuple[dict, S.SelectionState]:
    """Every competition's step after the update and the injection, as the loop runs it."""
    up, on_disk = run_update(case)
    bench = uid_map(case["benchmark"])
    state, _ = S.inject_benchmark(up.state, {u: b["competition"] for u, b in bench.items()})
    losses = uid_map(case["losses"])
    cache = None if case["eval_cache_uids"] is None else set(case["eval_cache_uids"])
    out = {}
    for cname, comp in case["competitions"].items():
        pick = S.pick_step(state.competitions[cname], pool_size=comp["pool_size"],
                           pend_size=comp.get("pend_size", constants.PEND_SIZE), has_index=cache)
        rows, blocks = [], []
        for uid in pick.evaluated:
            held = state.held.get(uid)
            if uid in bench:
                ok, block = True, bench[uid].get("block", 1 << 31)
            else:
                ok, block = held is not None and (uid, held) in on_disk, None if held is None else held.block
            rows.append(losses[uid] if ok else None)
            blocks.append(block if ok else None)
        outcome = None
        if pick.evaluated:
            outcome = winrule.competition_step(
                rows, blocks, case["block_now"], group_samples=comp["group_samples"],
                advantage_initial=comp["advantage_initial"], advantage_decay=comp["advantage_decay"],
                weight_skew_factor=comp["weight_skew_factor"], pool_size=comp["pool_size"],
                injected=[uid in bench for uid in pick.evaluated])
        fin = S.finish_step(state, cname, pick, outcome, injected=set(bench))
        state = fin.state
        out[cname] = {"evaluated": pick.evaluated, "n_evaluated": sum(r is not None for r in rows),
                      "uids_weight": fin.weights, "next_pool": fin.next_pool,
                      "pending_after": state.competitions[cname].pending, "discarded": fin.discarded,
                      "rows": dict(zip(pick.evaluated, rows)), "blocks": dict(zip(pick.evaluated, blocks))}
    return out, state


@pytest.mark.parametrize("cid", case_ids())
def test_step(cid):
    case = BY_ID[cid]
    steps, state = run_steps(case)
    want_steps = expected(case, "steps")
    assert list(steps) == list(want_steps)
    for cname, want in want_steps.items():
        got = steps[cname]
        assert got["evaluated"] == want["evaluated"], cname
        assert got["n_evaluated"] == want["n_evaluated"], cname
        uw = want["uids_weight"]
        if uw is None:  # our behaviour on new losses: the win rule written out independently
            ok = {u: r for u, r in got["rows"].items() if r is not None}
            uw = reference_weights(ok, got["blocks"], case["block_now"], case["competitions"][cname])
        else:
            uw = uid_map(uw)
        assert got["uids_weight"] == pytest.approx(uw, rel=1e-12, abs=1e-15), cname
        # order of next_pool is not meaningful (README section 3)
        assert sorted(got["next_pool"]) == sorted(want["next_pool"]), cname
        assert got["pending_after"] == pytest.approx(uid_map(want["pending_after"])), cname
    got_discarded = sorted(u for s in steps.values() for u in s["discarded"])
    assert got_discarded == sorted(expected(case, "discarded_uids"))
    # a discarded commitment is never visited again
    keys = {state.held[u].key for u in got_discarded}
    assert keys <= state.discarded


def test_live_break_s08_is_the_recommit_case():
    """The S08 override is what the case describes: uid 5 recommits from c00 to c01."""
    case = BY_ID["S08"]
    assert case["known"]["5"]["competition"] == "c00" and case["chain"]["5"]["competition"] == "c01"
    assert 5 in case["cstate"]["c00"]["uids_pool"]
    # live: not downloaded, fails in c00; ours: downloaded, evaluated in c01
    assert case["expected"]["synced_uids"] == [] and case["expected"]["steps"]["c00"]["n_evaluated"] == 5


def test_a_discarded_commitment_is_not_visited_until_it_becomes_a_top_miner():
    case = BY_ID["S02"]  # uids 30-33 are new commitments
    state = initial_state(case)
    key30 = commit_of(case["chain"]["30"]).key
    state.discarded.add(key30)
    up = run_update_with(case, state, validators(case))
    assert 30 not in up.synced and 30 not in up.state.competitions["c00"].pending
    assert up.state.held[30] is None
    top = [V.ValidatorView(60, 1.0, 0, {30: 1.0})]
    up = run_update_with(case, state, top)
    assert up.top_miners == [30] and 30 in up.synced and key30 not in up.state.discarded
    assert up.state.competitions["c00"].pending[30] == pytest.approx(constants.PRIO_TOP_MODEL + 0.1)


def test_update_chain_does_not_change_its_input():
    case = BY_ID["S02"]
    state = initial_state(case)
    before = json.dumps(state.to_json(), sort_keys=True)
    run_update_with(case, state, [])
    assert json.dumps(state.to_json(), sort_keys=True) == before
