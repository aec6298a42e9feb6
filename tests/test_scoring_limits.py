"""Limits around one model's scoring (issue 14): memory, environment, config keys, token cache
save failures, the model tokenizer's time box. Each limit costs the model it concerns, or
nothing: never the validator, never another model.

The job functions at the top run in a worker child (validator.scoring.worker.run_isolated).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

JOBS = "tests.test_scoring_limits"
MIB = 1024**2
COMP = {"id": "c00", "max_sequence_len": 4096, "cap_sample_len": 20480, "max_tokenize_fails": 3}


# --- jobs (run in the child) -----------------------------------------------------------------

def environ_job() -> dict:
    return dict(os.environ)


def allocate_job(n_bytes: int, hold_s: float) -> int:
    import time

    buf = bytearray(n_bytes)  # zero-filled: the pages are really touched
    time.sleep(hold_s)  # hold it long enough for the watchdog to see it
    return len(buf)


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from tests.factories import make_model, make_texts, make_tokenizer
    from tests.test_scoring import save_as_transformers_444

    root = tmp_path_factory.mktemp("limits")
    comp_tok = root / "comp_tok"
    make_tokenizer(comp_tok)
    own_tok = root / "own_tok"
    make_tokenizer(own_tok, texts=make_texts(100, seed=11), vocab_size=280)
    save_as_transformers_444(own_tok)
    return {"root": root, "comp_tok": comp_tok, "own_tok": own_tok,
            "llama": make_model(root / "llama", "llama", tokenizer_dir=comp_tok),
            "own": make_model(root / "own", "llama", tokenizer_dir=own_tok, seed=2)}


def samples_of(texts):
    return [(f"s{i}", t) for i, t in enumerate(texts)]


# --- memory ----------------------------------------------------------------------------------

def test_rss_watchdog_kills_a_job_over_its_limit_and_the_next_runs():
    from validator.scoring.worker import run_isolated

    res = run_isolated(f"{JOBS}:allocate_job", {"n_bytes": 400 * MIB, "hold_s": 30}, timeout_s=60,
                       rss_limit_bytes=200 * MIB)
    assert not res.ok and res.reason == "oom", res.detail
    assert "resident memory" in res.detail and str(200 * MIB) in res.detail
    assert res.seconds < 20  # killed when seen, not after the job's sleep
    ok = run_isolated(f"{JOBS}:allocate_job", {"n_bytes": 8 * MIB, "hold_s": 1}, timeout_s=60,
                      rss_limit_bytes=400 * MIB)
    assert ok.ok and ok.value == 8 * MIB, ok.detail


def test_worker_limits_per_device():
    import constants
    from validator.scoring.worker_limits import default_memory_limit, worker_limits

    cpu = worker_limits("cpu", 1000)
    assert cpu["rss_limit_bytes"] == 1000  # address space on CPU: the limit plus headroom for what is only mapped
    assert cpu["memory_limit_bytes"] >= 1000 + constants.SCORE_ADDRESS_SPACE_HEADROOM_BYTES
    # CUDA maps far more address space than it uses: only the resident watchdog there
    assert worker_limits("cuda:0", 1000) == {"rss_limit_bytes": 1000}
    assert worker_limits("cpu", 0) == {}
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = default_memory_limit()
    assert limit is not None and 0 < limit <= total * constants.SCORE_MEMORY_FRACTION + 1


def test_a_model_over_the_memory_limit_fails_oom_alone(assets, tmp_path):
    from validator.scoring.dispatch import make_score_fn
    from validator.core.competitions import Competition

    comp = Competition(id="c00", reward=0.5, model_types=["LlamaForCausalLM"], parameters=10**9,
                       model_size=10**10, dataset="x", tokenizer=str(assets["comp_tok"]),
                       max_sequence_len=4096, cap_sample_len=20480, max_tokenize_fails=3)
    samples = samples_of(["The model of the chain.", "Water and light."])
    tight = make_score_fn("cpu", tmp_path / "tok", memory_limit_bytes=64 * MIB, timeout_s=120)
    res = tight(assets["llama"], samples, comp)
    assert res.failure.startswith("oom") and "resident memory" in res.failure, res.failure
    assert res.losses == {}
    # the next model (the same one, under the default limit) scores, as without a worker
    default = make_score_fn("cpu", tmp_path / "tok", timeout_s=120)(assets["llama"], samples, comp)
    direct = make_score_fn("cpu", tmp_path / "tok2", isolate=False)(assets["llama"], samples, comp)
    assert default.failure is None and default.losses == pytest.approx(direct.losses, rel=1e-6)
    assert default.notes == []


# --- environment -----------------------------------------------------------------------------

SECRETS = {"HF_TOKEN": "hf_x", "HF_ACCESS_TOKEN": "hf_y", "HUGGING_FACE_HUB_TOKEN": "hf_z",
           "BT_WALLET_NAME": "w", "BT_SUBTENSOR_NETWORK": "finney", "WALLET_PASSWORD": "p",
           "BITTENSOR_WALLET_PATH": "/w", "AWS_SECRET_ACCESS_KEY": "a", "OPENAI_API_KEY": "o",
           "MY_SERVICE_TOKEN": "t", "GITHUB_TOKEN": "g", "TORCH_AUTH_TOKEN": "x", "HF_ENDPOINT": "http://hub"}


def test_workers_do_not_inherit_secrets(monkeypatch):
    from validator.scoring.worker import run_isolated

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    res = run_isolated(f"{JOBS}:environ_job", {}, timeout_s=60)
    assert res.ok, res.detail
    env = res.value
    assert not set(SECRETS) & set(env), sorted(set(SECRETS) & set(env))
    assert env["OMP_NUM_THREADS"] == "3" and env["CUDA_VISIBLE_DEVICES"] == "1"  # what a job needs stays
    assert env["HF_HUB_OFFLINE"] == "1" and env["PATH"] == os.environ["PATH"]  # offline, whatever the parent says


def test_child_environment_is_an_allow_list():
    from validator.scoring.worker_limits import child_environment

    env = child_environment({"PATH": "/bin", "LC_ALL": "C", "TOKENIZERS_PARALLELISM": "false",
                             "PYTHONHASHSEED": "0", "SOMETHING_ELSE": "x", "DATABASE_URL": "postgres://u:p@h",
                             "MKL_NUM_THREADS": "2", "PYTHON_KEYRING_PASSWORD": "k"})
    assert env["PATH"] == "/bin" and env["LC_ALL"] == "C" and env["TOKENIZERS_PARALLELISM"] == "false"
    assert env["PYTHONHASHSEED"] == "0" and env["MKL_NUM_THREADS"] == "2"
    assert "SOMETHING_ELSE" not in env and "DATABASE_URL" not in env and "PYTHON_KEYRING_PASSWORD" not in env


# --- config keys that choose code paths ------------------------------------------------------

def test_config_keys_that_pick_kernels_or_quantizers_are_ignored(assets, tmp_path):
    from validator.scoring.model_load import load_model
    from validator.scoring.job import score_model

    hostile = tmp_path / "hostile"
    shutil.copytree(assets["llama"], hostile)
    config = json.loads((hostile / "config.json").read_text())
    config.update(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True},
                  attn_implementation="kernels-community/flash-attn", _attn_implementation="flash_attention_2",
                  experts_implementation="grouped_mm")
    (hostile / "config.json").write_text(json.dumps(config))

    # as written, transformers would act on them (here: fail, without bitsandbytes or the hub kernel)
    from transformers import AutoModelForCausalLM

    with pytest.raises(Exception):
        AutoModelForCausalLM.from_pretrained(str(hostile), local_files_only=True, use_safetensors=True)

    model = load_model(hostile)
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    assert model.config._attn_implementation in ("sdpa", "eager")
    texts = ["The model of the chain.", "Water and light in the river system."]
    plain = score_model(assets["llama"], samples_of(texts), COMP, tokenizer_path=assets["comp_tok"])
    got = score_model(hostile, samples_of(texts), COMP, tokenizer_path=assets["comp_tok"])
    assert got.failure is None and got.losses == plain.losses  # same weights, same code path, same numbers



# --- token cache save failures ---------------------------------------------------------------

def test_token_cache_that_cannot_be_saved_leaves_the_model_scored_with_a_note(assets, tmp_path):
    from validator.scoring.job import score_model_job

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    texts = ["The model of the chain.", "Water and light."]
    out = score_model_job(str(assets["llama"]), [list(s) for s in samples_of(texts)], COMP, "cpu",
                          str(assets["comp_tok"]), token_cache_path=str(blocker / "tokens.npz"))
    assert out["failure"] is None and isinstance(out["losses"]["s0"], float)
    assert len(out["notes"]) == 1 and out["notes"][0].startswith("token cache not saved"), out["notes"]
    saved = score_model_job(str(assets["llama"]), [list(s) for s in samples_of(texts)], COMP, "cpu",
                            str(assets["comp_tok"]), token_cache_path=str(tmp_path / "tokens.npz"))
    assert saved["losses"] == out["losses"] and saved["notes"] == []


def test_token_cache_disk_full_is_a_note(tmp_path):
    from validator.scoring.sample_tokens import as_competition
    from validator.scoring.token_cache import TokenCache, save_token_cache
    from validator.scoring.tokens import TokenizedSample

    cache = TokenCache()
    cache.put("k", as_competition(COMP), "s0", "text", TokenizedSample("s0", [1, 2, 3]))

    def disk_full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    note = save_token_cache(cache, tmp_path / "tokens.npz", write_bytes=disk_full)
    assert note is not None and note.startswith("token cache not saved (disk full)") and "No space" in note
    assert cache.dirty and not (tmp_path / "tokens.npz").exists()  # kept in memory for the next save
    assert save_token_cache(cache, tmp_path / "tokens.npz") is None and not cache.dirty
    assert len(TokenCache.load(tmp_path / "tokens.npz")) == 1


# --- the model tokenizer's time box ----------------------------------------------------------

SLOW_RULES = 600  # normalizer regex replacements that never match but cost ~0.3 ms each per sample


def make_slow(own_tok: Path, out: Path) -> Path:
    """The same tokenizer (same ids for these texts) with a normalizer that is slow."""
    shutil.copytree(own_tok, out)
    spec = json.loads((out / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"Regex": "(?:[a-z]+ ?){1,4}[0-9]"}, "content": "x"}] * SLOW_RULES}
    (out / "tokenizer.json").write_text(json.dumps(spec))
    return out


def test_a_slow_model_tokenizer_falls_back_or_fails_and_is_not_cached(assets, tmp_path):
    from tests.factories import make_texts
    from validator.scoring.job import score_model
    from validator.scoring.token_cache import TokenCache

    slow_model = tmp_path / "slow_model"
    shutil.copytree(assets["own"], slow_model)
    make_slow(assets["own_tok"], tmp_path / "slow_tok")
    for f in (tmp_path / "slow_tok").iterdir():
        shutil.copy(f, slow_model / f.name)
    samples = samples_of(make_texts(8, seed=12))
    free = dict(COMP, free_tokenizer=True)
    box = 0.5

    # the box does not touch a normal tokenizer, and without a box the slow one is used (same ids)
    fast = score_model(assets["own"], samples, free, tokenizer_path=assets["comp_tok"], tokenize_timeout_s=box)
    assert fast.failure is None and fast.tokenizer == "model"
    unboxed = score_model(slow_model, samples, free, tokenizer_path=assets["comp_tok"], tokenize_timeout_s=None)
    assert unboxed.tokenizer == "model" and unboxed.losses == fast.losses

    # free_tokenizer with a competition tokenizer: the competition's is used (rule C3)
    cache = TokenCache()
    slow = score_model(slow_model, samples, free, tokenizer_path=assets["comp_tok"], tokenize_timeout_s=box,
                       token_cache=cache)
    assert slow.failure is None and slow.tokenizer == "competition"
    assert "model tokenizer rejected: too slow (" in slow.tokenizer_reason and " s for " in slow.tokenizer_reason
    fixed = score_model(slow_model, samples, COMP, tokenizer_path=assets["comp_tok"])
    assert fixed.tokenizer == "competition" and slow.losses == fixed.losses
    assert len(cache) == len(samples)  # the competition tokenizer's rows only: nothing of the slow run

    # no competition tokenizer: the model is not evaluated
    alone = score_model(slow_model, samples, free, tokenize_timeout_s=box)
    assert alone.failure == "tokenizer" and "too slow (" in alone.detail
    assert all(v == float("inf") for v in alone.losses.values())
