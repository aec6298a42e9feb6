"""validator.scoring.tokens against the live validator's tokenization (tests/data/live-compat, section 1).

Every entry of tokenize.json (transformers 4.44.0 / tokenizers 0.19.1 on the golden tokenizer
dirs) and every free_tokenizer case must come out exactly as golden, with the installed
transformers (5.x) playing no part; then one model end to end through score_model and the
scorer port.
"""
from __future__ import annotations

import json
import math
import shutil
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.factories import make_model
from validator.scoring import tokenizer_build, tokens
from validator.scoring.engine import ScoringError
from validator.scoring.job import score_model
from validator.scoring.sample_tokens import as_competition, choose_step_tokens

DATA = Path(__file__).parent / "data" / "live-compat"
GOLDEN = json.loads((DATA / "tokenize.json").read_text())
TOKENIZERS = DATA / "tokenizers"
STAND_IN = TOKENIZERS / GOLDEN["competition_tokenizer_stand_in"]


@lru_cache(maxsize=None)
def live(name: str) -> tokenizer_build.LiveTokenizer:
    return tokenizer_build.load_tokenizer(TOKENIZERS / name, role="model")


def comp_of(params: str, **extra) -> dict:
    return {"id": params, **GOLDEN["params"][params], **extra}


def entry_id(e: dict) -> str:
    return f"{e['tokenizer']}-{e['text']}-{e['params']}"


@pytest.mark.parametrize("name", sorted(GOLDEN["tokenizers"]))
def test_tokenizer_is_built_as_transformers_444_builds_it(name):
    info = GOLDEN["tokenizers"][name]
    assert info["has_tokenizer_json"] == (TOKENIZERS / name / "tokenizer.json").is_file()
    if info["class_444"] is None:  # 4.44 without sentencepiece: no backend from the other files
        with pytest.raises(tokens.TokenizerLoadError, match="sentencepiece"):
            live(name)
        assert "sentencepiece" in info["load_error_444"]
        return
    tok = live(name)
    assert (tok.class_name, tok.eos_token_id, tok.bos_token_id, tok.clean_up, len(tok)) == (
        info["class_444"], info["eos_token_id"], info["bos_token_id"], info["clean_up_tokenization_spaces"],
        info["vocab_size_with_added"])


@pytest.mark.parametrize("e", GOLDEN["entries"], ids=entry_id)
def test_entry_equals_the_live_tokenization(e):
    p = GOLDEN["params"][e["params"]]
    text = GOLDEN["texts"][e["text"]]
    if e["result"] == "tokenizer_load_error":
        with pytest.raises(tokens.TokenizerLoadError):
            live(e["tokenizer"])
        assert e["ids"] is None
        return
    row = tokens.tokenize_text(live(e["tokenizer"]), text, p["cap_sample_len"], p["max_sequence_len"])
    got = {"capped": row.capped, "row_len": row.row_len, "round_trip_ok": row.round_trip_ok,
           "eos_appended": row.eos_appended, "n_tokens": row.n_tokens, "result": row.result, "ids": row.ids}
    assert got == {k: e[k] for k in got}
    if "decoded" in e:
        assert row.decoded == e["decoded"]


@pytest.mark.parametrize("case", GOLDEN["free_tokenizer"],
                         ids=lambda c: f"{c['tokenizer']}-{c['sample_set']}-{c['params']}-"
                                       f"{'comp' if c['competition_has_tokenizer'] else 'nocomp'}")
def test_free_tokenizer_case_picks_the_live_tokenizer(case):
    comp = as_competition(comp_of(case["params"], free_tokenizer=True))
    step = [(f"{i}:{tid}", GOLDEN["texts"][tid]) for i, tid in enumerate(case["texts"])]  # repeats allowed
    comp_dir = STAND_IN if case["competition_has_tokenizer"] else None
    if case["tokenizer_used"].startswith("none"):
        with pytest.raises(ScoringError) as err:
            choose_step_tokens(TOKENIZERS / case["tokenizer"], comp, comp_dir, step)
        assert err.value.reason == "tokenizer" and "no competition tokenizer" in str(err.value)
        return
    choice = choose_step_tokens(TOKENIZERS / case["tokenizer"], comp, comp_dir, step)
    assert choice.used == case["tokenizer_used"]
    assert choice.step.max_token_id == case["max_token_id"]
    assert sorted(choice.step.rows) == sorted(sid for sid, _ in step)
    if "round-trip" in case["reason"] and choice.used == "competition":
        assert "more than 3 round-trip failures" in choice.reason
    if "no tokenizer.json" in case["reason"]:
        assert "no tokenizer.json" in choice.reason


