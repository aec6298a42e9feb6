import copy
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import pytest

import constants
from validator.adapters.competitions_source import SHIPPED_COMPETITIONS, load_config
from validator.core.competitions import (
    Competition,
    CompetitionsError,
    ValidatorDefaults,
    effective,
    parse_competitions,
    parse_config,
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
        (lambda d: d["c01"].update(parameters="20100000000"), "c01", "parameters"),
        (lambda d: d["c01"].update(parameters=0), "c01", "parameters"),
        (lambda d: d["c01"].update(parameters=2.5e10 + 0.5), "c01", "parameters"),  # not integral
        (lambda d: d["c00"].update(model_size=-1), "c00", "model_size"),
        (lambda d: d["c01"].update(reward=-0.1), "c01", "reward"),
        (lambda d: d["c01"].update(reward=True), "c01", "reward"),
        (lambda d: d["c01"].update(reward=float("nan")), "c01", "reward"),
        (lambda d: d["c01"].update(model_types="Phi3ForCausalLM"), "c01", "model_types"),
        (lambda d: d["c01"].update(model_types=["Phi3ForCausalLM", 3]), "c01", "model_types.1"),
        (lambda d: d["c00"].update(advantage_decay=0), "c00", "advantage_decay"),
        (lambda d: d["c00"].update(advantage_decay=1.5), "c00", "advantage_decay"),
        (lambda d: d["c00"].update(free_tokenizer="yes"), "c00", "free_tokenizer"),
        (lambda d: d["c00"].update(free_tokenizer=2), "c00", "free_tokenizer"),
        (lambda d: d["c00"].update(group_samples=0), "c00", "group_samples"),
        (lambda d: d["c00"].update(tokenizer=5), "c00", "tokenizer"),
    ],
)
def test_bad_value_disables_only_that_competition(mutate, competition, key):
    data = live()
    mutate(data)
    parsed = parse_config(data)
    other = {"c00", "c01"} - {competition}
    assert set(parsed.competitions) == other  # the other competition stays in force
    assert f"competition {competition}: key '{key}'" in parsed.disabled[competition]
    assert any(f"competition {competition}: key '{key}'" in p and "disabled" in p for p in parsed.problems)
    # the one-shot API gives the competitions in force, without raising
    assert set(parse_competitions(data)) == other


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda d: d["default"].pop("dataset"), "dataset"),
        (lambda d: d["default"].update(group_samples=0), "group_samples"),
    ],
)
def test_bad_default_value_disabling_every_competition_refuses_the_file(mutate, key):
    data = live()
    mutate(data)
    with pytest.raises(CompetitionsError) as info:
        parse_config(data)
    message = str(info.value)
    assert "no competition in force" in message
    assert f"competition c00: key '{key}'" in message and f"competition c01: key '{key}'" in message


def test_missing_key_message_says_missing():
    data = live()
    del data["c00"]["reward"]
    parsed = parse_config(data)
    assert "competition c00: key 'reward': required key missing" in parsed.disabled["c00"]


@pytest.mark.parametrize("data", [[], "x", 3, None])
def test_top_level_not_an_object(data):
    with pytest.raises(CompetitionsError, match="top level"):
        parse_config(data)


def test_competition_not_an_object():
    data = live()
    data["c01"] = ["not", "a", "dict"]
    parsed = parse_config(data)
    assert set(parsed.competitions) == {"c00"}
    assert "competition c01: expected a JSON object, got list" in parsed.disabled["c01"]
    data = live()
    data["default"] = 7
    with pytest.raises(CompetitionsError, match=r"competition default: expected a JSON object, got int"):
        parse_config(data)


def test_no_competition_refused():
    with pytest.raises(CompetitionsError, match="no competition"):
        parse_config({"default": LIVE["default"], "_c": "only comments"})


def test_all_rewards_zero_is_a_paused_subnet_not_an_error():
    data = live()
    data["c00"]["reward"] = data["c01"]["reward"] = 0
    parsed = parse_config(data)
    assert parsed.paused and set(parsed.competitions) == {"c00", "c01"}
    assert not parse_config(live()).paused
    data["c01"]["reward"] = 0.1
    assert not parse_config(data).paused


def test_competition_id_is_any_text_without_colon():
    data = live()
    data["c 02"] = copy.deepcopy(data["c01"])  # live accepts it: only ':' would break a commitment
    data["Ünïcode-x.y"] = copy.deepcopy(data["c01"])
    data["c:03"] = copy.deepcopy(data["c01"])
    data[""] = copy.deepcopy(data["c01"])  # live skips an empty name
    parsed = parse_config(data)
    assert set(parsed.competitions) == {"c00", "c01", "c 02", "Ünïcode-x.y"}
    assert "must not contain ':'" in parsed.disabled["c:03"]
    assert "" not in parsed.disabled


def test_integral_float_is_an_int_and_the_coercion_is_reported():
    data = live()
    data["c00"]["model_size"] = 4.2e10
    data["default"]["group_samples"] = 10.0
    parsed = parse_config(data)
    c00, c01 = parsed.competitions["c00"], parsed.competitions["c01"]
    assert c00.model_size == 42_000_000_000 and type(c00.model_size) is int
    assert c01.group_samples == 10 and type(c01.group_samples) is int
    assert c00.configured["model_size"] == 42_000_000_000 and type(c00.configured["model_size"]) is int
    assert "competition c00: key 'model_size': 42000000000.0 read as 42000000000" in parsed.problems
    # a default's coercion is said once, not once per competition
    assert sum("'group_samples'" in p for p in parsed.problems) == 1


