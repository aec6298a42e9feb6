"""The scoring engine: a loaded model's per-sample summed cross-entropy, two ways.

- `reference_losses`: one sample at a time through `model(ids).logits` (full fp32 logits).
- `engine_losses`: length-sorted batches under a token budget, right padding without a mask
  (padding never reaches a real token under causal attention) or exact packing, one decoder
  forward per batch, the loss from the final hidden states in chunks (never a whole
  [tokens, vocab] logits tensor), one device-to-host copy per batch. Only for heads it knows
  exactly (`engine_supported`); anything else takes the reference path.

validator.scoring.job feeds it tokens (the live rules) and validator.scoring.streaming reuses its parts to
score a model layer by layer; both import from here, never the other way. Models are loaded by
validator.scoring.model_load.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import constants

log = logging.getLogger(__name__)
INF = float("inf")


class ScoringError(Exception):
    """A model-level scoring failure: the model scores inf on every sample this step.

    reason: "tokenizer" (no usable tokenizer: see validator.scoring.tokens rules C1-C4), "vocab" (a
    token id outside the embedding), "load", "forward", "oom".
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _device(device: Any):
    import torch

    return device if isinstance(device, torch.device) else torch.device(device)


def reference_losses(model, token_lists: Sequence[Sequence[int] | None], device: Any) -> list[float]:
    """One sample at a time through model(ids).logits in fp32: the definition of the loss."""
    import torch
    import torch.nn.functional as F

    dev = _device(device)
    out: list[float] = []
    with torch.inference_mode():
        for ids in token_lists:
            if ids is None:
                out.append(INF)
                continue
            if len(ids) < 2:
                out.append(0.0)  # nothing to predict
                continue
            t = torch.tensor([list(ids)], dtype=torch.long, device=dev)
            logits = model(input_ids=t, use_cache=False).logits[0].float()
            out.append(float(F.cross_entropy(logits[:-1], t[0, 1:], reduction="sum")))
    return out


# Heads the engine reproduces exactly, by architecture class: the class's forward is
# `logits = lm_head(last_hidden_state)` followed by the transform named here (read from
# transformers' modeling code). Anything not listed takes the reference path.
def _no_transform(model) -> tuple[Callable | None, str]:
    return None, "plain linear head"


def _softcap(model) -> tuple[Callable | None, str]:
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap is None:
        return None, "plain linear head (no soft-capping configured)"
    cap = float(cap)

    def apply(logits):
        import torch

        return torch.tanh(logits / cap) * cap

    return apply, f"logit soft-capping at {cap} applied per chunk"


def _cohere_scale(model) -> tuple[Callable | None, str]:
    scale = float(model.logit_scale)
    return (lambda logits: logits * scale), f"logit scale {scale} applied per chunk"


def _granite_scaling(model) -> tuple[Callable | None, str]:
    div = float(model.config.logits_scaling)
    return (lambda logits: logits / div), f"logits divided by logits_scaling {div} per chunk"


_ENGINE_HEADS: dict[str, Callable] = {
    "LlamaForCausalLM": _no_transform,
    "MistralForCausalLM": _no_transform,
    "MixtralForCausalLM": _no_transform,
    "Qwen2ForCausalLM": _no_transform,
    "Qwen3ForCausalLM": _no_transform,
    "Phi3ForCausalLM": _no_transform,
    "PhiForCausalLM": _no_transform,  # lm_head has a bias: F.linear applies it
    "GPTNeoXForCausalLM": _no_transform,
    "GPT2LMHeadModel": _no_transform,  # lm_head tied to the input embedding
    "OPTForCausalLM": _no_transform,  # the decoder's project_out runs inside the base model
    "GemmaForCausalLM": _no_transform,
    "OlmoForCausalLM": _no_transform,
    "Olmo2ForCausalLM": _no_transform,
    "StableLmForCausalLM": _no_transform,
    "Starcoder2ForCausalLM": _no_transform,
    "Gemma2ForCausalLM": _softcap,
    "CohereForCausalLM": _cohere_scale,
    "GraniteForCausalLM": _granite_scaling,
}


