"""Tiny tokenizers, models and texts made in the test: nothing comes from a hub."""
from __future__ import annotations

import random
from pathlib import Path

WORDS = (
    "the of and to in is that for it as with was on be by this are from or an at which "
    "model data loss token sample weight chain block miner validator network layer value "
    "energy water light cell plant river history science number system learning students"
).split()


def make_texts(n: int = 64, seed: int = 0, min_words: int = 5, max_words: int = 80) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(min_words, max_words)
        words = [rng.choice(WORDS) for _ in range(k)]
        out.append(" ".join(words).capitalize() + ".")
    return out


def make_tokenizer(out_dir: str | Path, texts: list[str] | None = None, vocab_size: int = 300):
    """Train a byte-level BPE tokenizer (round trips any text) and save it HF-style."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = texts or make_texts(200)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def tiny_config(arch: str = "llama", vocab_size: int = 300, hidden: int = 32, layers: int = 2, **extra):
    """A transformers config of a small causal LM of the given architecture."""
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=4, intermediate_size=hidden * 2, max_position_embeddings=4096,
                  tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch in ("llama", "mistral", "qwen2", "phi3"):
        common["num_key_value_heads"] = 2
    if arch == "gpt_neox":
        common["rotary_pct"] = 0.25
    common.update(extra)
    return AutoConfig.for_model(arch, **common)


def make_model(out_dir: str | Path, arch: str = "llama", vocab_size: int = 300, seed: int = 0,
               tokenizer_dir: str | Path | None = None, **config_extra) -> Path:
    """A random-init causal LM saved as safetensors (plus the tokenizer, if given)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size, **config_extra))
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer_dir is not None:
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                shutil.copy(f, out_dir / f.name)
    return out_dir


def gone_or_zombie(pid: int) -> bool:
    """The process has exited (no /proc entry, or only its zombie is left for the parent to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def train_field(root: str | Path, tok, train_texts: list[str], leader_steps: int = 12,
                better_steps: int = 40) -> dict[str, Path]:
    """Tiny llamas of known quality from one training run on `train_texts`: "old" (untrained),
    "leader" (its snapshot at `leader_steps`), "better" (at `better_steps`) and "worse" (the
    leader with noise on every matrix). Trained on one torch thread (a shared small box)."""
    import torch
    from transformers import AutoModelForCausalLM

    root = Path(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=len(tok)))
        models = {"old": root / "old"}
        model.save_pretrained(models["old"])
        ids = [tok(t)["input_ids"] for t in train_texts]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        rng = random.Random(0)
        for step in range(1, better_steps + 1):
            batch = rng.sample(ids, 8)
            width = max(map(len, batch))
            x = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100)
            for i, b in enumerate(batch):
                x[i, :len(b)] = labels[i, :len(b)] = torch.tensor(b)
            loss = model(input_ids=x, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == leader_steps:
                models["leader"] = root / "leader"
                model.save_pretrained(models["leader"])
        models["better"] = root / "better"
        model.save_pretrained(models["better"])
        worse = AutoModelForCausalLM.from_pretrained(models["leader"])
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in worse.parameters():
                if p.ndim == 2:
                    p.add_(torch.randn(p.shape, generator=gen) * p.std())
        models["worse"] = root / "worse"
        worse.save_pretrained(models["worse"])
    finally:
        torch.set_num_threads(threads)
    return models
