import json
import math

import numpy as np
import pytest
from matplotlib.image import imread

from validator.core.failures import FetchError
import constants
from benchmark import report as rep
from validator.adapters import htmlreport
from validator.adapters import report_plots as plots
from validator.adapters.step_report import step_to_report
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
    return report, out, htmlreport.write_report(report, out)


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
    with pytest.raises(htmlreport.ReportError, match="competitions"):
        htmlreport.write_report({}, tmp_path)
    with pytest.raises(htmlreport.ReportError, match="'c00' model #1"):
        htmlreport.write_report({"competitions": {"c00": {"models": [{"label": "a"}, {"uid": 3}]}}}, tmp_path)
    with pytest.raises(htmlreport.ReportError, match="'c00'.*shape"):
        htmlreport.write_report({"competitions": {"c00": {"models": [{"label": "a"}], "win_matrix": [[0, 1]]}}}, tmp_path)


# --- `leaderboard --out`: the win matrix of a saved step ------------------------------------------


def _step(comp: dict) -> dict:
    return {"step": 3, "block": 1000, "competitions": {"c00": comp}}


def _model(label: str, uid) -> dict:
    return {"label": label, "uid": uid, "block": 10, "win_rate": 0.5, "weight": 0.5, "loss_per_token": 2.0,
            "losses_per_token": [2.0]}


@pytest.mark.parametrize("group_samples,columns", [(3, 2), (None, 7)])  # None: saved before it was recorded
def test_step_win_matrix_is_a_fraction_of_groups(group_samples, columns):

    # 7 samples in groups of 3 -> 2 groups: live drops the sample that does not fill a third
    comp = {"n_samples": 7, "models": [_model("a", 1), _model("b", 2)],
            "win_matrix": {"labels": ["a", "b"], "adv_wins": [[0, 2], [1, 0]]}}
    if group_samples is not None:
        comp["group_samples"] = group_samples
    values = step_to_report(_step(comp))["competitions"]["c00"]["win_matrix"]["values"]
    assert values == [[None, pytest.approx(2 / columns)], [pytest.approx(1 / columns), None]]


def test_step_win_matrix_uses_the_recorded_number_of_groups():

    comp = {"n_samples": 9, "group_samples": 3, "n_groups": 4, "models": [_model("a", 1), _model("b", 2)],
            "win_matrix": {"labels": ["a", "b"], "adv_wins": [[0, 3], [1, 0]]}}
    values = step_to_report(_step(comp))["competitions"]["c00"]["win_matrix"]["values"]
    assert values == [[None, pytest.approx(3 / 4)], [pytest.approx(1 / 4), None]]


