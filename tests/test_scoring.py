"""validator.scoring.job: tokenization rules and per-sample losses against independent computations."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.factories import make_model, make_texts, make_tokenizer
from validator.core.scores import result_from_json
from validator.scoring.engine import ScoringError, reference_losses
from validator.scoring.model_load import load_model
from validator.scoring.job import score_model, score_model_job
from validator.scoring.sample_tokens import (as_competition, check_tokenize_fails, check_vocab, load_tokenizer,
                                             tokenize_samples)
from validator.scoring.token_cache import TokenCache
from validator.scoring.tokens import TokenizedSample, tokenizer_files_hash

COMP = {"id": "c00", "max_sequence_len": 4096, "cap_sample_len": 20480, "max_tokenize_fails": 3}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    tok_dir = root / "tok"
    make_tokenizer(tok_dir)
    return {
        "root": root,
        "tok_dir": tok_dir,
        "llama": make_model(root / "llama", "llama", tokenizer_dir=tok_dir),
        "phi3": make_model(root / "phi3", "phi3", seed=1),
    }


def samples_of(texts, prefix="s"):
    return [(f"{prefix}{i}", t) for i, t in enumerate(texts)]


def wordlevel_tokenizer(out_dir: Path):
    """A tokenizer that lowercases and maps unknown words to [UNK]: does not round trip
    capitalised text or unknown words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in make_texts(50) for w in t.lower().replace(".", " ").split()})
    vocab = {"[UNK]": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="[UNK]")
    fast.save_pretrained(out_dir)
    return out_dir


