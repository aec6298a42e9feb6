"""Material of the embedded-default demo, built with nothing from the network.

The demo needs what a real subnet has: text to sample, a tokenizer, and a field of
miners' models of clearly different quality. Here:

- text: the docstrings of the Python standard library, read from its .py files with
  `ast` (never imported: importing e.g. `antigravity` opens a browser);
- a byte-level BPE tokenizer trained on them (so any text round trips);
- tiny LlamaForCausalLM models, trained for different numbers of AdamW steps from the
  same seeded init, so more steps means a lower held-out loss.

Layout of build_field(out_dir):
  out_dir/corpus/{train,eval}.jsonl   one {"text": ...} per line
  out_dir/tokenizer/                  tokenizer.json, tokenizer_config.json, ...
  out_dir/models/step-0000/ ...       model.safetensors, config.json + the tokenizer files
  out_dir/field.json                  manifest; a later build with the same settings reuses it
"""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import re
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import constants

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
# Directories of the stdlib whose .py files are not library documentation (tests, test data
# with deliberately broken syntax) or not part of every install.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


# --- corpus --------------------------------------------------------------------------------


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _clean(text: str) -> str:
    """Trailing spaces off, tabs to spaces, at most one blank line in a row."""
    lines = [line.rstrip() for line in text.expandtabs(4).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _cap(text: str, max_chars: int) -> str:
    """Cut a long text at the last whitespace before max_chars (as the validator caps samples)."""
    if len(text) <= max_chars:
        return text
    cut = max(text.rfind(" ", 0, max_chars), text.rfind("\n", 0, max_chars))
    return text[: cut if cut > 0 else max_chars].rstrip()


_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_BLOCK_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")


def _definitions(tree: ast.Module):
    """Module, classes and functions in source order (pre-order).

    Only statement blocks are visited (a docstring never hides inside an expression),
    which is several times cheaper than ast.walk over every node.
    """
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, _DOC_NODES):
            yield node
        children = [c for f in _BLOCK_FIELDS for c in getattr(node, f, ()) or ()
                    if isinstance(c, (ast.stmt, ast.excepthandler, ast.match_case))]
        stack.extend(reversed(children))


def stdlib_docstrings(root: Path | None = None) -> list[str]:
    """Every module/class/function docstring under the stdlib dir, in a fixed order."""
    root = root or _stdlib_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"stdlib directory {root}: not found")
    docs: list[str] = []
    skipped = 0
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS.intersection(path.relative_to(root).parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):
            skipped += 1  # a file for another Python version; its docstrings are not needed
            continue
        for node in _definitions(tree):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                docs.append(doc)
    if skipped:
        logger.info("skipped %d stdlib files that do not parse", skipped)
    return docs


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def build_corpus(out_dir: Path, max_docs: int = constants.DEMO_MAX_DOCS) -> Path:
    """Write out_dir/corpus/{train,eval}.jsonl from the stdlib's docstrings; return the dir.

    Deterministic for a Python install: documents are cleaned, capped, deduplicated, those
    shorter than DEMO_MIN_DOC_CHARS dropped, then ordered by their sha256 (a fixed shuffle
    over all modules) and the first max_docs kept. A document goes to eval when its hash
    falls in the DEMO_EVAL_FRACTION bucket, so the split does not depend on max_docs.
    """
    if not isinstance(max_docs, int) or max_docs < 2:
        raise ValueError(f"max_docs {max_docs!r}: need at least 2 (one train, one eval document)")
    seen: set[str] = set()
    docs: list[str] = []
    for raw in stdlib_docstrings():
        text = _cap(_clean(raw), constants.DEMO_MAX_DOC_CHARS)
        if len(text) >= constants.DEMO_MIN_DOC_CHARS and text not in seen:
            seen.add(text)
            docs.append(text)
    docs.sort(key=_digest)
    docs = docs[:max_docs]
    bucket = int(constants.DEMO_EVAL_FRACTION * 2**16)
    train = [d for d in docs if int.from_bytes(_digest(d)[-2:], "big") >= bucket]
    held_out = [d for d in docs if int.from_bytes(_digest(d)[-2:], "big") < bucket]
    if not train or not held_out:
        raise ValueError(f"max_docs {max_docs}: too few documents for a train/eval split")
    corpus_dir = Path(out_dir) / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", train), ("eval.jsonl", held_out)):
        with open(corpus_dir / name, "w", encoding="utf-8") as f:
            for text in part:
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    logger.info("corpus: %d train, %d eval documents in %s", len(train), len(held_out), corpus_dir)
    return corpus_dir


