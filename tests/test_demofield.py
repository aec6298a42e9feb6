"""The demo field: stdlib corpus, a round-tripping tokenizer, models ordered by training."""
from __future__ import annotations

import inspect
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

import constants
from validator.demo import field as demofield

SMALL = dict(hidden=64, layers=2, heads=4, seq_len=64, batch=8, lr=3e-3)
STEPS = (0, 30, 120)


def _lines(path):
    return path.read_bytes().splitlines()


@pytest.fixture(scope="module")
def stdlib_docs():
    return demofield.stdlib_docstrings()


@pytest.fixture(scope="module")
def field(tmp_path_factory, stdlib_docs):
    # Parsing the stdlib takes seconds; the parse itself is tested once, in
    # test_corpus_is_deterministic, so the field reuses its result.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demofield, "stdlib_docstrings", lambda root=None: list(stdlib_docs))
        return demofield.build_field(tmp_path_factory.mktemp("field"), steps=STEPS, seed=0, **SMALL)


@pytest.fixture(scope="module")
def tokenizer(field):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(field["tokenizer"]))


def test_corpus_is_deterministic_and_imports_nothing(field, tmp_path):
    before = set(sys.modules)
    corpus = demofield.build_corpus(tmp_path)
    assert set(sys.modules) == before  # docstrings are parsed, never imported (antigravity!)
    assert "antigravity" not in sys.modules and "this" not in sys.modules
    for name in ("train.jsonl", "eval.jsonl"):
        assert (corpus / name).read_bytes() == (field["corpus"] / name).read_bytes()


def test_corpus_is_clean_unique_and_split(field):
    train = demofield.read_texts(field["corpus"] / "train.jsonl")
    held_out = demofield.read_texts(field["corpus"] / "eval.jsonl")
    assert len(train) > 1000 and len(held_out) > 100
    docs = train + held_out
    assert len(docs) == len(set(docs)) <= constants.DEMO_MAX_DOCS
    assert abs(len(held_out) / len(docs) - constants.DEMO_EVAL_FRACTION) < 0.03
    for text in docs:
        assert constants.DEMO_MIN_DOC_CHARS <= len(text) <= constants.DEMO_MAX_DOC_CHARS
        assert text == text.strip() and "\t" not in text and "\n\n\n" not in text
        assert all(line == line.rstrip() for line in text.splitlines())


def test_corpus_holds_real_stdlib_docstrings(field):
    import json as json_module

    docs = set(demofield.read_texts(field["corpus"] / "train.jsonl"))
    docs |= set(demofield.read_texts(field["corpus"] / "eval.jsonl"))
    # Independently: the docstring as the imported function carries it (json is harmless).
    expected = inspect.getdoc(json_module.dumps)
    assert len(expected) < constants.DEMO_MAX_DOC_CHARS
    assert demofield._clean(expected) in docs


def test_max_docs_keeps_a_fixed_subset(field, tmp_path, monkeypatch, stdlib_docs):
    monkeypatch.setattr(demofield, "stdlib_docstrings", lambda root=None: list(stdlib_docs))
    small = demofield.build_corpus(tmp_path, max_docs=300)
    lines = _lines(small / "train.jsonl") + _lines(small / "eval.jsonl")
    full = set(_lines(field["corpus"] / "train.jsonl") + _lines(field["corpus"] / "eval.jsonl"))
    assert len(lines) == len(set(lines)) == 300
    assert set(lines) <= full
    # a document's side of the split does not depend on max_docs
    assert set(_lines(small / "eval.jsonl")) <= set(_lines(field["corpus"] / "eval.jsonl"))


def test_tokenizer_round_trips_and_has_eos(field, tokenizer):
    assert (field["tokenizer"] / "tokenizer.json").is_file()
    assert (field["tokenizer"] / "tokenizer_config.json").is_file()
    assert len(tokenizer) == constants.DEMO_VOCAB_SIZE
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == "<|endoftext|>"
    texts = demofield.read_texts(field["corpus"] / "eval.jsonl")
    texts += ["  two leading spaces\tand a tab\r\n", "unicode: naïve café — 東京 🚀", "x" * 3000, ""]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    # BPE was learned: far fewer tokens than bytes on held-out text
    sample = "\n".join(texts[:50])
    assert len(tokenizer(sample)["input_ids"]) < len(sample.encode()) / 2.5


