import json
import math

import numpy as np
import pytest
from matplotlib.image import imread

import constants
from benchmark import report as rep
from benchmark import stats as S


def numbers_equal(a, b):
    """Every number of ``a`` (Python/numpy; nan/inf written as null) is in ``b`` unchanged."""
    if isinstance(a, dict):
        return set(map(str, a)) == set(b) and all(numbers_equal(v, b[str(k)]) for k, v in a.items())
    if isinstance(a, (list, tuple, np.ndarray)):
        return len(a) == len(b) and all(numbers_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (float, np.floating)) and not math.isfinite(a):
        return b is None
    if isinstance(a, (np.generic,)):
        a = a.item()
    return a == b and type(a) is type(b) or (isinstance(a, float) and a == b)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    s = 400
    tokens = rng.integers(50, 500, size=(3, s)).astype(float)
    tokens[:] = tokens[0]  # same samples -> same token counts for every model
    per_tok = rng.normal(3.0, 0.3, size=s)
    losses = np.vstack([per_tok * 1.01, per_tok, per_tok * 1.02]) * tokens
    losses[2, :5] = np.inf  # failed samples
    cand = (per_tok * 0.98 * tokens[0])[None, :]
    return losses, tokens, cand


@pytest.fixture(scope="module")
def section(data):
    losses, tokens, cand = data
    return rep.competition_section(
        ["coldint/model-a", "coldint/a-rather-long-model-name-that-goes-on-and-on-v17", "my-local-run"],
        [3, 12, None], [9_000, 8_000, float("nan")], losses, tokens, 10_000, S.WinParams(),
        candidate_labels=["candidate-x"], candidate_losses=cand, candidate_tokens=tokens[:1], n_boot=1_000)


@pytest.fixture(scope="module")
def written(section, tmp_path_factory):
    report = {"title": "bench", "block": 10_000, "competitions": {"c00": section, "c 01/x": {
        "models": [{"label": "solo", "uid": 1, "block": 5, "mean_loss_per_token": 2.5,
                    "losses_per_token": [2.4, 2.6, float("inf")], "win_rate": 1.0, "win_rate_ci": [1.0, 1.0],
                    "weight": 1.0}],
        "win_matrix": [[float("nan")]]}}}
    out = tmp_path_factory.mktemp("report")
    return report, out, rep.write_report(report, out)


def test_section_numbers(section, data):
    losses, tokens, cand = data
    labels = [m["label"] for m in section["models"]]
    assert labels[-1] == "candidate-x" and section["models"][-1]["kind"] == "candidate"
    assert section["models"][2]["kind"] == "benchmark" and section["models"][2]["weight"] == 0
    # model b (uid 12) is the field leader; the candidate beats it clearly
    assert section["candidates"][0]["leader_uid"] == 12
    assert section["candidates"][0]["head_to_head"]["low"] > 0.5
    assert section["models"][1]["mean_loss_per_token"] == pytest.approx(losses[1].sum() / tokens[1].sum())
    assert section["models"][2]["mean_loss_per_token"] == pytest.approx(losses[2, 5:].sum() / tokens[2, 5:].sum())
    assert section["models"][3]["mean_loss_per_token"] == pytest.approx(cand.sum() / tokens[0].sum())
    np.testing.assert_allclose(section["models"][0]["losses_per_token"], losses[0] / tokens[0])
    assert section["models"][2]["losses_per_token"][:5] == [None] * 5
    vals = np.array(section["win_matrix"]["values"], dtype=float)
    assert vals.shape == (4, 4) and np.isnan(np.diag(vals)).all()


def test_files_exist_and_json_round_trips(written):
    report, out, files = written
    assert {"json", "html", "c00/losses", "c00/win_rates", "c00/win_matrix", "c 01/x/losses"} <= set(files)
    for p in files.values():
        assert p.exists() and p.stat().st_size > 0 and p.parent == out
    loaded = json.loads(files["json"].read_text())
    assert numbers_equal(report, loaded)
    # non-finite values are strict-JSON null
    assert loaded["competitions"]["c 01/x"]["models"][0]["losses_per_token"][2] is None


def test_html_is_self_contained_with_labels_and_numbers(written):
    report, out, files = written
    text = files["html"].read_text()
    assert text.count("data:image/png;base64,") == sum(p.suffix == ".png" for p in files.values()) == 6
    assert "src=\"http" not in text and "<script" not in text
    for m in report["competitions"]["c00"]["models"]:
        assert m["label"] in text
    assert "against uid 12" in text  # the candidate's verdict
    assert f"{report['competitions']['c00']['models'][1]['win_rate']:.3f}" in text


def test_pngs_are_valid_images(written):
    _, _, files = written
    for key, p in files.items():
        if p.suffix == ".png":
            img = imread(p)
            assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, key
            assert img.std() > 0.01  # not blank


