"""`coldint-validator benchmark` (benchmark/compare.py, field.py, render.py) on a field of tiny models of known quality.

Known quality: one tiny llama is trained on texts like the evaluation texts; its early
snapshot is the leader, a later snapshot (more training) is the clearly better candidate,
the leader plus weight noise is the worse one, and a copy of the leader's directory is the
copy. The untrained model is an old, weak incumbent.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from benchmark import compare as C
from benchmark import field as F
from benchmark import render as R
from tests.factories import make_texts, make_tokenizer, train_field
from validator.core import winrule

N_SAMPLES = 120
SEED = 7
OLD_BLOCK, LEADER_BLOCK = 100, 200
LEADER_STEPS, BETTER_STEPS = 12, 40


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="coldint-validator")
    C.register_benchmark_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["benchmark", *argv])


def _run(argv: list[str]) -> tuple[int, str, argparse.Namespace]:
    args = _parse(argv)
    console = Console(file=io.StringIO(), width=260, record=True, color_system=None)
    rc = C.run_benchmark(args, console)
    return rc, console.export_text(), args


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models on a shared 2-core box: one thread is faster than two fighting
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("bench")
    train_texts = make_texts(300, seed=1, max_words=30)
    eval_texts = make_texts(150, seed=2, max_words=30)
    tok = make_tokenizer(root / "tokenizer", train_texts + eval_texts)
    models = train_field(root, tok, train_texts, LEADER_STEPS, BETTER_STEPS)
    models["copy"] = Path(shutil.copytree(models["leader"], root / "leader_copy"))

    data = root / "eval.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in eval_texts))
    comps = root / "competitions.json"
    comps.write_text(json.dumps({"c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"],
                                         "parameters": 10_000_000, "model_size": 100_000_000,
                                         "dataset": str(data), "tokenizer": str(root / "tokenizer"),
                                         "max_sequence_len": 512}}))
    bench = root / "benchmark.json"
    bench.write_text(json.dumps({
        "_note": "entries with a block are incumbents; without, candidates",
        "old": {"competition": "c00", "path": str(models["old"]), "label": "old", "block": OLD_BLOCK},
        "leader": {"competition": "c00", "path": str(models["leader"]), "label": "leader", "block": LEADER_BLOCK},
        "better": {"competition": "c00", "path": str(models["better"]), "label": "better"},
        "worse": {"competition": "c00", "path": str(models["worse"]), "label": "worse"},
        "copy": {"competition": "c00", "path": str(models["copy"]), "label": "leader copy"},
    }))
    return {"root": root, "models": models, "competitions": comps, "benchmark": bench,
            "state": root / "state", "out": root / "out"}


def _offline_argv(world, *extra: str) -> list[str]:
    return [str(world["benchmark"]), "--offline", "--competitions", str(world["competitions"]),
            "--state-dir", str(world["state"]), "--samples", str(N_SAMPLES), "--seed", str(SEED),
            "--device", "cpu", "--no-isolation", "--bootstrap", "1000", *extra]


@pytest.fixture(scope="module")
def offline(world):
    rc, text, _ = _run(_offline_argv(world, "--out", str(world["out"])))
    assert rc == 0, text
    report = json.loads((world["out"] / "report.json").read_text())
    return report, text


def _cands(report: dict) -> dict[str, dict]:
    return {d["label"]: d for d in report["competitions"]["c00"]["candidates"]}


def _cached_losses(world, labels: list[str]) -> np.ndarray:
    """Summed losses per sample as the loss cache holds them, for an independent recount."""
    from validator.adapters.evalcache import EvalCache, cache_file
    from validator.core.identity import dir_hash

    data = json.loads(world["competitions"].read_text())["c00"]["dataset"]
    cache = EvalCache.load(cache_file(world["state"], data))
    report = json.loads((world["out"] / "report.json").read_text())
    ids = report["competitions"]["c00"]["sample_ids"]
    from validator.adapters.competitions_source import load_competitions

    rule = load_competitions(str(world["competitions"]))["c00"].scoring_key
    keys = [f"c00:{rule}:{dir_hash(world['models'][lab])}" for lab in labels]
    return cache.losses.get_matrix(keys, ids)


# --- the offline benchmark on models of known quality --------------------------------------------


def test_better_candidate_beats_the_leader(offline, world):
    report, _ = offline
    sec = report["competitions"]["c00"]
    assert sec["leader"]["label"] == "leader" and sec["n_field"] == 2 and sec["n_samples"] == N_SAMPLES
    better = _cands(report)["better"]
    assert better["head_to_head"]["low"] > 0.5, better["verdict"]
    assert better["win_rate"]["low"] > 0.5
    assert better["outcome"] == "beats the leader" and better["verdict"].endswith("beats the leader")
    assert better["loss_ratio"]["high"] < better["required_ratio"]
    # independent recount from the cached summed losses: the win rule by hand
    old, leader, cand = _cached_losses(world, ["old", "leader", "better"])
    adv = 0.004 * 0.995 ** ((LEADER_BLOCK - LEADER_BLOCK) / 361)  # block now = newest incumbent
    assert better["required_ratio"] == pytest.approx(1 - adv)
    assert better["head_to_head"]["value"] == pytest.approx(np.mean(cand < leader * (1 - adv)))
    assert better["mean_delta"]["value"] == pytest.approx(np.mean(cand - leader))
    assert better["loss_ratio"]["value"] == pytest.approx(cand.sum() / leader.sum())
    # against the field: walk old -> leader -> candidate, holder's advantage decides
    adv_old = 0.004 * 0.995 ** ((LEADER_BLOCK - OLD_BLOCK) / 361)
    holder, hold_adv = old.copy(), np.full(old.shape, adv_old)
    take = leader < holder * (1 - hold_adv)
    holder, hold_adv = np.where(take, leader, holder), np.where(take, adv, hold_adv)
    assert better["win_rate"]["value"] == pytest.approx(np.mean(cand < holder * (1 - hold_adv)))


def test_copy_of_the_leader_wins_nothing(offline, world):
    report, _ = offline
    copy = _cands(report)["leader copy"]
    delta = copy["mean_delta"]
    assert delta["low"] <= 0.0 <= delta["high"] and delta["value"] == 0.0
    assert copy["win_rate"]["value"] == 0.0 and copy["head_to_head"]["value"] == 0.0
    assert copy["weight"] == 0.0 and copy["n_paired"] == N_SAMPLES
    assert copy["outcome"] == "does not beat the leader"
    assert copy["copy_of"] == "leader" and "same content as leader" in copy["verdict"]
    assert _cands(report)["better"]["copy_of"] is None
    # the leader keeps every sample it held: ties and the advantage stay with the incumbent
    leader_row = next(m for m in report["competitions"]["c00"]["models"] if m["label"] == "leader")
    assert leader_row["win_rate"] > 0.5


def test_worse_candidate_does_not(offline):
    report, _ = offline
    worse = _cands(report)["worse"]
    assert worse["head_to_head"]["high"] < 0.5 and worse["win_rate"]["high"] < 0.5
    assert worse["mean_delta"]["low"] > 0
    assert worse["outcome"] == "does not beat the leader"


def test_field_weights_and_candidate_weight(offline, world):
    """The weight a candidate would get: win rates of field + candidate, skewed, normalised."""
    report, _ = offline
    old, leader, cand = _cached_losses(world, ["old", "leader", "better"])
    winners = winrule.sample_winners(np.vstack([old, leader, cand]), [OLD_BLOCK, LEADER_BLOCK, np.nan],
                                     LEADER_BLOCK, 0.004, 0.995)
    rates = np.bincount(winners[winners >= 0], minlength=3) / N_SAMPLES
    w = rates ** 1.2 / (rates ** 1.2).sum()
    assert _cands(report)["better"]["weight"] == pytest.approx(w[2])
    field = report["competitions"]["c00"]["models"][:2]
    assert sum(m["weight"] for m in field) == pytest.approx(1.0)  # local incumbents take weight too


def _assert_same(a, b, where="report"):
    """Equal, floats to 1e-6 relative: a re-check recomputes a few cached losses in another
    batch, which moves them in the 8th digit (validator.step.evaluate.score_entries keeps the new value)."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9), where
    else:
        assert a == b, where