def read_texts(path: Path) -> list[str]:
    """The "text" of each line of a jsonl file written by build_corpus."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


# --- tokenizer -------------------------------------------------------------------------------


def train_tokenizer(corpus_dir: Path, out_dir: Path, vocab_size: int = constants.DEMO_VOCAB_SIZE) -> Path:
    """Byte-level BPE on train.jsonl, saved as a PreTrainedTokenizerFast; returns out_dir.

    Byte-level pre-tokenizer and decoder, no normalizer, no prefix space and no clean-up
    of spaces on decode: that is what makes decode(encode(text)) == text for any text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257:
        raise ValueError(f"vocab_size {vocab_size}: byte-level BPE needs at least 257 (256 bytes + EOS)")
    texts = read_texts(Path(corpus_dir) / "train.jsonl")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   clean_up_tokenization_spaces=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


# --- models ----------------------------------------------------------------------------------


def _token_chunks(corpus_dir: Path, tokenizer, seq_len: int):
    """train.jsonl as one token stream (EOS after each document) cut into seq_len rows."""
    import torch

    texts = read_texts(Path(corpus_dir) / "train.jsonl")
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"corpus {corpus_dir}: fewer than seq_len={seq_len} tokens to train on")
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _llama_config(vocab_size: int, eos_id: int, hidden: int, layers: int, heads: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=constants.MAX_SEQUENCE_LEN, tie_word_embeddings=False,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
        architectures=["LlamaForCausalLM"],
    )


def _save(model, tokenizer_dir: Path, out_dir: Path) -> None:
    from transformers.utils import logging as hf_logging

    out_dir.mkdir(parents=True, exist_ok=True)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a one-shard bar per snapshot would only clutter the demo
    try:
        model.save_pretrained(out_dir)  # transformers >= 5 writes safetensors only
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if not (out_dir / "model.safetensors").is_file():
        raise RuntimeError(f"model dir {out_dir}: save_pretrained wrote no model.safetensors")
    for f in sorted(Path(tokenizer_dir).iterdir()):
        if f.is_file():
            shutil.copy(f, out_dir / f.name)


