"""Live agreement on model repos: what is downloaded, hashed, accepted and refused.

Oracle: tests/data/live-compat/repos.json, measured by running the live validator's own
download code (transformers 4.44.0) on the repo trees in repos/<case>/. Every case is served
by olah on loopback and fetched with ensure_model, as a validator does; scripts/upload_model.py
publishes the same trees and must commit the golden secure hash.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from validator.core.failures import FailureReason, FetchError
import constants
from scripts import upload_model
from tests.olah_fixture import publish
from validator.adapters import hub
from validator.core import live_repo
from validator.core import transformers444 as tf444
from validator.adapters.chain.local import LocalChain
from validator.core.competitions import Competition
from validator.adapters.hub import ensure_model
from validator.core.identity import ModelId, dir_hash, secure_hash

DATA = Path(__file__).parent / "data" / "live-compat"
GOLDEN = json.loads((DATA / "repos.json").read_text())
CASES = {c["case"]: c for c in GOLDEN["cases"]}
HOTKEYS = GOLDEN["hotkeys"]
COMPETITIONS = {name: Competition(id=name, **d) for name, d in GOLDEN["competitions"].items()}
# The live result "not_allowed" covers several of our reasons; its reason words say which.
NOT_ALLOWED = {"repo size": FailureReason.too_large, "model type": FailureReason.constraint,
               "parameters": FailureReason.constraint}
NS = "gm"  # short: "gm:llama_arch_missing:<40>:<44>:tiny_limits" stays within 128 bytes
SLICED_LLAMA = "<class 'transformers_llama.modeling_llama.SlicedLlamaForCausalLM'>"


def repo_dir(case: str) -> Path:
    return DATA / CASES[case]["dir"]


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def served(olah_mirror, olah_hub) -> dict[str, str]:
    """case -> commit of that repo tree, published as <NS>/<case> on the module's olah."""
    return {case: publish(olah_mirror, NS, case, repo_dir(case)) for case in CASES}


def model_id(case: str, commit: str, competition: str, hotkey: str = HOTKEYS[0]) -> ModelId:
    return ModelId(NS, case, commit, CASES[case]["secure_hash"][hotkey], competition)


# --- the trees as served -------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_served_tree_is_the_hub_tree(case, served, olah_hub):
    """publish_local + olah give the repo as huggingface.co holds it (.gitattributes included),
    so the size check sees what the live validator saw."""
    files = hub.remote_files(f"{NS}/{case}", served[case], olah_hub.endpoint)
    assert sorted(files) == CASES[case]["repo_files"] == tree(repo_dir(case))
    assert sum(files.values()) == CASES[case]["repo_size"]


# --- the download set (pure) ------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_download_set_is_what_the_live_validator_downloads(case):
    root = repo_dir(case)
    files = tree(root)
    small = {n: (root / n).read_bytes() for n in live_repo.small_files_needed(files)}
    plan = live_repo.download_set(files, small)
    assert list(plan.files) == CASES[case]["downloaded_files"]
    assert list(plan.requested_absent) == CASES[case]["requested_absent"]


# --- ensure_model against every competition ----------------------------------------------------