def test_rerun_same_seed_same_numbers_from_the_cache(offline, world):
    report, text = offline
    rc, text2, _ = _run(_offline_argv(world, "--out", str(world["root"] / "out2")))
    assert rc == 0
    again = json.loads((world["root"] / "out2" / "report.json").read_text())
    skip = ("generated", "forward_samples")
    _assert_same({k: v for k, v in report.items() if k not in skip}, {k: v for k, v in again.items() if k not in skip})
    assert text2.split("report: ")[0] == text.split("report: ")[0]  # the screen shows the same numbers
    from validator.core.rechecks import n_rechecks

    first = json.loads((world["out"] / "report.json").read_text())["forward_samples"]
    second = json.loads((world["root"] / "out2" / "report.json").read_text())["forward_samples"]
    # 4 distinct model contents; the copy shares the leader's cached losses (re-checks only)
    assert first == 4 * N_SAMPLES + n_rechecks(N_SAMPLES)
    assert second == 5 * n_rechecks(N_SAMPLES)  # the rerun scores nothing anew


def _assert_numbers_in_json(text: str, report: dict) -> None:
    """Every number the screen shows is a number of report.json (as shown: rounded, or in %)."""
    scalars: list[float] = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k not in ("losses_per_token", "deltas", "win_matrix", "sample_ids", "verdict"):
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                if isinstance(v, (dict, list)) or len(x) <= 2:  # no per-sample lists
                    walk(v)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            scalars.append(float(x))

    walk(report)
    table_text = text.split("▸")[0]  # the tables (the verdict lines come from stats, checked apart)
    for label in ("leader copy", "leader", "better", "worse", "old", "c00"):
        table_text = table_text.replace(label, "")
    numbers = re.findall(r"-?\d+(?:\.\d+)?", table_text)
    assert len(numbers) > 40
    for tok in numbers:
        d = len(tok.split(".")[1]) if "." in tok else 0
        ok = any(format(v, f".{d}f") == tok or format(100 * v, f".{d}f") == tok for v in scalars)
        assert ok, f"table number {tok} is not in report.json"