def _train(corpus_dir: Path, tokenizer_dir: Path, snapshots: dict[int, Path], seed: int,
           hidden: int, layers: int, heads: int, seq_len: int, batch: int, lr: float) -> dict[int, float | None]:
    """One seeded training run, saving the model after each step count in `snapshots`.

    The schedule (warm-up, then constant lr) does not depend on the total number of steps,
    so the snapshot after s steps is the model train_model(steps=s) gives: a field of
    models costs one run to the largest step count. Returns the last batch loss per snapshot.
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    if any((not isinstance(s, int)) or s < 0 for s in snapshots):
        raise ValueError(f"steps {sorted(snapshots)}: must be non-negative ints")
    if hidden % heads:
        raise ValueError(f"hidden {hidden}: must be a multiple of heads={heads}")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    chunks = _token_chunks(corpus_dir, tokenizer, seq_len)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(len(tokenizer), tokenizer.eos_token_id, hidden, layers, heads))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = constants.DEMO_WARMUP_STEPS
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(chunks), generator=gen)
    pos = 0
    losses: dict[int, float | None] = {}
    last: float | None = None
    for step in range(max(snapshots) + 1):
        if step in snapshots:
            _save(model, tokenizer_dir, Path(snapshots[step]))
            losses[step] = last
        if step == max(snapshots):
            break
        if pos + batch > len(order):  # next epoch, reshuffled
            order, pos = torch.randperm(len(chunks), generator=gen), 0
        ids = chunks[order[pos: pos + batch]]
        pos += batch
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        last = float(loss.detach())
    return losses


def train_model(corpus_dir: Path, tokenizer_dir: Path, out_dir: Path, steps: int, seed: int,
                hidden: int = constants.DEMO_HIDDEN, layers: int = constants.DEMO_LAYERS,
                heads: int = constants.DEMO_HEADS, seq_len: int = constants.DEMO_SEQ_LEN,
                batch: int = constants.DEMO_BATCH, lr: float = constants.DEMO_LR) -> Path:
    """A tiny LlamaForCausalLM, seeded random init plus `steps` AdamW steps on CPU; returns out_dir.

    Saved as safetensors with the tokenizer files beside it. Deterministic for a seed
    (and a torch thread count).
    """
    _train(Path(corpus_dir), Path(tokenizer_dir), {steps: Path(out_dir)}, seed,
           hidden, layers, heads, seq_len, batch, lr)
    return Path(out_dir)


# --- the field ---------------------------------------------------------------------------------


def build_field(out_dir: Path, steps: tuple[int, ...] = constants.DEMO_FIELD_STEPS, seed: int = 0,
                force: bool = False, **train_kwargs) -> dict:
    """Corpus, tokenizer and one model per step count under out_dir.

    Returns {"corpus": dir, "tokenizer": dir, "models": {steps: dir}, "train_loss":
    {steps: last batch loss or None}, "seconds": {part: s}, "reused": bool}. A finished build with the same
    settings (and Python version, which decides the corpus) is reused unless force.
    """
    out_dir = Path(out_dir)
    steps = tuple(sorted(set(steps)))
    if not steps:
        raise ValueError("steps: need at least one step count")
    settings = {"steps": list(steps), "seed": seed, "train": train_kwargs,
                "python": sys.version.split()[0], "max_docs": constants.DEMO_MAX_DOCS,
                "vocab_size": constants.DEMO_VOCAB_SIZE}
    manifest = out_dir / "field.json"
    if manifest.is_file() and not force:
        saved = json.loads(manifest.read_text())
        if saved.get("settings") == settings:
            return _field_from_json(out_dir, saved)
    t0 = time.monotonic()
    corpus = build_corpus(out_dir, constants.DEMO_MAX_DOCS)
    t1 = time.monotonic()
    tok = train_tokenizer(corpus, out_dir / "tokenizer", constants.DEMO_VOCAB_SIZE)
    t2 = time.monotonic()
    models = {s: out_dir / "models" / f"step-{s:04d}" for s in steps}
    train_loss = _train(corpus, tok, models, seed, **{**_TRAIN_DEFAULTS, **train_kwargs})
    t3 = time.monotonic()
    seconds = {"corpus": t1 - t0, "tokenizer": t2 - t1, "models": t3 - t2, "total": t3 - t0}
    field = {"corpus": corpus, "tokenizer": tok, "models": models, "train_loss": train_loss,
             "seconds": seconds, "reused": False}
    data = {"settings": settings, "models": {str(s): p.name for s, p in models.items()},
            "train_loss": {str(s): v for s, v in train_loss.items()}, "seconds": seconds}
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(manifest)  # written last: its presence means the field is complete
    logger.info("demo field built in %.1fs: %s", seconds["total"],
                ", ".join(f"{s} steps" for s in steps))
    return field


_TRAIN_DEFAULTS = dict(hidden=constants.DEMO_HIDDEN, layers=constants.DEMO_LAYERS,
                       heads=constants.DEMO_HEADS, seq_len=constants.DEMO_SEQ_LEN,
                       batch=constants.DEMO_BATCH, lr=constants.DEMO_LR)


def _field_from_json(out_dir: Path, saved: dict) -> dict:
    return {
        "corpus": out_dir / "corpus", "tokenizer": out_dir / "tokenizer",
        "models": {int(s): out_dir / "models" / name for s, name in saved["models"].items()},
        "train_loss": {int(s): v for s, v in saved["train_loss"].items()},
        "seconds": saved["seconds"], "reused": True,
    }
