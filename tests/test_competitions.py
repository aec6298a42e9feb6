import copy
import functools
import http.server
import json
import threading

import pytest

import constants
from validator.competitions import (
    Competition,
    CompetitionsConfig,
    CompetitionsError,
    load_competitions,
    parse_competitions,
)

LIVE = {
    "default": {
        "comment": "x", "group_samples": 5, "dataset": "fineweb2", "pool_size": 6,
        "advantage_initial": 0.004, "advantage_decay": 0.995, "max_sequence_len": 4096,
        "eval_pages": 16, "rows_per_page": 50, "free_tokenizer": True,
    },
    "c00": {
        "reward": 0.5, "model_types": ["LlamaForCausalLM", "SlicedLlamaForCausalLM"],
        "model_size": 42000000000, "parameters": 20100000000, "cap_sample_len": 17500,
        "tokenizer": "Xenova/gpt-4",
    },
    "c01": {
        "reward": 0.5, "model_types": ["Phi3ForCausalLM"], "model_size": 42000000000,
        "parameters": 20100000000, "cap_sample_len": 15000, "tokenizer": "coldint/phi3_stock_tokenizer",
    },
}


def live():
    return copy.deepcopy(LIVE)


def test_live_file_loads_with_defaults_merged():
    comps = parse_competitions(live())
    assert set(comps) == {"c00", "c01"}
    c00, c01 = comps["c00"], comps["c01"]
    assert isinstance(c00, Competition) and c00.id == "c00"
    assert c00.model_types == ["LlamaForCausalLM", "SlicedLlamaForCausalLM"]
    assert (c00.reward, c00.parameters, c00.model_size) == (0.5, 20_100_000_000, 42_000_000_000)
    # from default
    assert (c00.dataset, c00.group_samples, c00.pool_size, c00.free_tokenizer) == ("fineweb2", 5, 6, True)
    # own value beats default; absent everywhere -> constants
    assert (c00.cap_sample_len, c01.cap_sample_len) == (17500, 15000)
    assert c01.max_tokenize_fails == constants.MAX_TOKENIZE_FAILS
    assert c01.weight_skew_factor == constants.WEIGHT_SKEW_FACTOR
    assert c01.pend_size == constants.PEND_SIZE
    assert c01.tokenizer == "coldint/phi3_stock_tokenizer"
    # extra keys of the live file are kept
    assert c00.eval_pages == 16 and c00.rows_per_page == 50 and c00.comment == "x"


def test_competition_overrides_default_and_comments_skipped():
    data = live()
    data["_note"] = "a comment, not a competition"
    data["c01"]["dataset"] = "/data/local.jsonl"
    data["c01"]["group_samples"] = 2
    comps = parse_competitions(data)
    assert set(comps) == {"c00", "c01"}
    assert comps["c01"].dataset == "/data/local.jsonl" and comps["c01"].group_samples == 2
    assert comps["c00"].dataset == "fineweb2" and comps["c00"].group_samples == 5


def test_optional_defaults_from_constants_without_default_section():
    data = {"c": {"reward": 1, "model_types": ["GPT2LMHeadModel"], "parameters": 10, "model_size": 100, "dataset": "d"}}
    c = parse_competitions(data)["c"]
    assert c.tokenizer is None and c.free_tokenizer is False
    assert c.max_sequence_len == constants.MAX_SEQUENCE_LEN
    assert c.cap_sample_len == constants.CAP_SAMPLE_LEN
    assert c.group_samples == constants.GROUP_SAMPLES
    assert c.advantage_initial == constants.ADVANTAGE_INITIAL
    assert c.advantage_decay == constants.ADVANTAGE_DECAY
    assert c.pool_size == constants.POOL_SIZE


@pytest.mark.parametrize(
    "mutate, competition, key",
    [
        (lambda d: d["c01"].pop("parameters"), "c01", "parameters"),
        (lambda d: d["default"].pop("dataset"), "c00", "dataset"),
        (lambda d: d["c01"].update(parameters="20100000000"), "c01", "parameters"),
        (lambda d: d["c01"].update(parameters=0), "c01", "parameters"),
        (lambda d: d["c00"].update(model_size=-1), "c00", "model_size"),
        (lambda d: d["c01"].update(reward=-0.1), "c01", "reward"),
        (lambda d: d["c01"].update(reward=True), "c01", "reward"),
        (lambda d: d["c01"].update(model_types=[]), "c01", "model_types"),
        (lambda d: d["c01"].update(model_types="Phi3ForCausalLM"), "c01", "model_types"),
        (lambda d: d["c00"].update(advantage_decay=0), "c00", "advantage_decay"),
        (lambda d: d["c00"].update(advantage_decay=1.5), "c00", "advantage_decay"),
        (lambda d: d["c00"].update(free_tokenizer="yes"), "c00", "free_tokenizer"),
        (lambda d: d["default"].update(group_samples=0), "c00", "group_samples"),
        (lambda d: d["c00"].update(tokenizer=5), "c00", "tokenizer"),
    ],
)
def test_malformed_competition_names_competition_and_key(mutate, competition, key):
    data = live()
    mutate(data)
    with pytest.raises(CompetitionsError) as info:
        parse_competitions(data)
    assert f"competition {competition}: key '{key}'" in str(info.value)


def test_missing_key_message_says_missing():
    data = live()
    del data["c00"]["reward"]
    with pytest.raises(CompetitionsError, match=r"competition c00: key 'reward': required key missing"):
        parse_competitions(data)