def test_table_numbers_are_in_the_json(offline):
    report, text = offline
    for label in ("better", "worse", "leader copy", "old", "leader"):
        assert label in text
    flat = " ".join(text.split())
    for line in (d["verdict"] for d in report["competitions"]["c00"]["candidates"]):
        assert " ".join(line.split()) in flat  # one verdict line per candidate
    _assert_numbers_in_json(text, report)
    # a narrow terminal gets the candidate table turned (a column per candidate), same numbers
    console = Console(file=io.StringIO(), width=80, record=True, color_system=None)
    R.print_report(report, console)
    narrow = console.export_text()
    assert "win rate vs field" in narrow and max(map(len, narrow.splitlines())) <= 80
    _assert_numbers_in_json(narrow, report)


def test_report_files_show_the_models(offline, world):
    out = world["out"]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["c00_losses.png", "c00_win_matrix.png", "c00_win_rates.png"]
    from matplotlib.image import imread

    for p in pngs:
        img = imread(out / p)
        assert img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 0.01
    page = (out / "report.html").read_text()
    for label in ("old", "leader", "better", "worse", "leader copy"):
        assert f"<td>{label}</td>" in page
    assert page.count("data:image/png;base64,") == 3
    assert "beats the leader" in page


# --- the pure part ------------------------------------------------------------------------------


def test_compare_field_by_hand():
    """Four samples, numbers chosen so every outcome can be counted by hand."""
    ones = [10, 10, 10, 10]
    field = [F.ScoredModel("inc", [10.0, 10.0, 10.0, 10.0], ones, uid=3, block=1000),
             F.ScoredModel("young", [9.0, 11.0, 11.0, math.inf], ones, uid=5, block=1361)]
    cand = F.ScoredModel("cand", [8.0, 9.99, 9.0, 11.0], ones, kind="candidate")
    cf = F.CompetitionField(field, [cand], ["a", "b", "c", "d"])
    rep = F.compare_field({"c00": cf}, 1361, seed=1, n_boot=1000)
    sec = rep["competitions"]["c00"]
    adv_inc = 0.004 * 0.995 ** (361 / 361)
    # young takes sample a from inc (9 < 10 * (1 - adv_inc)); inc keeps b, c, d
    assert [m["win_rate"] for m in sec["models"][:2]] == [0.75, 0.25]
    assert sec["leader"]["label"] == "inc" and sec["leader"]["advantage"] == pytest.approx(adv_inc)
    d = sec["candidates"][0]
    # a: 8 < 9 * (1 - 0.004) -> wins; b: 9.99 vs 10 * (1 - adv_inc) = 9.96 -> no; c: 9 < 9.96 -> wins; d: no
    assert d["win_rate"]["value"] == 0.5
    assert d["head_to_head"]["value"] == 0.5  # against inc alone: a and c
    assert d["mean_delta"]["value"] == pytest.approx(np.mean([-2, -0.01, -1, 1]))
    assert d["required_ratio"] == pytest.approx(1 - adv_inc)
    assert d["deltas"] == pytest.approx([-2, -0.01, -1, 1])
    # with the candidate in: inc keeps b and d, young loses a to it -> rates 0.5, 0, 0.5
    assert d["weight"] == pytest.approx(0.5 ** 1.2 / (0.5 ** 1.2 + 0.5 ** 1.2))
    # the field alone: weights of win rates 0.75 and 0.25, skewed
    assert sec["models"][0]["weight"] == pytest.approx(0.75 ** 1.2 / (0.75 ** 1.2 + 0.25 ** 1.2))
    assert d["outcome"] == F.outcome(d)
    # pure: same inputs, same seed -> same numbers
    again = F.compare_field({"c00": cf}, 1361, seed=1, n_boot=1000)
    assert {k: v for k, v in again.items() if k != "generated"} == {k: v for k, v in rep.items() if k != "generated"}