@pytest.mark.parametrize("raw, expected", [(0, False), (1, True), (0.0, False), (1.0, True)])
def test_zero_and_one_are_booleans(raw, expected):
    data = live()
    data["default"]["free_tokenizer"] = raw
    parsed = parse_config(data)
    assert parsed.competitions["c00"].free_tokenizer is expected
    assert any("'free_tokenizer'" in p and "read as" in p for p in parsed.problems)


def test_empty_model_types_admits_nothing_but_is_allowed():
    data = live()
    data["c01"]["model_types"] = []
    parsed = parse_config(data)
    assert parsed.competitions["c01"].model_types == [] and not parsed.disabled


def test_unknown_keys_are_kept_and_named_once_in_the_log(caplog):
    from validator.core import competitions as module

    data = live()
    data["c01"]["zz_new_knob"] = 3
    module._named_unknown.discard("zz_new_knob")
    with caplog.at_level(logging.INFO, logger="validator.core.competitions"):
        first = parse_config(data)
        parse_config(data)
    assert first.competitions["c01"].zz_new_knob == 3 and first.competitions["c01"].configured["zz_new_knob"] == 3
    assert "zz_new_knob" in first.unknown_keys and "eval_pages" in first.unknown_keys
    assert "comment" not in first.unknown_keys and "rows_per_page" not in first.unknown_keys
    assert sum("zz_new_knob" in r.getMessage() for r in caplog.records) == 1


# --- the live file and the shipped copy ---------------------------------------------------------

LIVE_COMPAT = Path(__file__).parent / "data" / "live-compat"
SN29_80B4226_BLOB = "d08d6fdccd022f8f1c9e1a1a5b70c958292a95b1"  # git rev-parse 80b4226:competitions.json


def test_shipped_copy_is_the_sn29_80b4226_file():
    raw = SHIPPED_COMPETITIONS.read_bytes()
    assert hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest() == SN29_80B4226_BLOB


def test_live_file_parses_to_the_golden_merged_dicts():
    golden = json.loads((LIVE_COMPAT / "repos.json").read_text())["competitions"]
    parsed = load_config(SHIPPED_COMPETITIONS)
    assert set(parsed.competitions) == {"c00", "c01"} and not parsed.disabled and not parsed.problems
    for cid in ("c00", "c01"):
        assert parsed.competitions[cid].configured == golden[cid]
    c00 = parsed.competitions["c00"]
    assert (c00.group_samples, c00.weight_skew_factor, c00.pool_size, c00.cap_sample_len) == (10, 2.0, 6, 17500)
    assert c00.max_tokenize_fails == 3 and c00.pend_size == 3  # absent from the file: live's defaults


# --- validator-wide keys of `default` -----------------------------------------------------------

# live constants.defaults (coldint_validator a5860df) with the live file's rows_per_page 50
LIVE_SETTINGS = dict(rows_per_page=50, eval_samples=1500, db_min_samples=2000, db_max_samples=20000,
                     db_extend_samples=500, db_extend_interval=4 * 3600, discard_winrate=0.02, use_eval_cache=True)


def test_settings_of_the_live_file_are_live_defaults_updated_by_its_default_block():
    settings = load_config(SHIPPED_COMPETITIONS).settings
    assert dataclasses.asdict(settings) == LIVE_SETTINGS
    assert ValidatorDefaults().rows_per_page == 25  # live's default when the file does not say


def test_settings_from_default_override_ours():
    data = live()
    data["default"].update(eval_samples=3000, db_min_samples=100, db_max_samples=4e3, db_extend_samples=0,
                           db_extend_interval=60, discard_winrate=0, use_eval_cache=0)
    parsed = parse_config(data)
    s = parsed.settings
    assert (s.eval_samples, s.db_min_samples, s.db_max_samples, s.db_extend_samples) == (3000, 100, 4000, 0)
    assert (s.db_extend_interval, s.discard_winrate, s.use_eval_cache) == (60.0, 0.0, False)
    # a competition's own block does not set validator-wide keys (live reads them from default only)
    data = live()
    data["c00"]["eval_samples"] = 7
    assert parse_config(data).settings.eval_samples == 1500


@pytest.mark.parametrize("key, value", [("eval_samples", 0), ("eval_samples", "many"), ("rows_per_page", 2.5),
                                        ("discard_winrate", 1.5), ("use_eval_cache", "yes"),
                                        ("db_extend_interval", -1), ("db_max_samples", True)])
def test_bad_setting_keeps_our_default_and_is_listed(key, value):
    data = live()
    data["default"][key] = value
    parsed = parse_config(data)
    assert set(parsed.competitions) == {"c00", "c01"}
    assert getattr(parsed.settings, key) == getattr(ValidatorDefaults(), key)
    assert any(p.startswith(f"competition default: {key}:") for p in parsed.problems), parsed.problems


def test_db_min_above_max_is_refused():
    data = live()
    data["default"].update(db_min_samples=5000, db_max_samples=100)
    parsed = parse_config(data)
    assert (parsed.settings.db_min_samples, parsed.settings.db_max_samples) == (2000, 20000)
    assert any("db_min_samples (5000) must not exceed db_max_samples (100)" in p for p in parsed.problems)


def test_effective_lays_flags_over_the_file():
    base = parse_config(live()).settings
    out = effective(base, {"eval_samples": 200, "use_eval_cache": None, "discard_winrate": 0})
    assert out.eval_samples == 200 and out.discard_winrate == 0.0
    assert out.use_eval_cache is True and out.rows_per_page == 50  # not given: the file's value
    with pytest.raises(ValueError, match="eval_sample: not a validator-wide setting"):
        effective(base, {"eval_sample": 3})
    with pytest.raises(ValueError, match="eval_samples: must be >= 1"):
        effective(base, {"eval_samples": 0})
    with pytest.raises(ValueError, match="db_min_samples"):
        effective(base, {"db_min_samples": 10**6})