def _groups_won_by_hand(losses: np.ndarray, adv: np.ndarray, order: list[int], group: int, seed: int) -> np.ndarray:
    """[i, j]: groups i wins against j alone, counted one group at a time, grouped as live groups
    (README section 3): the last `s % group` samples dropped, the rest in the documented seeded
    shuffle (winrule.grouping_permutation: numpy's default_rng(seed).permutation), runs of `group`
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
    from validator.core.entries import Entry
    from validator.step.rank import rank_competition
    from validator.step.report import competition_table
    from validator.core.competitions import parse_competitions
    from validator.adapters.evalcache import EvalCache

    group, seed, block_now = 5, 11, 2000
    comp = parse_competitions({"c00": {"reward": 1.0, "model_types": ["X"], "parameters": 1, "model_size": 1,
                                       "dataset": "d", "group_samples": group}})["c00"]
    rng = np.random.default_rng(3)
    base = rng.uniform(40, 60, size=23)  # 23 samples -> 4 groups of 5; the last 3 samples are dropped
    losses = np.vstack([base * rng.uniform(0.95, 1.05, size=23) for _ in range(3)])
    losses[2, 4] = np.inf  # a failed sample: its group can not be won by that model
    sids = [f"s{k}" for k in range(23)]
    cache = EvalCache()
    entries = [Entry(key=f"uid:{u}", competition="c00", label=f"m{u}", uid=u, block=b, content_hash=f"h{u}",
                          status="scored") for u, b in ((0, 1500), (1, 1900))]
    entries.append(Entry(key="bench:x", competition="c00", label="x", content_hash="hx", status="scored"))
    for e, row in zip(entries, losses):
        cache.losses.put(e.cache_key, dict(zip(sids, row)), dict.fromkeys(sids, 10))
    table = json.loads(json.dumps(competition_table(entries, rank_competition(entries, comp, cache, sids, block_now, seed))))

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
    from validator.adapters.chain.local import LocalChain
    from validator.core.consensus import consensus_report

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

    step = _consensus_step(tmp_path)
    files = htmlreport.write_report(step_to_report(step), tmp_path / "out")
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
    assert plots._consensus_uids(cons) == [5, 6, 7, 8]
    path = plots.plot_consensus(cons, tmp_path / "c.png")
    assert path.exists() and imread(path).std() > 0.01
    # no weights at all: still a (labelled) plot, never a crash
    assert plots.plot_consensus({"ours": {}, "consensus_weights": {}}, tmp_path / "empty.png").exists()


def test_bad_consensus_section_is_named(tmp_path):
    comps = {"c00": {"models": []}}
    with pytest.raises(htmlreport.ReportError, match="'consensus' must be an object"):
        htmlreport.write_report({"competitions": comps, "consensus": {"ours": []}}, tmp_path)
    with pytest.raises(htmlreport.ReportError, match="consensus 'ours'.*'x'"):
        htmlreport.write_report({"competitions": comps, "consensus": {"ours": {"x": 1.0}, "consensus_weights": {}}}, tmp_path)


# --- a validator step as HTML: every model with its state, the console's numbers, escaped -----------

HOSTILE = "<script>alert('x')</script>"


def real_steps(tmp_path) -> tuple[dict, dict]:
    """Two steps of the fake loop (tests/test_loop_stages.py): a normal one (two chain models, a
    benchmark candidate better than both, a download that fails) and one in which every download
    fails. Miner-supplied text (the hub's error about the miner's repo) carries markup, and so
    does the candidate's label."""
    from tests.test_loop_stages import _field, _validator

    steps = []
    for name, failing in (("normal", {"m3"}), ("failed", {"m1", "m2", "m3"})):
        base = tmp_path / name
        base.mkdir(parents=True)
        q = {"m1": 1.0, "m2": 0.9, "m3": 0.95}
        chain, _ = _field(base, q)
        cand = base / "cand"
        cand.mkdir()
        (cand / "config.json").write_text('{"model_type": "llama"}')  # what a published model would hold
        (cand / "model.safetensors").write_bytes(b"v1")
        q["cand"] = 0.5  # better than every chain model: the chain models' win rates over every entry drop
        bench = base / "benchmark.json"
        bench.write_text(json.dumps({"c": {"competition": "c00", "path": str(cand), "label": "<i>cand</i>"}}))
        v = _validator(base, chain, q, [], bench=bench if name == "normal" else None)
        good = v.fetch

        def fetch(mid, hotkey, comp, deadline=None, good=good, failing=failing):
            if hotkey in failing:
                raise FetchError("network", f"{hotkey}: {HOSTILE} hub said no")
            return good(mid, hotkey, comp, deadline)

        v.fetch = fetch
        v.step()
        steps.append(json.loads((base / "state" / "last_step.json").read_text()))
    return steps[0], steps[1]


class _Cells(__import__("html.parser").parser.HTMLParser):
    """Tables of an HTML page as text cells (entities decoded), and the tags seen."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.tags: set[str] = set()
        self.text: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse_html(text: str) -> _Cells:
    p = _Cells()
    p.feed(text)
    return p


def console_rows(step: dict) -> list[list[str]]:
    """The console leaderboard's body rows of competition c00, cell by cell (a wide console: no wraps)."""
    import io

    from rich.console import Console

    from validator.adapters import leaderboard as L

    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(
        L.competition_table("c00", step["competitions"]["c00"], step["weights"]))
    return [[c.strip() for c in line.split("│")[1:-1]] for line in out.getvalue().splitlines()
            if line.startswith("│")]


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    return real_steps(tmp_path_factory.mktemp("steps"))