def test_failures_are_counted_over_the_steps_whole_sample_list():
    comp = as_competition(comp_of("c00", free_tokenizer=True))
    spacing = [(f"s{i}", GOLDEN["texts"]["t02"]) for i in range(4)]  # 4 round-trip failures with clean-up
    plain = [("p", GOLDEN["texts"]["t01"])]
    model_dir = TOKENIZERS / "bytebpe_cleanup_unset"
    assert choose_step_tokens(model_dir, comp, STAND_IN, plain + spacing[:3]).used == "model"
    assert choose_step_tokens(model_dir, comp, STAND_IN, plain + spacing).used == "competition"
    # without free_tokenizer the competition tokenizer is used whatever the model holds
    fixed = as_competition(comp_of("c00", free_tokenizer=False))
    assert choose_step_tokens(model_dir, fixed, STAND_IN, plain).used == "competition"
    # ... and a competition without a tokenizer uses the model's, free_tokenizer or not
    assert choose_step_tokens(model_dir, fixed, None, plain).used == "model"


def test_class_rules_applied_to_other_files(tmp_path):
    # LlamaTokenizerFast without add_bos_token adds BOS (its default), whatever tokenizer.json says;
    # GPT2TokenizerFast sets the ByteLevel pre-tokenizer's add_prefix_space to False.
    d = tmp_path / "phi3_default_bos"
    shutil.copytree(TOKENIZERS / "phi3_style_nobos", d)
    config = json.loads((d / "tokenizer_config.json").read_text())
    del config["add_bos_token"]
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    text = GOLDEN["texts"]["t01"]
    nobos = live("phi3_style_nobos").encode(text)
    assert tokenizer_build.load_tokenizer(d).encode(text) == [1] + nobos
    g = tmp_path / "gpt2_prefix"
    shutil.copytree(TOKENIZERS / "gpt2_class_xenova", g)
    spec = json.loads((g / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["add_prefix_space"] = True
    (g / "tokenizer.json").write_text(json.dumps(spec))
    assert tokenizer_build.load_tokenizer(g).encode(text) == live("gpt2_class_xenova").encode(text)
    # an eos_token the vocabulary lacks is added as a new id (= the vocabulary size), as 4.44 does
    e = tmp_path / "new_eos"
    shutil.copytree(TOKENIZERS / "bytebpe_cleanup_false", e)
    config = json.loads((e / "tokenizer_config.json").read_text())
    (e / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|new_eos|>"}))
    assert tokenizer_build.load_tokenizer(e).eos_token_id == 500


def test_files_live_cannot_load_are_refused(tmp_path):
    def variant(name, edit_config=None, edit_spec=None):
        d = tmp_path / name
        shutil.copytree(TOKENIZERS / "bytebpe_cleanup_false", d)
        if edit_config:
            c = json.loads((d / "tokenizer_config.json").read_text())
            edit_config(c)
            (d / "tokenizer_config.json").write_text(json.dumps(c))
        if edit_spec:
            s = json.loads((d / "tokenizer.json").read_text())
            edit_spec(s)
            (d / "tokenizer.json").write_text(json.dumps(s))
        return d

    backend5 = variant("t5", lambda c: c.update(tokenizer_class="TokenizersBackend"))
    with pytest.raises(tokens.TokenizerLoadError, match="TokenizersBackend"):
        tokenizer_build.load_tokenizer(backend5)
    assert tokenizer_build.load_tokenizer(backend5, role="competition").class_name == "PreTrainedTokenizerFast"
    pairs = variant("pairs", edit_spec=lambda s: s["model"].update(merges=[m.split(" ") for m in s["model"]["merges"]]))
    with pytest.raises(tokens.TokenizerLoadError, match="pairs"):
        tokenizer_build.load_tokenizer(pairs)
    fixed = variant("fixed", edit_spec=lambda s: s.update(pre_tokenizer={"type": "FixedLength", "length": 4}))
    with pytest.raises(tokens.TokenizerLoadError, match="FixedLength"):
        tokenizer_build.load_tokenizer(fixed)
    no_class = variant("no_class", lambda c: c.pop("tokenizer_class"))
    with pytest.raises(tokens.TokenizerLoadError, match="config.json"):
        tokenizer_build.load_tokenizer(no_class)
    (no_class / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert tokenizer_build.load_tokenizer(no_class).class_name == "LlamaTokenizerFast"
    (no_class / "config.json").write_text(json.dumps({"model_type": "bloom"}))
    with pytest.raises(tokens.TokenizerLoadError, match="BloomTokenizerFast.*not modelled"):
        tokenizer_build.load_tokenizer(no_class)
    remote = variant("remote", lambda c: c.update(tokenizer_class="EvilTokenizer",
                                                  auto_map={"AutoTokenizer": ["evil.Evil", None]}))
    (remote / "evil.py").write_text("raise SystemExit('repo code ran')\n")
    with pytest.raises(tokens.TokenizerLoadError, match="EvilTokenizer"):
        tokenizer_build.load_tokenizer(remote)
    llama_prefix = variant("llama_prefix", lambda c: c.update(tokenizer_class="LlamaTokenizer", add_prefix_space=True))
    with pytest.raises(tokens.TokenizerLoadError, match="sentencepiece"):
        tokenizer_build.load_tokenizer(llama_prefix)


def test_cache_key_holds_what_the_ids_depend_on(tmp_path):
    d = tmp_path / "tok"
    shutil.copytree(TOKENIZERS / "bytebpe_cleanup_false", d)
    base = tokens.plan_tokenizer(d).key
    assert tokens.plan_tokenizer(d, role="competition").key != base
    config = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**config, "clean_up_tokenization_spaces": True}))
    changed = tokens.plan_tokenizer(d).key
    assert changed != base and tokens.RULES_VERSION in changed
    del config["tokenizer_class"]
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    keys = set()
    for model_type in ("llama", "gpt2"):  # the class comes from config.json: part of the key
        (d / "config.json").write_text(json.dumps({"model_type": model_type}))
        keys.add(tokens.plan_tokenizer(d).key)
    assert len(keys) == 2


# --- end to end: a model carrying a Llama-3-style tokenizer -----------------------------------------

@pytest.fixture(scope="module")
def llama3_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("live_tokenize")
    # vocab 500: the stand-in competition tokenizer's ids (and the llama3-style ones) all fit
    return make_model(root / "model", "llama", vocab_size=500, tokenizer_dir=TOKENIZERS / "llama3_style_bos")


def golden_ids(tokenizer: str, text: str, params: str) -> list[int] | None:
    [e] = [e for e in GOLDEN["entries"] if (e["tokenizer"], e["text"], e["params"]) == (tokenizer, text, params)]
    return e["ids"]


def test_llama3_style_model_falls_back_to_the_competition_tokenizer_and_is_scored(llama3_model):
    text_ids = ["t01", "t05", "t06", "t13", "t09"]  # t09: too long for c00's 4096 tokens with the stand-in
    samples = [(tid, GOLDEN["texts"][tid]) for tid in text_ids]
    result = score_model(llama3_model, samples, comp_of("c00", free_tokenizer=True), tokenizer_path=STAND_IN,
                         engine=False)
    assert result.failure is None
    assert result.tokenizer == "competition" and "more than 3 round-trip failures" in result.tokenizer_reason
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(llama3_model), dtype=torch.float32).eval()
    for tid in text_ids:
        ids = golden_ids(GOLDEN["competition_tokenizer_stand_in"], tid, "c00")
        if ids is None:
            assert result.losses[tid] == math.inf and result.n_tokens[tid] == 0
            continue
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        expected = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum").item()
        assert result.losses[tid] == pytest.approx(expected, rel=1e-5)
        assert result.n_tokens[tid] == len(ids) - 1