@dataclass
class _EngineParts:
    base: Any  # the decoder: input ids -> final (normed) hidden states
    weight: Any  # [vocab, hidden]
    bias: Any | None
    transform: Callable | None
    reason: str


def _engine_parts(model) -> tuple[_EngineParts | None, str]:
    import torch

    name = type(model).__name__
    head_fn = _ENGINE_HEADS.get(name)
    if head_fn is None:
        return None, f"{name} is not on the engine's list of verified heads"
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        return None, f"{name} has no separate base model to run"
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        return None, f"{name} output embedding is {type(head).__name__}, not a Linear layer"
    transform, reason = head_fn(model)
    return _EngineParts(base, head.weight, head.bias, transform, reason), reason


def engine_supported(model) -> tuple[bool, str]:
    """Whether engine_losses computes this model's losses exactly, and why (or why not)."""
    parts, reason = _engine_parts(model)
    return parts is not None, reason


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return True
    # The CPU allocator raises a plain RuntimeError.
    return isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e))


def loss_chunk_tokens(vocab: int, device: Any) -> int:
    """Hidden-state rows per logsumexp chunk: bounded in rows and in logits elements."""
    elements = constants.LOSS_CHUNK_ELEMENTS_GPU if _device(device).type == "cuda" else constants.LOSS_CHUNK_ELEMENTS_CPU
    return max(1, min(constants.LOSS_CHUNK_TOKENS, elements // max(1, vocab)))


def chunked_ce_sums(hidden, targets, owner, n_owners: int, weight, bias=None, transform=None, chunk: int = 4096,
                    buffer=None):
    """Per-owner summed cross-entropy from hidden states, chunk by chunk (pure math).

    hidden [T, H], targets [T], owner [T] (index of the sample each row belongs to).
    loss_t = logsumexp(l_t) - l_t[target_t] with l_t = transform(h_t W^T + b) upcast to
    fp32 (F.cross_entropy computes exactly that, fused); the model-dtype matmul then fp32
    upcast mirrors `model(ids).logits.float()`. `buffer` ([>= chunk, vocab], weight dtype)
    receives each chunk's logits: on CPU, reusing it avoids a fresh zeroed mapping (page
    faults) per chunk.
    """
    import torch
    import torch.nn.functional as F

    sums = torch.zeros(n_owners, dtype=torch.float64, device=hidden.device)
    for c0 in range(0, hidden.shape[0], chunk):
        h = hidden[c0:c0 + chunk]
        if buffer is not None:
            logits = torch.matmul(h, weight.t(), out=buffer[:h.shape[0]])
            if bias is not None:
                logits.add_(bias)
        else:
            logits = F.linear(h, weight, bias)
        if transform is not None:
            logits = transform(logits)
        loss = F.cross_entropy(logits.float(), targets[c0:c0 + chunk], reduction="none")
        del logits
        sums.index_add_(0, owner[c0:c0 + chunk], loss.double())
    return sums


# Right padding never reaches a real token under causal attention, and positions count from 0
# either way: without the padding mask SDPA takes its faster is_causal kernel and the losses are
# bit-identical (fp32, measured per architecture in tests/test_packing.py). Architectures whose
# positions or attention read the mask would keep it; none of _ENGINE_HEADS does.
_PAD_MASK_NEEDED: frozenset[str] = frozenset()


def _padded_inputs(seqs: list[Sequence[int]], with_mask: bool):
    """Right-padded ids [n, width], the padding mask (or None), and the flat index of each
    predicting row (row t of a sample predicts token t+1, t < len-1), all on the host."""
    import torch

    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    n, width = len(seqs), int(lens.max())
    ids = torch.zeros((n, width), dtype=torch.long)  # pad id 0: never a target, never attended by a real token
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    padded = bool((lens < width).any())
    mask = (torch.arange(width)[None, :] < lens[:, None]).long() if padded and with_mask else None
    flat = torch.cat([row * width + torch.arange(len(s) - 1) for row, s in enumerate(seqs)])
    return ids, mask, flat


def _batch_losses(parts: _EngineParts, seqs: list[Sequence[int]], dev, chunk: int, buffer=None,
                  layout: str = "padded") -> list[float]:
    """Per-sample summed losses of one batch: layout "padded" (right padding, no mask),
    "masked" (right padding with the padding mask) or "packed" (one row, validator.scoring.packing)."""
    import torch

    from validator.scoring import packing

    n = len(seqs)
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(n), lens - 1)
    if layout == "packed":
        ids, pos = packing.packed_inputs(seqs)
        starts = torch.cumsum(lens, 0) - lens
        # flat indices built on the host: the device never syncs to count a boolean mask
        flat = torch.cat([int(b) + torch.arange(len(s) - 1) for b, s in zip(starts, seqs)])
        ids, pos, flat, owner = ids.to(dev), pos.to(dev), flat.to(dev), owner.to(dev)
        with packing.segments([len(s) for s in seqs], dev):
            hidden = parts.base(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
    elif layout in ("padded", "masked"):
        ids, mask, flat = _padded_inputs(seqs, with_mask=layout == "masked")
        ids, flat, owner = ids.to(dev), flat.to(dev), owner.to(dev)
        mask = mask.to(dev) if mask is not None else None
        hidden = parts.base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    else:
        raise ValueError(f"unknown batch layout {layout!r}")
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat)
    del hidden
    targets = ids.reshape(-1).index_select(0, flat + 1)
    sums = chunked_ce_sums(h, targets, owner, n, parts.weight, parts.bias, parts.transform, chunk, buffer)
    return sums.cpu().tolist()  # the batch's one device-to-host copy


def _verify_probe(lengths: dict[int, int]) -> int | None:
    """The sample whose engine loss is re-checked against the reference: short but not trivial."""
    if not lengths:
        return None
    long_enough = [i for i, n in lengths.items() if n >= constants.ENGINE_VERIFY_MIN_TOKENS]
    if long_enough:
        return min(long_enough, key=lambda i: (lengths[i], i))
    return max(lengths, key=lambda i: (lengths[i], -i))


def engine_losses(model, token_lists: Sequence[Sequence[int] | None], device: Any,
                  token_budget: int | None = None, *, verify: bool = True, packed: bool = False) -> list[float]:
    """Same numbers as reference_losses, fast: see the module docstring.

    Batches hold at most `token_budget` padded tokens (longest sample x rows; a sample
    longer than the budget runs alone). On out-of-memory the budget halves and the batch
    is retried; a single sample that does not fit raises ScoringError("oom").
    With verify, one sample is re-scored by the reference path afterwards and a
    disagreement sends the whole model to the reference path.
    With packed, samples share rows without padding (validator.scoring.packing; a batch holds at most
    `token_budget` real tokens) where the architecture allows it, else padded batches as usual.
    """
    return _engine_run(model, token_lists, device, token_budget, verify, packed=packed)[0]


def _choose_layout(model, longest: int, packed: bool, pad_mask: bool | None) -> tuple[str, str]:
    """The batch layout for this model and why: "packed", "padded" (no mask) or "masked"."""
    from validator.scoring import packing

    note = ""
    if packed:
        ok, why = packing.packing_support(model, longest)
        if ok:
            return "packed", why
        log.info("packing not used: %s", why)
        note = f"packing not used: {why}; "
    if pad_mask is None:
        pad_mask = type(model).__name__ in _PAD_MASK_NEEDED
    return ("masked", note + "right padding with its mask") if pad_mask else \
        ("padded", note + "right padding, no mask")


def _engine_run(model, token_lists, device, token_budget=None, verify=True, *, packed: bool = False,
                pad_mask: bool | None = None) -> tuple[list[float], str]:
    import torch

    parts, reason = _engine_parts(model)
    if parts is None:
        log.info("scoring with the reference path: %s", reason)
        return reference_losses(model, token_lists, device), f"reference: {reason}"
    dev = _device(device)
    if token_budget is None:
        token_budget = constants.TOKEN_BUDGET_GPU if dev.type == "cuda" else constants.TOKEN_BUDGET_CPU
    if token_budget < 1:
        raise ValueError(f"token_budget must be positive, got {token_budget}")
    chunk = loss_chunk_tokens(int(parts.weight.shape[0]), dev)
    buffer = None  # CUDA's caching allocator reuses memory by itself

    out = [INF if ids is None else 0.0 for ids in token_lists]
    lengths = {i: len(ids) for i, ids in enumerate(token_lists) if ids is not None and len(ids) >= 2}
    # Longest first: the largest activations come first, so an out-of-memory shows early.
    todo = sorted(lengths, key=lambda i: (-lengths[i], i))
    layout, layout_reason = _choose_layout(model, lengths[todo[0]] if todo else 0, packed, pad_mask)
    reason = f"{reason}; {layout_reason}"
    pos, budget = 0, int(token_budget)
    with contextlib.ExitStack() as stack, torch.inference_mode():
        if layout == "packed":
            from validator.scoring import packing

            stack.enter_context(packing.packed_model(model))
        if dev.type == "cpu" and todo:
            rows_needed = min(chunk, sum(lengths[i] - 1 for i in todo))
            buffer = torch.empty((rows_needed, parts.weight.shape[0]), dtype=parts.weight.dtype)
        while pos < len(todo):
            if layout == "packed":  # real tokens under the budget, at least one sample
                end, used = pos + 1, lengths[todo[pos]]
                while end < len(todo) and used + lengths[todo[end]] <= budget:
                    used += lengths[todo[end]]
                    end += 1
                batch = todo[pos:end]
            else:  # padded tokens (longest x rows) under the budget
                batch = todo[pos:pos + max(1, budget // lengths[todo[pos]])]
            oom = False
            try:
                sums = _batch_losses(parts, [token_lists[i] for i in batch], dev, chunk, buffer, layout)
            except Exception as e:
                if not _is_oom(e):
                    raise
                if len(batch) == 1:
                    raise ScoringError("oom", f"one sample of {lengths[batch[0]]} tokens does not fit in memory") from e
                oom = True
            if oom:  # outside the except block: the traceback no longer pins the batch's tensors
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                budget = max(1, budget // 2)
                log.warning("out of memory on a batch of %d x %d tokens; token budget halved to %d",
                            len(batch), lengths[batch[0]], budget)
                continue
            for i, s in zip(batch, sums):
                out[i] = s
            pos += len(batch)

    probe = _verify_probe(lengths) if verify else None
    if probe is not None:
        ref = reference_losses(model, [token_lists[probe]], dev)[0]
        low_precision = parts.weight.dtype not in (torch.float32, torch.float64)
        rtol = constants.ENGINE_VERIFY_RTOL_LOWP if low_precision else constants.ENGINE_VERIFY_RTOL_FP32
        if not (math.isfinite(out[probe]) and math.isfinite(ref)):
            # a NaN/inf model (e.g. a NaN weight): both paths agree it is broken, and it never
            # wins a sample; re-running every sample through full-vocabulary logits gains nothing
            return out, f"engine ({reason}; non-finite loss, reference probe skipped)"
        if not (abs(out[probe] - ref) <= rtol * max(abs(ref), 1e-6)):
            log.warning("engine loss %.6g differs from the reference %.6g on sample %d (%s); "
                        "using the reference path for this model", out[probe], ref, probe, reason)
            return reference_losses(model, token_lists, dev), "reference: engine disagreed with the reference"
    return out, f"engine ({reason})"