def save_as_transformers_444(tok_dir: Path) -> Path:
    """Rewrite a dir saved by transformers 5 / tokenizers 0.23 the way 4.44 / tokenizers 0.19 save
    it (tokenizer_class PreTrainedTokenizerFast, clean-up off, BPE merges as "a b" strings), so
    the live validator would load it as a model's own tokenizer."""
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    config.pop("backend", None)
    config.update(tokenizer_class="PreTrainedTokenizerFast", clean_up_tokenization_spaces=False)
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
    spec = json.loads((tok_dir / "tokenizer.json").read_text())
    spec["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (tok_dir / "tokenizer.json").write_text(json.dumps(spec))
    return tok_dir


def independent_losses(model_dir, tok_dir, texts):
    """tokenizer(text) + EOS, then model(ids).logits and cross_entropy(sum): no scoring code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"] + [tok.eos_token_id]])
            logits = model(ids).logits[0]
            out.append((F.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum").item(), ids.shape[1] - 1))
    return out


@pytest.mark.parametrize("arch", ["llama", "phi3"])
@pytest.mark.parametrize("engine", [False, True])
def test_losses_equal_independent_cross_entropy(assets, arch, engine):
    texts = make_texts(12, seed=3, max_words=60) + ["Short."]
    expected = independent_losses(assets[arch], assets["tok_dir"], texts)
    result = score_model(assets[arch], samples_of(texts), COMP, tokenizer_path=assets["tok_dir"], engine=engine)
    assert result.failure is None
    for i, (loss, n) in enumerate(expected):
        assert result.losses[f"s{i}"] == pytest.approx(loss, rel=1e-5)
        assert result.n_tokens[f"s{i}"] == n


def test_a_result_says_where_its_time_went_and_survives_the_worker_codec(assets):
    from validator.core.scores import result_to_json
    from validator.scoring.dispatch import decode_value

    result = score_model(assets["llama"], samples_of(make_texts(4, seed=2)), COMP, tokenizer_path=assets["tok_dir"])
    assert set(result.phases) == {"tokenize", "load", "score"}
    assert all(v >= 0 for v in result.phases.values()) and sum(result.phases.values()) <= result.seconds + 1e-3
    assert decode_value(result_to_json(result)).phases == result.phases
    assert result_from_json(result_to_json(result)).phases == result.phases


def test_eos_appended_and_text_round_trips(assets):
    tok = load_tokenizer(assets["tok_dir"], role="competition")
    text = make_texts(1, seed=5)[0]
    [ts] = tokenize_samples(tok, [("a", text)], COMP)
    assert ts.failure is None and not ts.capped
    assert ts.ids[-1] == tok.eos_token_id
    assert tok.decode(ts.ids[:-1]) == text


def test_text_over_char_cap_is_cut_at_a_space_without_eos(assets):
    tok = load_tokenizer(assets["tok_dir"], role="competition")
    text = "the model loss of the chain block " * 10
    comp = dict(COMP, cap_sample_len=50)
    [ts, hard] = tokenize_samples(tok, [("a", text), ("b", "x" * 80)], comp)
    cut = text.rfind(" ", 0, 50)
    assert ts.capped and ts.failure is None
    assert tok.decode(ts.ids) == text[:cut]  # no EOS after a capped text
    assert ts.ids[-1] != tok.eos_token_id
    assert tok.decode(hard.ids) == "x" * 50  # no space at all: hard cut at the cap


def test_text_over_token_limit_scores_inf(assets):
    texts = ["the model " * 40, "The chain."]
    comp = dict(COMP, max_sequence_len=20)
    tok = load_tokenizer(assets["tok_dir"], role="competition")
    long_ts, short_ts = tokenize_samples(tok, samples_of(texts), comp)
    assert long_ts.failure == "too_long" and long_ts.ids is None
    assert short_ts.failure is None
    result = score_model(assets["llama"], samples_of(texts), comp, tokenizer_path=assets["tok_dir"])
    assert result.failure is None
    assert result.losses["s0"] == math.inf and result.n_tokens["s0"] == 0
    assert math.isfinite(result.losses["s1"])


def test_roundtrip_failures_score_inf_and_too_many_disqualify(assets):
    tok_dir = wordlevel_tokenizer(assets["root"] / "wordlevel")
    tok = load_tokenizer(tok_dir, role="competition")
    good = [t.lower().replace(".", "") for t in make_texts(4, seed=7)]
    bad = [t for t in make_texts(4, seed=8)]  # capitalised and with '.': lowercased / [UNK]
    model = make_model(assets["root"] / "wl_model", "llama", vocab_size=len(tok))

    three_bad = tokenize_samples(tok, samples_of(good + bad[:3]), COMP)
    assert [t.failure for t in three_bad] == [None] * 4 + ["roundtrip"] * 3
    check_tokenize_fails(three_bad, COMP)  # 3 failures are allowed
    result = score_model(model, samples_of(good + bad[:3]), COMP, tokenizer_path=tok_dir)
    assert result.failure is None
    assert [math.isfinite(result.losses[f"s{i}"]) for i in range(7)] == [True] * 4 + [False] * 3

    four_bad = tokenize_samples(tok, samples_of(good + bad), COMP)
    with pytest.raises(ScoringError) as err:
        check_tokenize_fails(four_bad, COMP)
    assert err.value.reason == "tokenizer"
    result = score_model(model, samples_of(good + bad), COMP, tokenizer_path=tok_dir)
    assert result.failure == "tokenizer"
    assert all(v == math.inf for v in result.losses.values())

    # Only two samples still to compute (the rest cached), but the step evaluates all eight:
    # the rule counts the step's four failures, as a validator scoring everything would.
    step = samples_of(good + bad)
    part = [step[0], step[4]]
    assert score_model(model, part, COMP, tokenizer_path=tok_dir).failure is None
    result = score_model(model, part, COMP, tokenizer_path=tok_dir, step_samples=step)
    assert result.failure == "tokenizer" and set(result.losses) == {"s0", "s4"}
    three = samples_of(good + bad[:3])
    assert score_model(model, part, COMP, tokenizer_path=tok_dir, step_samples=three).failure is None


def test_vocab_too_small_is_rejected_before_forward(assets, monkeypatch):
    small = make_model(assets["root"] / "small_vocab", "llama", vocab_size=100)
    tok = load_tokenizer(assets["tok_dir"], role="competition")
    tokenized = tokenize_samples(tok, samples_of(make_texts(5)), COMP)
    assert max(max(t.ids) for t in tokenized) >= 100
    model = load_model(small)
    calls = []
    monkeypatch.setattr(model.model, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ScoringError) as err:
        check_vocab(model, tokenized)
    assert err.value.reason == "vocab"
    check_vocab(model.config.__class__(vocab_size=300), tokenized)  # a config works too
    result = score_model(small, samples_of(make_texts(5)), COMP, tokenizer_path=assets["tok_dir"], model=model)
    assert result.failure == "vocab" and calls == []


def test_vocab_check_covers_the_steps_whole_sample_list(assets):
    # Live compares the largest id of every sample of the step, not only of those still to score.
    tok = load_tokenizer(assets["tok_dir"], role="competition")
    step = samples_of(make_texts(8, seed=31))
    tops = [max(t.ids) for t in tokenize_samples(tok, step, COMP)]
    low = min(range(8), key=lambda i: tops[i])
    assert tops[low] < max(tops)
    model = make_model(assets["root"] / "mid_vocab", "llama", vocab_size=tops[low] + 1)
    alone = score_model(model, [step[low]], COMP, tokenizer_path=assets["tok_dir"])
    assert alone.failure is None and math.isfinite(alone.losses[step[low][0]])
    in_step = score_model(model, [step[low]], COMP, tokenizer_path=assets["tok_dir"], step_samples=step)
    assert in_step.failure == "vocab" and f"token id {max(tops)}" in in_step.detail


def test_free_tokenizer_uses_the_models_own(assets):
    own_tok = assets["root"] / "own_tok"
    make_tokenizer(own_tok, texts=make_texts(100, seed=11), vocab_size=280)
    save_as_transformers_444(own_tok)
    model = make_model(assets["root"] / "free", "llama", tokenizer_dir=own_tok)
    texts = make_texts(4, seed=12)
    expected = independent_losses(model, own_tok, texts)
    comp = dict(COMP, free_tokenizer=True)
    result = score_model(model, samples_of(texts), comp, tokenizer_path=assets["tok_dir"])
    assert result.tokenizer == "model" and result.failure is None
    assert [result.losses[f"s{i}"] for i in range(4)] == pytest.approx([e[0] for e in expected], rel=1e-5)
    # Without free_tokenizer the competition tokenizer is used (different ids, other losses).
    fixed = score_model(model, samples_of(texts), COMP, tokenizer_path=assets["tok_dir"])
    assert fixed.tokenizer == "competition" and fixed.n_tokens != result.n_tokens
    assert fixed.n_tokens == score_model(assets["llama"], samples_of(texts), COMP,
                                         tokenizer_path=assets["tok_dir"]).n_tokens


def test_a_tokenizer_saved_by_transformers_5_is_not_the_models_own(assets):
    # transformers 5 writes tokenizer_class "TokenizersBackend" and tokenizers >= 0.20 writes BPE
    # merges as pairs: the live validator (4.44 / tokenizers 0.19.1) cannot load either, so the
    # model is scored with the competition tokenizer, exactly like a model without tokenizer.json.
    new_save = assets["root"] / "new_save"
    make_tokenizer(new_save, texts=make_texts(100, seed=11), vocab_size=280)
    model = make_model(assets["root"] / "free_new", "llama", tokenizer_dir=new_save)
    texts = make_texts(4, seed=12)
    comp = dict(COMP, free_tokenizer=True)
    result = score_model(model, samples_of(texts), comp, tokenizer_path=assets["tok_dir"])
    assert result.failure is None and result.tokenizer == "competition"
    assert "TokenizersBackend" in result.tokenizer_reason
    expected = independent_losses(model, assets["tok_dir"], texts)
    assert [result.losses[f"s{i}"] for i in range(4)] == pytest.approx([e[0] for e in expected], rel=1e-5)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}))
    again = score_model(model, samples_of(texts), comp, tokenizer_path=assets["tok_dir"])
    assert again.tokenizer == "competition" and "merges as pairs" in again.tokenizer_reason
    # With no competition tokenizer there is nothing to fall back to: the model is not evaluated.
    alone = score_model(model, samples_of(texts), comp)
    assert alone.failure == "tokenizer" and alone.tokenizer is None


def test_short_and_failed_samples(assets):
    model = load_model(assets["llama"])
    assert reference_losses(model, [[5], [], None], "cpu") == [0.0, 0.0, math.inf]


def test_missing_weights_is_a_load_failure(assets, tmp_path):
    for f in Path(assets["llama"]).iterdir():
        if not f.name.endswith(".safetensors"):
            (tmp_path / f.name).write_bytes(f.read_bytes())
    result = score_model(tmp_path, samples_of(["The model."]), COMP, tokenizer_path=assets["tok_dir"])
    assert result.failure == "load"


def test_token_cache_reused_and_persisted(assets, tmp_path):
    tok = load_tokenizer(assets["tok_dir"], role="competition")
    key = tokenizer_files_hash(assets["tok_dir"])
    samples = samples_of(make_texts(6, seed=13))
    cache = TokenCache()
    first = tokenize_samples(tok, samples, COMP, cache=cache, tokenizer_key=key)
    assert len(cache) == 6

    class NoCalls:
        def __call__(self, *a, **k):
            raise AssertionError("tokenizer called despite a cache hit")

    again = tokenize_samples(NoCalls(), samples, COMP, cache=cache, tokenizer_key=key)
    assert [t.ids for t in again] == [t.ids for t in first]
    cache.save(tmp_path / "tok_cache.json")
    loaded = TokenCache.load(tmp_path / "tok_cache.json")
    assert [t.ids for t in tokenize_samples(NoCalls(), samples, COMP, cache=loaded, tokenizer_key=key)] == \
           [t.ids for t in first]
    # Other tokenization parameters or another text under the same id are misses.
    assert loaded.get(key, as_competition(dict(COMP, cap_sample_len=10)), "s0", samples[0][1]) is None
    assert loaded.get(key, as_competition(COMP), "s0", "another text") is None
    # The key is the tokenizer's content: another tokenizer hashes differently.
    other = assets["root"] / "other_tok"
    make_tokenizer(other, texts=make_texts(50, seed=99), vocab_size=290)
    assert tokenizer_files_hash(other) != key


def test_score_model_job_is_json_in_json_out(assets, tmp_path):
    texts = ["the model " * 40, "The chain block."]
    out = score_model_job(str(assets["llama"]), [[f"s{i}", t] for i, t in enumerate(texts)],
                          dict(COMP, max_sequence_len=20), "cpu", str(assets["tok_dir"]), True,
                          token_cache_path=str(tmp_path / "cache.json"))
    text = json.dumps(out, allow_nan=False)  # strict JSON: inf travels as the string "inf"
    assert out["losses"]["s0"] == "inf" and isinstance(out["losses"]["s1"], float)
    back = result_from_json(json.loads(text))
    assert back.losses["s0"] == math.inf and back.failure is None
    assert len(TokenCache.load(tmp_path / "cache.json")) == 2


def test_token_cache_is_bounded_and_saved_without_pickle(tmp_path):
    import numpy as np

    comp = _tok_comp()
    cache = TokenCache(max_entries=3)
    for i in range(5):
        cache.put("tok", comp, f"s{i}", f"text {i}", TokenizedSample(f"s{i}", [i, i + 1], None))
    cache.put("tok", comp, "bad", "x", TokenizedSample("bad", None, "roundtrip"))
    assert len(cache) == 3 and cache.get("tok", comp, "s0", "text 0") is None  # oldest dropped
    path = tmp_path / "sub" / "tokens.npz"
    path.parent.mkdir()
    cache.save(path)
    with np.load(path, allow_pickle=False) as f:  # plain arrays: loads with pickle disabled
        assert f["ids"].dtype == np.int32
    again = TokenCache.load(path)
    assert again.get("tok", comp, "s4", "text 4").ids == [4, 5]
    assert again.get("tok", comp, "bad", "x").failure == "roundtrip"
    assert again.get("tok", comp, "s4", "another text") is None  # same id, different text: a miss
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="tokens.npz"):
        TokenCache.load(path)


def test_token_cache_tells_apart_tokenizer_classes_picked_from_the_model_config(assets, tmp_path):
    # Same tokenizer files, no tokenizer_class: 4.44 picks the class from config.json's model_type,
    # and the classes tokenize differently (GPT2TokenizerFast cleans up " ," on decode, so those
    # texts fail the round trip; LlamaTokenizerFast does not, and here adds no BOS). A shared cache
    # must not mix them up.
    from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers

    tok = Tokenizer(tok_models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(make_texts(100), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok_files = tmp_path / "tok"
    tok_files.mkdir()
    tok.save(str(tok_files / "tokenizer.json"))
    (tok_files / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": False}))
    save_as_transformers_444(tok_files)
    config = json.loads((tok_files / "tokenizer_config.json").read_text())
    del config["tokenizer_class"], config["clean_up_tokenization_spaces"]
    (tok_files / "tokenizer_config.json").write_text(json.dumps(config))
    models = {arch: make_model(tmp_path / arch, arch, tokenizer_dir=tok_files) for arch in ("llama", "gpt2")}
    comp = dict(COMP, free_tokenizer=True)
    texts = make_texts(5, seed=21)
    texts[1], texts[3] = texts[1].replace(" ", " , ", 1), texts[3].replace(" ", " , ", 1)
    samples = samples_of(texts)
    fresh = {arch: score_model(path, samples, comp) for arch, path in models.items()}
    assert all(r.failure is None and r.tokenizer == "model" for r in fresh.values())
    assert [fresh["gpt2"].losses[f"s{i}"] == math.inf for i in range(5)] == [False, True, False, True, False]
    assert all(math.isfinite(v) for v in fresh["llama"].losses.values())
    shared = TokenCache()
    for arch in ("llama", "gpt2"):
        assert score_model(models[arch], samples, comp, token_cache=shared).n_tokens == fresh[arch].n_tokens, arch


def _tok_comp():
    return as_competition({"id": "c", "cap_sample_len": 100, "max_sequence_len": 10})


def test_token_cache_round_trips_ids_beyond_int32(tmp_path):
    import numpy as np

    comp = _tok_comp()
    big = [0, 2**31 - 1, 2**31, 2**40, 2**62, 7]
    cache = TokenCache()
    cache.put("tok", comp, "big", "big text", TokenizedSample("big", list(big), None))
    cache.put("tok", comp, "small", "small text", TokenizedSample("small", [3, 2, 1], None))
    path = tmp_path / "tokens.npz"
    cache.save(path)
    with np.load(path, allow_pickle=False) as f:
        assert f["ids"].dtype == np.int64
    loaded = TokenCache.load(path)
    got = loaded.get("tok", comp, "big", "big text").ids
    assert got == big and all(type(x) is int for x in got)
    assert loaded.get("tok", comp, "small", "small text").ids == [3, 2, 1]
    # Once the big entry is gone, a save is int32 again.
    loaded.max_entries = 1
    loaded.put("tok", comp, "s", "t", TokenizedSample("s", [5], None))
    loaded.save(path)
    with np.load(path, allow_pickle=False) as f:
        assert f["ids"].dtype == np.int32
    assert TokenCache.load(path).get("tok", comp, "s", "t").ids == [5]


def test_token_cache_loaded_ids_equal_what_was_put(tmp_path):
    import random

    rng = random.Random(5)
    comp = _tok_comp()
    put = {}
    cache = TokenCache()
    for i in range(300):
        kind = rng.random()
        if kind < 0.1:
            ts = TokenizedSample(f"s{i}", None, rng.choice(["roundtrip", "too_long"]), rng.random() < 0.5)
        elif kind < 0.15:
            ts = TokenizedSample(f"s{i}", [], None, False)
        else:
            ids = [rng.randrange(128_256) for _ in range(rng.randrange(1, 400))]
            ts = TokenizedSample(f"s{i}", ids, None, rng.random() < 0.5)
        put[ts.sample_id] = (ts.ids, ts.failure, ts.capped)
        cache.put("tok", comp, ts.sample_id, f"text {i}", TokenizedSample(ts.sample_id, None if ts.ids is None
                                                                          else list(ts.ids), ts.failure, ts.capped))
    path = tmp_path / "tokens.npz"
    cache.save(path)
    loaded = TokenCache.load(path)
    assert len(loaded) == 300 and not loaded.dirty
    for i in rng.sample(range(300), 300):
        sid = f"s{i}"
        hit = loaded.get("tok", comp, sid, f"text {i}")
        assert (hit.sample_id, hit.ids, hit.failure, hit.capped) == (sid, *put[sid]), sid
        assert hit.ids is None or all(type(x) is int for x in hit.ids)
        # Each hit is a fresh list: changing it does not change the cache.
        if hit.ids:
            hit.ids.append(-1)
            assert loaded.get("tok", comp, sid, f"text {i}").ids == put[sid][0]
    # Insertion order (which entry goes first beyond max_entries) survives the round trip.
    loaded.max_entries = 300
    loaded.put("tok", comp, "new", "new text", TokenizedSample("new", [1], None))
    assert loaded.get("tok", comp, "s0", "text 0") is None
    assert loaded.get("tok", comp, "s1", "text 1") is not None


def test_token_cache_damaged_file_is_a_value_error_naming_it(tmp_path):
    import numpy as np

    comp = _tok_comp()
    cache = TokenCache()
    for i in range(20):
        cache.put("tok", comp, f"s{i}", f"text {i}", TokenizedSample(f"s{i}", list(range(1000 + i, 1200)), None))
    good = tmp_path / "good.npz"
    cache.save(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        TokenCache.load(truncated)
    # A flipped byte inside the ids: the member's CRC no longer matches.
    flipped = bytearray(data)
    at = data.index(np.arange(1000, 1010, dtype=np.int32).tobytes()) + 5
    flipped[at] ^= 0xFF
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="flipped.npz"):
        TokenCache.load(tmp_path / "flipped.npz")
    # An index that points past the ids.
    import io
    import json as json_

    with np.load(good, allow_pickle=False) as f:
        ids, index = f["ids"], json_.loads(f["index"].tobytes())
    index["entries"][next(iter(index["entries"]))][1] = len(ids)
    buf = io.BytesIO()
    np.savez(buf, ids=ids, index=np.frombuffer(json_.dumps(index).encode(), np.uint8))
    (tmp_path / "badindex.npz").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="badindex.npz"):
        TokenCache.load(tmp_path / "badindex.npz")


def test_token_cache_load_does_not_build_python_lists(tmp_path):
    # 200k ids as Python int lists are >= 36 bytes each (int object + list slot), ~7 MB;
    # kept as one int32 array they are 0.8 MB.
    import tracemalloc

    comp = _tok_comp()
    cache = TokenCache()
    for i in range(100):
        cache.put("tok", comp, f"s{i}", f"text {i}", TokenizedSample(f"s{i}", list(range(1000 + i, 3000 + i)), None))
    path = tmp_path / "tokens.npz"
    cache.save(path)
    tracemalloc.start()
    try:
        loaded = TokenCache.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3_000_000, peak
    assert loaded.get("tok", comp, "s42", "text 42").ids == list(range(1042, 3042))


# --- one writer of the token cache file (issue 18: workers on several devices no longer race on it) ---

def test_a_job_hands_over_only_what_it_added_and_the_parent_merges_every_delta(tmp_path):
    from validator.scoring.token_cache import TokenCacheFile

    comp = _tok_comp()
    main = TokenCacheFile(tmp_path / "tokens.npz")
    base = TokenCache()
    base.put("tok", comp, "old", "old text", TokenizedSample("old", [1, 2], None))
    base.save(main.path)
    # two jobs start from the same file and each adds its own samples (what two lanes do at once)
    deltas = []
    for job in ("a", "b"):
        cache = TokenCache.load(main.path)
        cache.put("tok", comp, job, f"{job} text", TokenizedSample(job, [ord(job)], None))
        share = cache.added()
        assert len(share) == 1 and share.get("tok", comp, "old", "old text") is None
        deltas.append(main.delta_path())
        share.save(deltas[-1])
    # a delta a killed validator left behind is folded in too
    left = TokenCache()
    left.put("tok", comp, "left", "left text", TokenizedSample("left", [9], None))
    left.save(tmp_path / "tokens-new-0123.npz")
    assert [main.merge(d) for d in deltas] == [[], []]
    merged = TokenCache.load(main.path)
    got = {s: merged.get("tok", comp, s, f"{s} text") for s in ("old", "a", "b", "left")}
    assert {s: t.ids for s, t in got.items()} == {"old": [1, 2], "a": [97], "b": [98], "left": [9]}
    assert not list(tmp_path.glob("tokens-new-*"))  # every delta consumed


def test_an_unreadable_delta_is_a_note_not_a_lost_cache(tmp_path):
    from validator.scoring.token_cache import TokenCacheFile

    comp = _tok_comp()
    main = TokenCacheFile(tmp_path / "tokens.npz")
    good = TokenCache()
    good.put("tok", comp, "a", "a text", TokenizedSample("a", [1], None))
    good.save(d1 := main.delta_path())
    assert main.merge(d1) == []
    (d2 := main.delta_path()).write_bytes(b"not a zip")
    notes = main.merge(d2)
    assert len(notes) == 1 and "unreadable" in notes[0] and str(d2) in notes[0]
    assert TokenCache.load(main.path).get("tok", comp, "a", "a text").ids == [1]
    assert not d2.exists() and main.merge(main.delta_path()) == []  # a job that added nothing


def test_merge_keeps_the_newest_within_max_entries():
    comp = _tok_comp()
    ours, theirs = TokenCache(max_entries=3), TokenCache()
    for s in ("a", "b", "c"):
        ours.put("tok", comp, s, s, TokenizedSample(s, [1], None))
    for s in ("b", "d"):
        theirs.put("tok", comp, s, s, TokenizedSample(s, [2], None))
    ours.merge(theirs)
    assert [s for s in "abcd" if ours.get("tok", comp, s, s)] == ["b", "c", "d"]  # "a" was the oldest
    assert ours.get("tok", comp, "b", "b").ids == [2]