def test_compare_field_groups_samples_like_the_validator():
    rng = np.random.default_rng(0)
    base = rng.uniform(50, 60, size=10)
    field = [F.ScoredModel("inc", base, np.full(10, 20), uid=1, block=10)]
    cand = F.ScoredModel("cand", base * 0.9, np.full(10, 20), kind="candidate")
    cf = F.CompetitionField(field, [cand], [f"s{i}" for i in range(10)], group_samples=3)
    sec = F.compare_field({"c": cf}, 10, n_boot=1000)["competitions"]["c"]
    # live: the 10th sample does not fill a group and is dropped; 9 shuffled samples, 3 groups
    assert sec["n_samples"] == 3 and sec["sample_ids"] == ["group 0", "group 1", "group 2"]
    perm = np.random.default_rng(C.constants.BENCH_SEED).permutation(9)
    by_hand = base[perm].reshape(3, 3).sum(axis=1)
    assert sec["candidates"][0]["deltas"] == pytest.approx(by_hand * 0.9 - by_hand)
    # the win rates are those of the live step on the raw rows (it groups them itself)
    step = winrule.competition_step([base, base * 0.9], [10, 10], 10, group_samples=3, advantage_initial=0.004,
                                    advantage_decay=0.995, weight_skew_factor=1.2, pool_size=2,
                                    seed=C.constants.BENCH_SEED)
    assert sec["candidates"][0]["win_rate"]["value"] == pytest.approx(step.win_rate[1])
    with pytest.raises(ValueError, match="2 samples in groups of 3: no complete group"):
        F.compare_field({"c": F.CompetitionField(field[:0], [], ["a", "b"], group_samples=3)}, 10, n_boot=1000)
    with pytest.raises(ValueError, match="n_tokens has 9 entries, expected 10"):
        F.compare_field({"c": F.CompetitionField([F.ScoredModel("x", base, np.ones(9))], [], list("abcdefghij"))}, 1)
    with pytest.raises(ValueError, match="bootstrap resamples"):
        F.compare_field({"c": cf}, 10, n_boot=10)


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_is_named(world, tmp_path):
    rc, text, _ = _run([str(tmp_path / "nope.json"), "--offline"])
    assert rc == 2 and "nope.json: no such benchmark.json" in text
    only_incumbents = tmp_path / "b.json"
    only_incumbents.write_text(json.dumps({"leader": {"competition": "c00", "path": str(world["models"]["leader"]),
                                                      "block": 5}}))
    argv = _offline_argv(world)
    argv[0] = str(only_incumbents)
    rc, text, _ = _run(argv)
    assert rc == 2 and "no candidate" in text
    rc, text, _ = _run(_offline_argv(world)[:-2] + ["--bootstrap", "10"])
    assert rc == 2 and "--bootstrap 10" in text
    args = _parse([])
    assert args.benchmark == Path("benchmark.json") and args.state_dir == Path(".coldint/benchmark")
    assert args.network == "finney" and args.top == C.constants.BENCH_TOP_MODELS