@pytest.mark.parametrize("data", [[], "x", 3, None])
def test_top_level_not_an_object(data):
    with pytest.raises(CompetitionsError, match="top level"):
        parse_competitions(data)


def test_competition_not_an_object():
    data = live()
    data["c01"] = ["not", "a", "dict"]
    with pytest.raises(CompetitionsError, match=r"competition c01: expected a JSON object, got list"):
        parse_competitions(data)
    data = live()
    data["default"] = 7
    with pytest.raises(CompetitionsError, match=r"competition default: expected a JSON object, got int"):
        parse_competitions(data)


def test_no_competitions_and_zero_rewards_refused():
    with pytest.raises(CompetitionsError, match="no competition"):
        parse_competitions({"default": LIVE["default"], "_c": "only comments"})
    data = live()
    data["c00"]["reward"] = data["c01"]["reward"] = 0
    with pytest.raises(CompetitionsError, match="reward"):
        parse_competitions(data)


def test_competition_id_must_be_committable():
    data = live()
    data["c 02"] = data["c01"]
    with pytest.raises(CompetitionsError, match=r"competition 'c 02'"):
        parse_competitions(data)


def test_load_file(tmp_path):
    path = tmp_path / "competitions.json"
    path.write_text(json.dumps(LIVE))
    comps = load_competitions(str(path))
    assert comps == parse_competitions(live())
    assert load_competitions(path.as_uri()) == comps  # file:// works too


def test_load_bad_json_file_names_file_and_line(tmp_path):
    path = tmp_path / "competitions.json"
    path.write_text('{"c00": {"reward": 1,}\n}')
    with pytest.raises(CompetitionsError) as info:
        load_competitions(str(path))
    assert str(path) in str(info.value) and "invalid JSON at line 1" in str(info.value)


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(CompetitionsError, match=r"nope\.json: not found"):
        load_competitions(str(path))


def test_load_malformed_file_names_file_competition_and_key(tmp_path):
    data = live()
    data["c01"]["model_size"] = "big"
    path = tmp_path / "competitions.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CompetitionsError) as info:
        load_competitions(str(path))
    message = str(info.value)
    assert str(path) in message and "competition c01: key 'model_size'" in message


@pytest.fixture
def http_dir(tmp_path):
    """A plain HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_load_from_loopback_url(http_dir):
    root, base = http_dir
    (root / "competitions.json").write_text(json.dumps(LIVE))
    assert load_competitions(f"{base}/competitions.json", timeout=10) == parse_competitions(live())
    port = base.rsplit(":", 1)[1]
    assert set(load_competitions(f"http://localhost:{port}/competitions.json", timeout=10)) == {"c00", "c01"}


def test_url_http_error_named(http_dir):
    _, base = http_dir
    with pytest.raises(CompetitionsError, match=r"HTTP 404"):
        load_competitions(f"{base}/missing.json", timeout=10)


@pytest.mark.parametrize(
    "location, reason",
    [
        ("http://example.com/competitions.json", "plain http is only allowed on loopback"),
        ("http://10.0.0.1/competitions.json", "plain http is only allowed on loopback"),
        ("ftp://127.0.0.1/competitions.json", "unsupported scheme 'ftp'"),
    ],
)
def test_refused_locations(location, reason):
    with pytest.raises(CompetitionsError, match=reason):
        load_competitions(location, timeout=1)


def test_config_keeps_last_good_on_failed_reload(tmp_path):
    path = tmp_path / "competitions.json"
    path.write_text(json.dumps(LIVE))
    config = CompetitionsConfig(str(path))
    assert config.loaded and config.last_error is None
    first = config.competitions
    assert set(first) == {"c00", "c01"}

    path.write_text("{broken")
    assert config.reload() is False
    assert config.competitions == first
    assert "invalid JSON" in config.last_error

    bad = live()
    bad["c00"]["reward"] = -1
    path.write_text(json.dumps(bad))
    assert config.reload() is False
    assert "competition c00: key 'reward'" in config.last_error
    assert config.competitions == first

    path.unlink()
    assert config.reload() is False and "not found" in config.last_error

    changed = live()
    changed["c01"]["reward"] = 0.25
    path.write_text(json.dumps(changed))
    assert config.reload() is True
    assert config.last_error is None
    assert config.competitions["c01"].reward == 0.25


def test_config_never_loaded_raises_with_reason(tmp_path):
    config = CompetitionsConfig(str(tmp_path / "absent.json"))
    assert not config.loaded
    assert config.competitions is None and "not found" in config.last_error
    with pytest.raises(CompetitionsError, match="not found"):
        config.require()


def test_config_reload_from_url(http_dir):
    root, base = http_dir
    (root / "competitions.json").write_text(json.dumps(LIVE))
    config = CompetitionsConfig(f"{base}/competitions.json", timeout=10)
    assert set(config.competitions) == {"c00", "c01"}
    (root / "competitions.json").unlink()
    assert config.reload() is False and "HTTP 404" in config.last_error
    assert set(config.competitions) == {"c00", "c01"}


def test_maybe_reload_respects_refresh_interval(tmp_path):
    path = tmp_path / "competitions.json"
    path.write_text(json.dumps(LIVE))
    config = CompetitionsConfig(str(path), refresh_s=100)
    t0 = config.attempted_at
    changed = live()
    changed["c00"]["reward"] = 2.0
    path.write_text(json.dumps(changed))
    assert config.maybe_reload(now=t0 + 50) is False
    assert config.competitions["c00"].reward == 0.5
    assert config.maybe_reload(now=t0 + 100) is True
    assert config.competitions["c00"].reward == 2.0