def test_bad_report_is_named(tmp_path):
    with pytest.raises(rep.ReportError, match="competitions"):
        rep.write_report({}, tmp_path)
    with pytest.raises(rep.ReportError, match="'c00' model #1"):
        rep.write_report({"competitions": {"c00": {"models": [{"label": "a"}, {"uid": 3}]}}}, tmp_path)
    with pytest.raises(rep.ReportError, match="'c00'.*shape"):
        rep.write_report({"competitions": {"c00": {"models": [{"label": "a"}], "win_matrix": [[0, 1]]}}}, tmp_path)


# --- `leaderboard --out`: the win matrix of a saved step ------------------------------------------


def _step(comp: dict) -> dict:
    return {"step": 3, "block": 1000, "competitions": {"c00": comp}}


def _model(label: str, uid) -> dict:
    return {"label": label, "uid": uid, "block": 10, "win_rate": 0.5, "weight": 0.5, "loss_per_token": 2.0,
            "losses_per_token": [2.0]}


@pytest.mark.parametrize("group_samples,columns", [(3, 2), (None, 7)])  # None: saved before it was recorded
def test_step_win_matrix_is_a_fraction_of_groups(group_samples, columns):
    from validator.leaderboard import step_to_report

    # 7 samples in groups of 3 -> 2 groups: live drops the sample that does not fill a third
    comp = {"n_samples": 7, "models": [_model("a", 1), _model("b", 2)],
            "win_matrix": {"labels": ["a", "b"], "adv_wins": [[0, 2], [1, 0]]}}
    if group_samples is not None:
        comp["group_samples"] = group_samples
    values = step_to_report(_step(comp))["competitions"]["c00"]["win_matrix"]["values"]
    assert values == [[None, pytest.approx(2 / columns)], [pytest.approx(1 / columns), None]]


def test_step_win_matrix_uses_the_recorded_number_of_groups():
    from validator.leaderboard import step_to_report

    comp = {"n_samples": 9, "group_samples": 3, "n_groups": 4, "models": [_model("a", 1), _model("b", 2)],
            "win_matrix": {"labels": ["a", "b"], "adv_wins": [[0, 3], [1, 0]]}}
    values = step_to_report(_step(comp))["competitions"]["c00"]["win_matrix"]["values"]
    assert values == [[None, pytest.approx(3 / 4)], [pytest.approx(1 / 4), None]]


def _groups_won_by_hand(losses: np.ndarray, adv: np.ndarray, order: list[int], group: int, seed: int) -> np.ndarray:
    """[i, j]: groups i wins against j alone, counted one group at a time, grouped as live groups
    (README section 3): the last `s % group` samples dropped, the rest in the documented seeded
    shuffle (ranking.grouping_permutation: numpy's default_rng(seed).permutation), runs of `group`
    summed. No sample here is inf for every model and none is NaN."""
    m, s = losses.shape
    used = s - s % group
    perm = np.random.default_rng(seed).permutation(used)
    groups = [perm[k:k + group] for k in range(0, used, group)]
    won = np.zeros((m, m), dtype=int)
    for g in groups:
        tot = losses[:, g].sum(axis=1)
        for i in range(m):
            for j in range(m):
                if i == j or not math.isfinite(tot[i]):
                    continue
                if order.index(i) < order.index(j):  # i holds the group; j must beat it by i's advantage
                    won[i, j] += not (math.isfinite(tot[j]) and tot[j] < tot[i] * (1 - adv[i]))
                else:
                    won[i, j] += not math.isfinite(tot[j]) or tot[i] < tot[j] * (1 - adv[j])
    return won


