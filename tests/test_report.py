import json
import math

import numpy as np
import pytest
from matplotlib.image import imread

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
