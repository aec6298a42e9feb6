"""Layer streaming's plan (pure but for reading the snapshot's file sizes and the free CUDA
memory): whether a model is streamed at all (`should_stream`), how its samples are batched and
grouped under the device memory cap (`plan`), and the cost model (`predicted_seconds`).
validator.scoring.streaming executes the plan.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import constants


class Unsupported(Exception):
    """This model cannot be streamed (the reason says why); score it resident instead."""


@dataclass
class StreamInfo:
    groups: int = 0
    batches: int = 0
    layers: int = 0
    layer_bytes: int = 0  # largest decoder layer, in the scoring dtype
    resident_bytes: int = 0  # embeddings, norm, head: on the device throughout
    weight_bytes_read: int = 0  # bytes of layer weights copied to the device, all groups
    max_layers_resident: int = 0  # decoder layers materialised at once (1: layer-at-a-time)
    seconds_copy: float = 0.0
    seconds_compute: float = 0.0

    def describe(self) -> str:
        return f"streamed ({self.groups} group{'s' * (self.groups != 1)})"


# --- the checkpoint's files, and whether to stream ----------------------------------------------


def weight_files(model_dir: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file holding it (single file or index + shards)."""
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise Unsupported(f"{index}: not readable ({e})") from None
        wmap = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(wmap, dict):
            raise Unsupported(f"{index}: no weight_map")
        out = {}
        for name, shard in wmap.items():
            if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard in (".", ".."):
                raise Unsupported(f"{index}: weight_map names {shard!r}, not a file of the snapshot")
            out[name] = model_dir / shard
        return out
    if single.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(single), framework="pt") as f:
                return {name: single for name in f.keys()}
        except Exception as e:  # noqa: BLE001 - a broken file: the resident load reports it as the model's fault
            raise Unsupported(f"{single}: not readable as safetensors ({type(e).__name__}: {e})") from None
    raise Unsupported(f"{model_dir}: no safetensors weights")


def model_bytes(model_dir: str | os.PathLike) -> int:
    """Bytes of the snapshot's weights on disk (what a resident load needs, roughly)."""
    files = set(weight_files(Path(model_dir)).values())
    return sum(f.stat().st_size for f in files)


def should_stream(model_dir: str | os.PathLike, device: Any, max_device_bytes: int | None) -> int | None:
    """The device budget to stream under, or None to score resident: streamed when a cap is
    given and the weights exceed it, or (CUDA) when they exceed STREAM_FREE_MEMORY_SHARE of
    the free device memory."""
    size = model_bytes(model_dir)
    if max_device_bytes is not None:
        return max_device_bytes if size > max_device_bytes * constants.STREAM_FREE_MEMORY_SHARE else None
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        budget = int(free * constants.STREAM_FREE_MEMORY_SHARE)
        return budget if size > budget else None
    return None


def predicted_seconds(info: StreamInfo, copy_bandwidth: float, flops: float, achieved_flops: float) -> float:
    """The cost model: max(groups x weight bytes / copy bandwidth, flops / achieved flop/s) —
    copies and compute overlap, so the slower of the two sets the time."""
    weights = info.groups * info.layers * info.layer_bytes
    return max(weights / copy_bandwidth if copy_bandwidth > 0 else math.inf,
               flops / achieved_flops if achieved_flops > 0 else math.inf)


# --- the plan -----------------------------------------------------------------------------------------


def plan_batches(lengths: dict[int, int], token_budget: int) -> list[list[int]]:
    """Samples longest first, in batches of at most `token_budget` padded tokens (the engine's rule)."""
    todo = sorted(lengths, key=lambda i: (-lengths[i], i))
    out, pos = [], 0
    while pos < len(todo):
        rows = max(1, token_budget // lengths[todo[pos]])
        out.append(todo[pos:pos + rows])
        pos += rows
    return out


def plan_groups(batches: list[list[int]], lengths: dict[int, int], bytes_per_token: int,
                budget: int) -> list[list[list[int]]]:
    """Consecutive batches whose kept hidden states (padded tokens x bytes_per_token) fit in
    `budget` bytes; a batch that alone exceeds it is a group of its own (the caller checks)."""
    groups: list[list[list[int]]] = []
    used = 0
    for b in batches:
        need = len(b) * lengths[b[0]] * bytes_per_token
        if groups and used + need <= budget:
            groups[-1].append(b)
            used += need
        else:
            groups.append([b])
            used = need
    return groups


@dataclass(frozen=True)
class Shape:
    """What the memory plan needs to know of a model, in bytes of the scoring dtype."""

    hidden: int
    intermediate: int
    vocab: int
    dtype_bytes: int
    resident_bytes: int  # embeddings, final norm, head
    layer_bytes: int  # the largest decoder layer


def plan(lengths: dict[int, int], shape: Shape, cap: int, token_budget: int,
         chunk: int) -> tuple[int, list[list[int]], list[list[list[int]]]]:
    """(token budget, batches, groups) under `cap` bytes of device memory. Fixed: the resident
    parts, one layer and one loss chunk's fp32 logits; per batch token the layer's temporaries
    (MLP and attention); per kept token the hidden state, the layer's output and its share of
    mask and rotary tables. MemoryError when not even one layer fits."""
    fixed = shape.resident_bytes + shape.layer_bytes + chunk * shape.vocab * 4
    if fixed >= cap:
        raise MemoryError(f"one decoder layer ({shape.layer_bytes / 2**20:.1f} MiB), the resident parts "
                          f"({shape.resident_bytes / 2**20:.1f} MiB) and a loss chunk exceed the device memory "
                          f"cap of {cap / 2**20:.1f} MiB")
    per_token_work = (shape.intermediate * 3 + shape.hidden * 6) * shape.dtype_bytes
    room = cap - fixed
    budget = max(1, min(token_budget, room // (2 * per_token_work)))
    batches = plan_batches(lengths, budget)
    groups = plan_groups(batches, lengths, shape.hidden * shape.dtype_bytes * 3, room - budget * per_token_work)
    return budget, batches, groups