@pytest.mark.parametrize("extra, message", [
    (["--network", "finney"], "--offline --network finney: offline reads no network"),
    (["--network", "test", "--chain-db", "x.sqlite"], "--offline --network test: offline reads no network"),
    (["--competitions", "https://example.org/competitions.json"], "a URL; offline reads configs from files only"),
    (["--hf-endpoint", "https://huggingface.co"], "hub endpoint https://huggingface.co is not on this machine"),
])
def test_offline_means_no_network_and_is_refused_before_work(tmp_path, monkeypatch, extra, message):
    from validator.adapters.chain import subtensor

    monkeypatch.setattr(subtensor.SubtensorChain, "__init__", lambda *a, **k: pytest.fail("SubtensorChain built"))
    bench = tmp_path / "b.json"
    bench.write_text("{}")
    state = tmp_path / "state"
    rc, text, _ = _run([str(bench), "--offline", "--state-dir", str(state), *extra])
    assert rc == 2 and message in text, text
    assert len(text.strip().splitlines()) == 1, text
    assert not state.exists()


def test_offline_without_a_network_reads_no_chain_and_the_shipped_competitions():
    from validator import app
    from validator.adapters.competitions_source import SHIPPED_COMPETITIONS

    config = C.config_from_args(_parse(["--offline"]))
    assert config.network is None and not app.uses_chain(config)
    assert app.benchmark_competitions_location(config) == str(SHIPPED_COMPETITIONS)
    config = C.config_from_args(_parse(["--offline", "--network", "local"]))
    assert config.network == "local" and app.uses_chain(config) and config.chain_file == C.DEFAULT_LOCAL_CHAIN
    assert app.benchmark_competitions_location(C.config_from_args(_parse([]))) == C.constants.COMPETITIONS_URL


def test_a_candidate_that_cannot_be_scored_is_shown_failed(world, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(world["models"]["leader"] / "config.json", broken / "config.json")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps({
        "leader": {"competition": "c00", "path": str(world["models"]["leader"]), "block": LEADER_BLOCK},
        "better": {"competition": "c00", "path": str(world["models"]["better"])},
        "broken": {"competition": "c00", "path": str(broken)},
        "elsewhere": {"competition": "c99", "path": str(world["models"]["better"])}}))
    argv = _offline_argv(world)
    argv[0] = str(bench)
    rc, text, _ = _run(argv + ["--out", str(tmp_path / "out")])
    # an unusable entry stops the run, its reason first (a typo must not shrink the field unseen)
    assert rc == 2 and text.startswith("error: benchmark entry 'elsewhere': unknown competition 'c99'"), text
    assert "--skip-bad-entries" in text and not (tmp_path / "out").exists()
    rc, text, _ = _run(argv + ["--out", str(tmp_path / "out"), "--skip-bad-entries"])
    assert rc == 0, text  # the others are judged: "better" beats the leader
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    sec = report["competitions"]["c00"]
    assert [d["label"] for d in sec["candidates"]] == ["better"]
    assert [(x["label"], x["kind"]) for x in sec["failed"]] == [("broken", "candidate")]
    assert "broken" in text and "failed:" in text
    assert any("unknown competition 'c99'" in p for p in report["problems"])
    assert "problem: benchmark entry 'elsewhere'" in text


# --- the field from a chain and a hub -------------------------------------------------------------


