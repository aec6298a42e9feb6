"""Exact sequence packing for the scoring engine: several samples in one row, no padding.

A packed row holds samples back to back; `position_ids` restart at 0 for each sample, and the
attention runs causally inside each sample only (`packed_attention`, registered in transformers'
AttentionInterface as PACKED_ATTENTION). On CPU that is one causal SDPA call per sample (the
same call the reference makes for that sample alone); on CUDA flash-attn's varlen kernel when
it is installed, else the same per-sample loop. No dense block-diagonal mask is ever built
(1.9x slower than the loop).

The segment boundaries travel in a context variable set around the forward (`segments`), not
through the model's kwargs: every architecture's forward then works unchanged, and an attention
call outside such a block fails loudly instead of attending across samples.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

PACKED_ATTENTION = "coldint_packed"

# Architectures verified to score exactly packed (tests/test_packing.py): attention through
# transformers' AttentionInterface, positions (rotary or learned) from position_ids.
PACKED_ARCHS = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
    "Phi3ForCausalLM", "PhiForCausalLM", "GPTNeoXForCausalLM", "GPT2LMHeadModel", "OPTForCausalLM",
    "GemmaForCausalLM", "OlmoForCausalLM", "Olmo2ForCausalLM", "StableLmForCausalLM", "Starcoder2ForCausalLM",
    "CohereForCausalLM", "GraniteForCausalLM",
})


@dataclass(frozen=True)
class _Segments:
    bounds: tuple[int, ...]  # host offsets 0 = b_0 < b_1 < ... < b_n = row length
    cu_seqlens: Any  # the same offsets as an int32 tensor on the device (flash-attn varlen)
    max_len: int


_current: contextvars.ContextVar[_Segments | None] = contextvars.ContextVar("packed_segments", default=None)


def _flash_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs):
    """Causal attention inside each packed sample: query/key/value [1, heads, T, dim] -> [1, T, heads, dim]."""
    import torch

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    seg = _current.get()
    if seg is None:
        raise RuntimeError(f"{PACKED_ATTENTION} attention called outside validator.scoring.packing.segments()")
    if attention_mask is not None:
        raise RuntimeError(f"{PACKED_ATTENTION} attention got a mask; packed rows must carry none")
    if query.shape[0] != 1 or query.shape[2] != seg.bounds[-1]:
        raise RuntimeError(f"packed row of shape {tuple(query.shape)} does not match segments ending at "
                           f"{seg.bounds[-1]}")
    if kwargs.get("softcap") is not None:
        raise RuntimeError("packed attention does not apply attention soft-capping")
    window = kwargs.get("sliding_window")
    if window is not None and seg.max_len > int(window):
        raise RuntimeError(f"packed attention ignores the sliding window {window}, shorter than a sample "
                           f"({seg.max_len} tokens)")
    flash = _flash_varlen() if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) else None
    if flash is not None:
        out = flash(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                    seg.cu_seqlens, seg.cu_seqlens, seg.max_len, seg.max_len, dropout_p=0.0,
                    softmax_scale=scaling, causal=True)
        return out.unsqueeze(0), None
    parts = []
    for b0, b1 in zip(seg.bounds, seg.bounds[1:]):
        # the reference's own call for this sample alone: SDPA with is_causal, no mask
        out, _ = sdpa_attention_forward(module, query[:, :, b0:b1], key[:, :, b0:b1], value[:, :, b0:b1], None,
                                        dropout=0.0, scaling=scaling, is_causal=True)
        parts.append(out)
    return torch.cat(parts, dim=1), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)


def packing_support(model, longest: int | None = None) -> tuple[bool, str]:
    """Whether the engine may pack this model's samples exactly (longest: the longest sample), and why not."""
    name = type(model).__name__
    if name not in PACKED_ARCHS:
        return False, f"{name} is not on the list of architectures verified packed"
    if not getattr(model, "_supports_attention_backend", False):
        return False, f"{name} does not route its attention through transformers' AttentionInterface"
    cfg = model.config
    if getattr(cfg, "attn_logit_softcapping", None) is not None:
        return False, f"{name} soft-caps attention logits"
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None)
    windowed = window is not None and (layer_types is None or "sliding_attention" in layer_types)
    if getattr(cfg, "use_sliding_window", True) is False:
        windowed = False
    if windowed and (longest is None or longest > int(window)):
        return False, f"{name} has a sliding window of {window} tokens, shorter than the longest sample"
    return True, "packed rows, per-sample causal attention"


@contextlib.contextmanager
def packed_model(model) -> Iterator[None]:
    """Within the block the model's attention is packed_attention (restored afterwards)."""
    _register()
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = PACKED_ATTENTION
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]


@contextlib.contextmanager
def segments(lengths: Sequence[int], device: Any) -> Iterator[None]:
    """Within the block packed_attention splits its row into samples of these lengths."""
    import torch

    if not lengths or min(lengths) < 1:
        raise ValueError(f"packed sample lengths must be positive, got {list(lengths)[:8]}")
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + int(n))
    cu = torch.tensor(bounds, dtype=torch.int32).to(device)
    token = _current.set(_Segments(tuple(bounds), cu, max(int(n) for n in lengths)))
    try:
        yield
    finally:
        _current.reset(token)


def packed_inputs(seqs: Sequence[Sequence[int]]):
    """input_ids and position_ids [1, sum(len)] of samples back to back, positions restarting per sample."""
    import torch

    ids = torch.cat([torch.as_tensor(s, dtype=torch.long) for s in seqs])[None, :]
    pos = torch.cat([torch.arange(len(s), dtype=torch.long) for s in seqs])[None, :]
    return ids, pos