def test_the_scorer_port_reports_the_tokenizer_used(llama3_model, tmp_path):
    from validator.core.competitions import Competition
    from validator.scoring.dispatch import make_score_fn

    comp = Competition(id="c00", reward=0.5, model_types=["LlamaForCausalLM"], parameters=10**9,
                       model_size=10**10, dataset="x", tokenizer=str(STAND_IN), free_tokenizer=True,
                       **GOLDEN["params"]["small"])
    score = make_score_fn("cpu", tmp_path / "cache", isolate=False)
    step = [(tid, GOLDEN["texts"][tid]) for tid in ("t01", "t05", "t06", "t13")]
    res = score(llama3_model, step[:1], comp, step_samples=step)  # one to score, the step's four counted
    assert res.failure is None and res.tokenizer == "competition" and res.tokenizer_reason
    assert math.isfinite(res.losses["t01"])
    # one sample alone: a single round-trip failure is allowed, so the model's own tokenizer is
    # used and that sample (its BOS decodes as text) scores +inf, as live
    alone = score(llama3_model, step[:1], comp, step_samples=step[:1])
    assert alone.tokenizer == "model" and alone.losses["t01"] == math.inf
    samples = step[:1]
    # the same ids again, now from the token cache the job saved
    again = score(llama3_model, samples, comp, step_samples=step)
    assert again.losses == res.losses and (tmp_path / "cache" / "tokens.npz").is_file()