def test_step_from_rank_competition_with_groups_matches_a_count_by_hand():
    from validator import loop
    from validator.competitions import parse_competitions
    from validator.evalcache import EvalCache
    from validator.leaderboard import step_to_report

    group, seed, block_now = 5, 11, 2000
    comp = parse_competitions({"c00": {"reward": 1.0, "model_types": ["X"], "parameters": 1, "model_size": 1,
                                       "dataset": "d", "group_samples": group}})["c00"]
    rng = np.random.default_rng(3)
    base = rng.uniform(40, 60, size=23)  # 23 samples -> 4 groups of 5; the last 3 samples are dropped
    losses = np.vstack([base * rng.uniform(0.95, 1.05, size=23) for _ in range(3)])
    losses[2, 4] = np.inf  # a failed sample: its group can not be won by that model
    sids = [f"s{k}" for k in range(23)]
    cache = EvalCache()
    entries = [loop.Entry(key=f"uid:{u}", competition="c00", label=f"m{u}", uid=u, block=b, content_hash=f"h{u}",
                          status="scored") for u, b in ((0, 1500), (1, 1900))]
    entries.append(loop.Entry(key="bench:x", competition="c00", label="x", content_hash="hx", status="scored"))
    for e, row in zip(entries, losses):
        cache.losses.put(e.cache_key, dict(zip(sids, row)), dict.fromkeys(sids, 10))
    table = json.loads(json.dumps(loop.rank_competition(entries, comp, cache, sids, block_now, seed)))

    adv = [comp.advantage_initial * comp.advantage_decay ** ((block_now - b) / constants.BLOCKS_PER_EPOCH)
           for b in (1500, 1900)] + [0.0]
    won = _groups_won_by_hand(losses, np.array(adv), [0, 1, 2], group, seed)
    n_groups = 4
    labels = table["win_matrix"]["labels"]
    idx = [["m0", "m1", "x"].index(lab) for lab in labels]
    expected = [[None if a == b else won[idx[a], idx[b]] / n_groups for b in range(3)] for a in range(3)]
    assert 0 < np.nanmax(np.array(expected, dtype=float)) and any(
        0 < v < 1 for row in expected for v in row if v is not None)  # not a trivial all-or-nothing matrix
    assert table["group_samples"] == group and table["n_groups"] == n_groups  # what the wins count
    assert table["win_matrix"]["adv_wins"] == [[0 if a == b else int(won[idx[a], idx[b]]) for b in range(3)]
                                               for a in range(3)]
    values = step_to_report(_step(table))["competitions"]["c00"]["win_matrix"]["values"]
    assert values == [[None if v is None else pytest.approx(v) for v in row] for row in expected]


# --- the consensus section (a validator step's "consensus") ----------------------------------------


def _consensus_step(tmp_path):
    """A real consensus report on a LocalChain, inside a saved step."""
    from validator.chain.local import LocalChain
    from validator.consensus import consensus_report

    chain = LocalChain(tmp_path / "chain.sqlite", clock=lambda: 0.0)
    for i in range(10):
        chain.register(f"miner{i}")
    for hk, stake in (("a", 100.0), ("b", 50.0), ("us", 10.0)):
        chain.register(hk, stake=stake, validator=True)
    chain.set_weights_as("a", [5, 6, 7], [0.6, 0.3, 0.1], 1)
    chain.set_weights_as("b", [5, 6, 7], [0.5, 0.4, 0.1], 1)
    step = {"step": 4, "block": 0, "weights": {"8": 0.6, "6": 0.3, "7": 0.1}, "competitions": {"c00": {
        "n_samples": 1, "models": [dict(_model("m8", 8), status="scored"),
                                   dict(_model("m5", 5), status="failed", reason="hash: mismatch", win_rate=None)]}}}
    step["consensus"] = consensus_report(chain.sync()[0], step["weights"], step, hotkey="us")
    return step


def test_consensus_plot_and_tables_in_the_html(tmp_path):
    from validator.leaderboard import step_to_report

    step = _consensus_step(tmp_path)
    files = rep.write_report(step_to_report(step), tmp_path / "out")
    assert "consensus" in files
    img = imread(files["consensus"])
    assert img.ndim == 3 and img.shape[1] > 300 and img.std() > 0.01
    text = files["html"].read_text()
    assert text.count("data:image/png;base64,") == sum(p.suffix == ".png" for p in files.values())
    assert "Consensus with the other validators" in text
    assert f"estimated validator trust {step['consensus']['vtrust']:.3f}" in text
    assert "<td>5</td><td>miner5</td>" in text and "failed: hash: mismatch" in text
    assert "<td>8</td><td>miner8</td>" in text and "+0.6000" in text
    loaded = json.loads(files["json"].read_text())
    assert loaded["consensus"]["vtrust"] == pytest.approx(step["consensus"]["vtrust"])


def test_consensus_plot_bars_are_the_report_numbers(tmp_path):
    cons = _consensus_step(tmp_path)["consensus"]
    # the bars: every uid with our weight or consensus above the display threshold, in uid order
    assert rep._consensus_uids(cons) == [5, 6, 7, 8]
    path = rep.plot_consensus(cons, tmp_path / "c.png")
    assert path.exists() and imread(path).std() > 0.01
    # no weights at all: still a (labelled) plot, never a crash
    assert rep.plot_consensus({"ours": {}, "consensus_weights": {}}, tmp_path / "empty.png").exists()


def test_bad_consensus_section_is_named(tmp_path):
    comps = {"c00": {"models": []}}
    with pytest.raises(rep.ReportError, match="'consensus' must be an object"):
        rep.write_report({"competitions": comps, "consensus": {"ours": []}}, tmp_path)
    with pytest.raises(rep.ReportError, match="consensus 'ours'.*'x'"):
        rep.write_report({"competitions": comps, "consensus": {"ours": {"x": 1.0}, "consensus_weights": {}}}, tmp_path)