def test_field_from_local_chain_and_hub(world, tmp_path):
    """Top --top uids by incentive from a LocalChain, fetched and verified through olah."""
    from validator.publish import publish_and_commit
    from validator.adapters.hub.localhub import LocalHub
    from validator.adapters.chain.local import LocalChain
    from validator.adapters.competitions_source import load_competitions

    comp = load_competitions(str(world["competitions"]))["c00"]
    mirror = tmp_path / "mirror"
    (mirror / "models").mkdir(parents=True)
    chain = LocalChain(tmp_path / "chain.sqlite")
    chain.register("validator0", stake=1000.0, validator=True)
    uids, blocks = {}, {}
    with LocalHub(mirror) as hub:
        for name in ("old", "leader", "worse"):
            hotkey = f"hk_{name}"
            uids[name] = chain.register(hotkey)
            publish_and_commit(world["models"][name], comp, hub_spec=f"local:{mirror}", chain=chain,
                               signer=hotkey, hotkey=hotkey, repo=f"miner/{name}", endpoint=hub.endpoint,
                               readback_wait_s=0, log=lambda _m: None)
            blocks[name] = chain.sync()[1][hotkey].block
            chain.advance(50)
        # incentive: the validator weighs leader and old; "worse" has none -> not in the top 2
        chain.set_weights_as("validator0", [uids["leader"], uids["old"]], [0.7, 0.3], 1)
        chain.advance(10)
    bench = tmp_path / "candidates.json"
    bench.write_text(json.dumps({"better": {"competition": "c00", "path": str(world["models"]["better"])}}))
    # the hub is gone: `--hf-endpoint local:DIR` serves the mirror for the run (validator.cli.hub.open_endpoint)
    rc, text, _ = _run([str(bench), "--network", "local", "--chain-db", str(tmp_path / "chain.sqlite"),
                        "--hf-endpoint", f"local:{mirror}", "--top", "2", "--competitions", str(world["competitions"]),
                        "--state-dir", str(world["state"]), "--model-dir", str(tmp_path / "models"),
                        "--samples", str(N_SAMPLES), "--seed", str(SEED), "--device", "cpu", "--no-isolation",
                        "--bootstrap", "1000", "--out", str(tmp_path / "out")])
    assert rc == 0, text
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["mode"] == "chain" and report["block"] == chain.block
    sec = report["competitions"]["c00"]
    field = {m["uid"]: m for m in sec["models"][:sec["n_field"]]}
    assert set(field) == {uids["leader"], uids["old"]}
    assert field[uids["leader"]]["block"] == blocks["leader"] and field[uids["leader"]]["kind"] == "chain"
    assert field[uids["leader"]]["label"] == f"uid {uids['leader']} miner/leader"
    assert f"uid {uids['leader']} miner/leader" in text and "worse" not in text  # shown; uid 3 left out
    assert sec["leader"]["uid"] == uids["leader"]
    assert any((tmp_path / "models").rglob("model.safetensors"))  # downloaded, not read from world
    better = sec["candidates"][0]
    assert better["outcome"] == "beats the leader" and f"uid {uids['leader']}" in better["verdict"]
    assert better["leader_advantage"] == pytest.approx(0.004 * 0.995 ** ((chain.block - blocks["leader"]) / 361))


# --- a full sample database -----------------------------------------------------------------------


def test_runs_with_other_seeds_on_a_full_sample_db(world, tmp_path, monkeypatch):
    """Runs with different seeds fill the sample db to its cap; a run whose samples are partly
    old (the oldest of the db) must keep them all, not trim them and fail on their texts."""
    from validator.adapters.evalcache import EvalCache, cache_file

    cap, n = 50, 40
    load = EvalCache.load.__func__
    monkeypatch.setattr(EvalCache, "load", classmethod(lambda cls, path, **kw: load(cls, path, min_samples=10,
                                                                                   max_samples=cap)))
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps({
        "leader": {"competition": "c00", "path": str(world["models"]["leader"]), "block": LEADER_BLOCK},
        "better": {"competition": "c00", "path": str(world["models"]["better"])}}))
    argv = _offline_argv(world)
    argv[0] = str(bench)
    argv[argv.index("--state-dir") + 1] = str(tmp_path / "state")
    argv[argv.index("--samples") + 1] = str(n)
    for seed in (1, 2, 3, 1):
        argv[argv.index("--seed") + 1] = str(seed)
        rc, text, _ = _run(argv + ["--out", str(tmp_path / f"out{seed}")])
        assert rc == 0, text
        report = json.loads((tmp_path / f"out{seed}" / "report.json").read_text())
        ids = report["competitions"]["c00"]["sample_ids"]
        assert len(ids) == n
        dataset = json.loads(world["competitions"].read_text())["c00"]["dataset"]
        db = EvalCache.load(cache_file(tmp_path / "state", dataset)).db
        assert len(db) <= cap and all(sid in db for sid in ids)
    rc, text, _ = _run(argv[:argv.index("--samples") + 1] + [str(C.constants.DB_MAX_SAMPLES + 1)]
                       + argv[argv.index("--samples") + 2:])
    assert rc == 2 and "the sample database's cap" in text


def test_exit_status_follows_the_best_call():
    def report(*outcomes):
        return {"competitions": {"c00": {"candidates": [{"outcome": o} for o in outcomes]}}}

    assert F.exit_status(report("does not beat the leader", "beats the leader")) == F.EXIT_BEATS == 0
    assert F.exit_status(report("too close to call", "does not beat the leader")) == F.EXIT_DOES_NOT == 1
    assert F.exit_status(report("no field")) == F.EXIT_NOT_JUDGED == 2
    assert F.exit_status(report()) == F.EXIT_NOT_JUDGED