def _heldout_loss(model_dir, tokenizer, texts):
    """Mean loss per token and the summed loss per text: plain logits + cross_entropy."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    total, n, per_text = 0.0, 0, []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
            logits = model(ids).logits[0, :-1].float()
            loss = F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            per_text.append(loss)
            total += loss
            n += ids.shape[1] - 1
    return total / n, per_text


def test_more_steps_give_lower_heldout_loss(field, tokenizer):
    texts = demofield.read_texts(field["corpus"] / "eval.jsonl")[:40]
    results = {s: _heldout_loss(field["models"][s], tokenizer, texts) for s in STEPS}
    mean = {s: results[s][0] for s in STEPS}
    print("held-out loss per token:", {s: round(v, 3) for s, v in mean.items()})
    # a random init predicts about uniformly over the vocabulary
    assert abs(mean[0] - math.log(constants.DEMO_VOCAB_SIZE)) < 0.3
    assert mean[0] - mean[30] > 0.3
    assert mean[30] - mean[120] > 0.3
    # per sample too, which is what the validator's win rule compares
    beats = sum(a < b for a, b in zip(results[120][1], results[0][1]))
    assert beats >= 0.9 * len(texts)


def test_model_dirs_are_safetensors_llama_with_tokenizer(field):
    from transformers import AutoConfig, AutoTokenizer

    for steps, path in field["models"].items():
        assert (path / "model.safetensors").is_file()
        assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))
        config = AutoConfig.from_pretrained(str(path))
        assert config.architectures == ["LlamaForCausalLM"]
        assert config.hidden_size == SMALL["hidden"] and config.num_hidden_layers == SMALL["layers"]
        tok = AutoTokenizer.from_pretrained(str(path))
        assert len(tok) == config.vocab_size
        assert config.eos_token_id == tok.eos_token_id


def test_train_model_is_deterministic_and_equals_the_field_snapshot(field, tmp_path):
    a = demofield.train_model(field["corpus"], field["tokenizer"], tmp_path / "a", steps=30, seed=0, **SMALL)
    weights = (a / "model.safetensors").read_bytes()
    assert weights == (field["models"][30] / "model.safetensors").read_bytes()
    b = demofield.train_model(field["corpus"], field["tokenizer"], tmp_path / "b", steps=0, seed=1, **SMALL)
    assert (b / "model.safetensors").read_bytes() != (field["models"][0] / "model.safetensors").read_bytes()


def test_build_field_reuses_a_finished_build(field, tmp_path):
    out = field["models"][0].parent.parent
    again = demofield.build_field(out, steps=STEPS, seed=0, **SMALL)
    assert again["reused"] is True and field["reused"] is False
    assert again["models"] == field["models"]
    assert json.loads((out / "field.json").read_text())["settings"]["steps"] == list(STEPS)
    assert set(field["seconds"]) == {"corpus", "tokenizer", "models", "total"}
    assert field["train_loss"][0] is None and field["train_loss"][120] < field["train_loss"][30]


def test_bad_inputs_are_named(field, tmp_path):
    with pytest.raises(ValueError, match="max_docs"):
        demofield.build_corpus(tmp_path, max_docs=1)
    with pytest.raises(ValueError, match="vocab_size"):
        demofield.train_tokenizer(field["corpus"], tmp_path / "tok", vocab_size=100)
    with pytest.raises(ValueError, match="hidden"):
        demofield.train_model(field["corpus"], field["tokenizer"], tmp_path / "m", steps=1, seed=0, hidden=30)
    with pytest.raises(ValueError, match="steps"):
        demofield.train_model(field["corpus"], field["tokenizer"], tmp_path / "m", steps=-1, seed=0)
    with pytest.raises(FileNotFoundError, match="stdlib directory"):
        demofield.stdlib_docstrings(tmp_path / "nowhere")