def test_step_html_holds_the_console_leaderboard_cell_for_cell(steps, tmp_path):
    import importlib.metadata

    from validator.adapters import leaderboard as L

    normal, _ = steps
    files = htmlreport.write_report(step_to_report(normal, generated="2026-01-02T03:04:05+00:00"), tmp_path)
    page = parse_html(files["html"].read_text())
    header = [c for c, _ in L.GLOSSARY]
    table = next(t for t in page.tables if t and t[0] == header)
    assert table[1:] == console_rows(normal)  # every cell of the console is in the HTML, in its order
    by_model = {row[1]: dict(zip(header, row)) for row in table[1:]}
    assert set(by_model) == {m["label"] for m in normal["competitions"]["c00"]["models"]}  # every model
    steprows = {m["label"]: m for m in normal["competitions"]["c00"]["models"]}
    failed = next(lab for lab, m in steprows.items() if m["status"] == "failed")
    assert by_model[failed]["status"] == f"failed: {steprows[failed]['reason']}"
    assert HOSTILE in by_model[failed]["status"]
    # the chain win rate (what weights come from) and, apart, the candidate's win rate over every entry
    leader = next(lab for lab, m in steprows.items() if m.get("weight") == 1.0)
    assert steprows[leader]["win_rate"] == 0.0 and steprows[leader]["chain_win_rate"] == 1.0
    assert by_model[leader]["win rate"] == "1.000" and by_model[leader]["bench win rate"] == ""
    assert by_model["<i>cand</i>"]["win rate"] == "n/a" and by_model["<i>cand</i>"]["bench win rate"] == "1.000"
    # the EMA column is the weights table's number for the uid: the vector set on the chain
    weights = next(t for t in page.tables if t and t[0] == ["uid", "hotkey", "weight (EMA, set)"])
    uid = str(steprows[leader]["uid"])
    assert weights[1] == [uid, steprows[leader]["hotkey"][:8], f"{normal['weights'][uid]:.4f}"]
    assert by_model[leader]["weight (EMA, set)"] == weights[1][2]
    legend = "".join(page.text)
    assert all(col in legend for col in header) and "What the columns mean" in legend
    assert "2026-01-02T03:04:05+00:00" in legend and importlib.metadata.version("coldint-validator") in legend
    assert normal["weights_set"] in legend
    assert page.tags.isdisjoint({"script", "b", "i"})  # miner and operator text is escaped, never markup
    assert "c00_losses.png" in {p.name for p in files.values()}


def test_step_in_which_every_model_failed_still_lists_every_model_with_its_reason(steps, tmp_path):
    from validator.adapters import leaderboard as L

    _, failed = steps
    models = failed["competitions"]["c00"]["models"]
    assert len(models) == 3 and all(m["status"] == "failed" for m in models)
    report = step_to_report({**failed, "problems": [f"uid 9: invalid commitment: {HOSTILE}"]})
    files = htmlreport.write_report(report, tmp_path)
    assert not any(p.suffix == ".png" and "c00" in p.name for p in files.values())  # nothing to plot
    text = files["html"].read_text()
    page = parse_html(text)
    table = next(t for t in page.tables if t and t[0] == [c for c, _ in L.GLOSSARY])
    assert {row[1]: row[-1] for row in table[1:]} == {m["label"]: f"failed: {m['reason']}" for m in models}
    assert [row[2] for row in table[1:]] == [m["hotkey"][:8] for m in models]
    words = "".join(page.text)
    assert failed["weights_set"].startswith("not set") and failed["weights_set"] in words
    assert f"uid 9: invalid commitment: {HOSTILE}" in words  # the problem, escaped
    assert "<script" not in text and page.tags.isdisjoint({"script"})


def test_a_malformed_step_table_is_named(tmp_path):
    table = {"columns": ["a", "b"], "rows": [["1", "2"], ["3"]]}
    with pytest.raises(htmlreport.ReportError, match="'c00' table row #1: expected 2 strings"):
        htmlreport.write_report({"competitions": {"c00": {"models": [], "table": table}}}, tmp_path)
    with pytest.raises(htmlreport.ReportError, match="'problems' must be a list of strings"):
        htmlreport.write_report({"competitions": {}, "problems": "boom"}, tmp_path)
    with pytest.raises(htmlreport.ReportError, match="'summary' must be a list of"):
        htmlreport.write_report({"competitions": {}, "summary": [["only one"]]}, tmp_path)