@pytest.mark.parametrize("competition", sorted(COMPETITIONS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_verdicts_hashes_and_files_agree_with_live(case, competition, served, olah_hub, tmp_path):
    golden, verdict = CASES[case], CASES[case]["verdicts"][competition]
    comp = COMPETITIONS[competition]
    mid = model_id(case, served[case], competition)
    if verdict["accepted"]:
        path = ensure_model(mid, HOTKEYS[0], comp, tmp_path, endpoint=olah_hub.endpoint, progress=False).path
        assert sorted(p.name for p in path.iterdir()) == golden["downloaded_files"]
        content = dir_hash(path)
        assert content == golden["dir_hash"]
        assert {hk: secure_hash(content, hk) for hk in HOTKEYS} == golden["secure_hash"]
        marker = hub.read_marker(path)
        assert (marker["class"], marker["parameters"]) == (verdict["class"], verdict["n_parameters"])
        assert marker["repo_size"] == golden["repo_size"]
        return
    assert verdict["result"] == "not_allowed"
    words = next(w for w in NOT_ALLOWED if verdict["reason"].startswith(w))
    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEYS[0], comp, tmp_path, endpoint=olah_hub.endpoint, progress=False)
    assert err.value.reason is NOT_ALLOWED[words], err.value.detail
    assert f"{words}:" in err.value.detail or f"{words} " in err.value.detail
    if words == "repo size":  # refused before download: no class was built
        assert verdict["class"] is None and str(golden["repo_size"]) in err.value.detail
        assert not list(tmp_path.rglob("*.safetensors"))
    elif words == "model type":
        assert verdict["class"] in err.value.detail
    else:
        assert f"{verdict['n_parameters']} > {comp.parameters}" in err.value.detail


@pytest.mark.parametrize("case", sorted(CASES))
def test_class_and_parameter_count_of_every_verdict(case):
    """The class string and the parameter count the live constraint check saw, for every
    verdict that got that far (accepted or not)."""
    cfg = json.loads((repo_dir(case) / "config.json").read_text())
    seen = {(v["class"], v["n_parameters"]) for v in CASES[case]["verdicts"].values() if v["class"]}
    assert len(seen) == 1
    (printed, n), = seen
    anything = Competition(id="any", reward=0.0, dataset="x", model_types=["Sliced"], parameters=10**12,
                           model_size=10**12)
    assert hub.check_config(cfg, anything) == (printed, n)


def accepting(case: str) -> str:
    return next(c for c in ("c00", "c01") if CASES[case]["verdicts"][c]["accepted"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_wrong_hash_is_a_hash_mismatch_on_the_first_visit(case, served, olah_hub, tmp_path):
    """hotkeys[0] commits the hash made for hotkeys[1]. Live reports it one visit later (its
    first visit ends in an internal error); we report it at once: a deliberate difference."""
    golden = CASES[case]["commitment_hash_of_other_hotkey"]
    assert [g["result"] for g in golden] == ["exception", "hash_mismatch"]
    competition = accepting(case)
    mid = model_id(case, served[case], competition, hotkey=HOTKEYS[1])
    for _visit in range(2):
        with pytest.raises(FetchError) as err:
            ensure_model(mid, HOTKEYS[0], COMPETITIONS[competition], tmp_path, endpoint=olah_hub.endpoint,
                         progress=False)
        assert err.value.reason is FailureReason.hash_mismatch, err.value.detail
        assert CASES[case]["dir_hash"] in err.value.detail  # the content was downloaded and hashed
    assert not list(tmp_path.rglob("*.verified"))


def test_a_wrong_hash_on_a_model_outside_the_competition_is_reported_as_the_constraint(served, olah_hub,
                                                                                        tmp_path):
    """phi3_single committed to c00 with another hotkey's hash: live downloads first and reports
    the hash mismatch; we check the class from config.json before any weight is fetched and
    report the constraint (a deliberate difference: both are refusals, neither is retried)."""
    assert CASES["phi3_single"]["commitment_hash_of_other_hotkey"][1]["result"] == "hash_mismatch"
    mid = model_id("phi3_single", served["phi3_single"], "c00", hotkey=HOTKEYS[1])
    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEYS[0], COMPETITIONS["c00"], tmp_path, endpoint=olah_hub.endpoint, progress=False)
    assert err.value.reason is FailureReason.constraint and "model type:" in err.value.detail
    assert not list(tmp_path.rglob("*.safetensors"))


# --- scripts/upload_model.py: publish the golden trees ----------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_upload_model_commits_the_golden_secure_hash(case, olah_mirror, olah_hub, tmp_path):
    competition = accepting(case)
    chain = LocalChain(tmp_path / "chain.sqlite")
    chain.register(HOTKEYS[0])
    mid = upload_model.publish_and_commit(repo_dir(case), COMPETITIONS[competition], hub_spec=f"local:{olah_mirror}",
                                          chain=chain, signer=HOTKEYS[0], hotkey=HOTKEYS[0], repo=f"up/{case}",
                                          endpoint=olah_hub.endpoint, readback_wait_s=0, log=lambda _m: None)
    assert mid.hash == CASES[case]["secure_hash"][HOTKEYS[0]]
    assert chain.sync()[1][HOTKEYS[0]].text == mid.to_commitment()
    path = ensure_model(mid, HOTKEYS[0], COMPETITIONS[competition], tmp_path / "validator",
                        endpoint=olah_hub.endpoint, progress=False).path
    assert dir_hash(path) == CASES[case]["dir_hash"]
    assert hub.model_dir_hash(repo_dir(case)) == CASES[case]["dir_hash"]  # what a miner can compute offline


def test_a_miners_check_of_a_golden_dir_gives_the_live_verdicts():
    for case, golden in CASES.items():
        for name, verdict in golden["verdicts"].items():
            if verdict["accepted"]:
                hub.check_model_constraints(repo_dir(case), COMPETITIONS[name])
                continue
            with pytest.raises(FetchError) as err:
                hub.check_model_constraints(repo_dir(case), COMPETITIONS[name])
            words = next(w for w in NOT_ALLOWED if verdict["reason"].startswith(w))
            assert err.value.reason is NOT_ALLOWED[words], (case, name, err.value.detail)


# --- the model type rule ------------------------------------------------------------------------------


def test_model_type_rule_is_a_substring_of_the_printed_class():
    assert live_repo.live_model_class("llama") == SLICED_LLAMA
    assert live_repo.live_model_class("phi3") == "<class 'transformers_phi3.modeling_phi3.SlicedPhi3ForCausalLM'>"
    assert live_repo.live_model_class("phi") == "<class 'transformers_phi.modeling_phi.SlicedPhiForCausalLM'>"
    # not registered by the live validator: the transformers class, under its own module
    assert live_repo.live_model_class("mistral") == "<class 'transformers.models.mistral.modeling_mistral.MistralForCausalLM'>"
    assert live_repo.live_model_class("code_llama") == "<class 'transformers.models.llama.modeling_llama.LlamaForCausalLM'>"
    assert live_repo.model_type_allowed(SLICED_LLAMA, ["LlamaForCausalLM"])  # a substring of SlicedLlama...
    assert live_repo.model_type_allowed(SLICED_LLAMA, ["Phi3ForCausalLM", "transformers_llama"])
    assert not live_repo.model_type_allowed(SLICED_LLAMA, ["Phi3ForCausalLM", "llamaforcausallm"])
    assert not live_repo.model_type_allowed(SLICED_LLAMA, [])  # [] admits nothing
    # a model type 4.44 does not know is never built by the live validator, even where the
    # installed transformers would build a class whose name matches (DiffLlamaForCausalLM)
    for unknown in ("diffllama", "qwen3", "llama4_text"):
        assert unknown not in tf444.CAUSAL_LM_CLASSES
        with pytest.raises(live_repo.RepoRefused):
            live_repo.config_model_type({"model_type": unknown})


# --- the download set: rules the golden repos do not reach (pure) --------------------------------------


LLAMA_CFG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}


def plan(files: dict[str, object]) -> live_repo.DownloadSet:
    """download_set of a repo holding `files` (name -> JSON content, or None for any other file)."""
    small = {n: json.dumps(v).encode() if not isinstance(v, bytes) else v for n, v in files.items() if v is not None}
    return live_repo.download_set(files, {n: small[n] for n in live_repo.small_files_needed(files)})


WEIGHTS = {"config.json": LLAMA_CFG, "model.safetensors": None, "generation_config.json": None}
FAST = ["tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "special_tokens_map.json"]


@pytest.mark.parametrize("tok_cfg, config_extra, expected_class, fetched", [
    # transformers 5.x saves tokenizer_class TokenizersBackend, unknown to 4.44: it raises after
    # tokenizer_config.json, so no other tokenizer file is downloaded
    ({"tokenizer_class": "TokenizersBackend"}, {}, None, []),
    ({"tokenizer_class": "GPT2Tokenizer"}, {}, "GPT2TokenizerFast",
     ["merges.txt", "special_tokens_map.json", "tokenizer.json", "vocab.json"]),
    ({"tokenizer_class": "PreTrainedTokenizer"}, {}, "PreTrainedTokenizerFast",
     ["special_tokens_map.json", "tokenizer.json"]),
    # no tokenizer_class: config.json's, else the class of its model_type (llama: LlamaTokenizerFast)
    ({}, {"tokenizer_class": "GPT2TokenizerFast"}, "GPT2TokenizerFast",
     ["merges.txt", "special_tokens_map.json", "tokenizer.json", "vocab.json"]),
    ({}, {}, "LlamaTokenizerFast", ["special_tokens_map.json", "tokenizer.json", "tokenizer.model"]),
    # a slow class whose backend (sentencepiece) the live validator lacks, without a fast twin
    ({"tokenizer_class": "MarianTokenizer"}, {}, None, []),
    # remote tokenizer code and no built-in class: transformers refuses it, nothing more fetched
    ({"auto_map": {"AutoTokenizer": ["tok.T", None]}, "tokenizer_class": "MyTokenizer"}, {}, None, []),
    # ... beside a built-in class: the built-in one is used
    ({"auto_map": {"AutoTokenizer": ["tok.T", None]}, "tokenizer_class": "LlamaTokenizer"}, {},
     "LlamaTokenizerFast", ["special_tokens_map.json", "tokenizer.json", "tokenizer.model"]),
    (b"{not json", {}, None, []),
    ([1, 2], {}, None, []),
    ({"tokenizer_class": 5}, {}, None, []),
])
def test_tokenizer_files_follow_autotokenizer_444(tok_cfg, config_extra, expected_class, fetched):
    files = {**WEIGHTS, "config.json": {**LLAMA_CFG, **config_extra}, "tokenizer_config.json": tok_cfg,
             **dict.fromkeys(FAST)}
    got = plan(files)
    assert got.tokenizer_class == expected_class
    assert sorted(set(got.files) - {"config.json", "generation_config.json", "model.safetensors",
                                    "tokenizer_config.json"}) == fetched
    assert "tokenizer_config.json" in got.files  # always fetched first


def test_a_versioned_fast_tokenizer_file_replaces_tokenizer_json():
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast",
               "fast_tokenizer_files": ["tokenizer.4.0.0.json", "tokenizer.4.50.0.json"]}
    files = {**WEIGHTS, "tokenizer_config.json": tok_cfg, "tokenizer.json": None, "tokenizer.4.0.0.json": None,
             "tokenizer.4.50.0.json": None}
    got = plan(files)
    assert "tokenizer.4.0.0.json" in got.files  # the newest one not newer than 4.44.0
    assert "tokenizer.json" not in got.files and "tokenizer.4.50.0.json" not in got.files


def test_weights_rules():
    base = {"config.json": LLAMA_CFG}
    index = {"metadata": {"total_size": 2}, "weight_map": {"a": "s-1.safetensors", "b": "s-2.safetensors"}}
    sharded = plan({**base, "model.safetensors.index.json": index, "s-1.safetensors": None, "s-2.safetensors": None,
                    "s-3.safetensors": None})
    assert sharded.files == ("config.json", "model.safetensors.index.json", "s-1.safetensors", "s-2.safetensors")
    assert "model.safetensors" in sharded.requested_absent
    # model.safetensors wins: the index (and its shards) are not even read
    both = plan({**base, "model.safetensors": None, "model.safetensors.index.json": None, "s-1.safetensors": None})
    assert both.files == ("config.json", "model.safetensors")
    refused = {
        "pickle only": {**base, "pytorch_model.bin": None},
        "nothing": dict(base),
        "shard in a folder": {**base, "model.safetensors.index.json": {**index, "weight_map": {"a": "sub/s.safetensors"}},
                              "sub/s.safetensors": None},
        "shard up and out": {**base, "model.safetensors.index.json": {**index, "weight_map": {"a": "../s.safetensors"}}},
        "pickle shard": {**base, "model.safetensors.index.json": {**index, "weight_map": {"a": "w.bin"}}, "w.bin": None},
        "no metadata": {**base, "model.safetensors.index.json": {"weight_map": {"a": "s-1.safetensors"}},
                        "s-1.safetensors": None},
    }
    for what, files in refused.items():
        with pytest.raises(live_repo.RepoRefused) as err:
            plan(files)
        assert err.value.reason == "unsafe_format", what
    with pytest.raises(live_repo.RepoRefused) as err:
        plan({"model.safetensors": None})
    assert err.value.reason == "constraint" and "config.json" in err.value.detail


def test_small_files_are_bounded_before_they_are_parsed():
    big = b" " * (constants.HUB_SMALL_FILE_MAX_BYTES + 1)
    with pytest.raises(live_repo.RepoRefused) as err:
        live_repo.download_set(["config.json", "model.safetensors"], {"config.json": big})
    assert err.value.reason == "constraint" and "HUB_SMALL_FILE_MAX_BYTES" in err.value.detail


def test_the_one_list_of_tokenizer_file_names_covers_every_4_44_class():
    names = {n for files in tf444.TOKENIZER_VOCAB_FILES.values() for n in files} | set(tf444.TOKENIZER_COMMON_FILES)
    assert names == set(constants.TOKENIZER_FILES)
    assert not any(n.endswith(live_repo.PICKLE_SUFFIXES) for n in constants.TOKENIZER_FILES)
