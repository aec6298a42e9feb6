"""Layer-streamed scoring: models larger than the device, with the resident engine's losses.

A 20 B model is 40 GB in bf16; a 24 GB card cannot hold it. Instead of running one sample
through every layer (the live validator's Sliced* classes: batch 1, hidden states to the host
and back between slices), the step's samples are run *layer-major*:

1. The model is built on the meta device (no memory); the safetensors files are opened
   memory-mapped. Everything but the decoder layers (embeddings, final norm, head, rotary
   tables) is loaded on the device and stays there.
2. The samples, sorted by length and batched under a token budget as in the engine, are split
   into groups whose hidden states fit in what the memory cap leaves.
3. Per group: the model's own forward runs up to its first decoder layer (a stand-in layer
   captures the hidden states and every argument the layers get: mask, rotary embeddings,
   positions); then for each layer its weights are copied to the device (the next layer is
   read from the mmap on a thread meanwhile; on CUDA into pinned memory, copied on a side
   stream), run over every batch of the group, and freed; finally the model's forward runs
   again with a stand-in layer that returns the streamed result, so the final norm is the
   model's own, and the loss is the engine's chunked loss (never the full logits).

Weights are read once per group; activations never leave the device. Nothing is returned
before the last group is done, so a crash mid-stream leaves no partial result.

Architectures are those of the engine's verified heads whose non-layer buffers can be rebuilt
(rotary tables); anything else raises Unsupported with the reason, and the caller falls back
to the resident engine. Whether to stream, and the batches and groups: validator.scoring.stream_plan.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import constants
from validator.scoring.stream_plan import Shape, StreamInfo, Unsupported, plan, weight_files

log = logging.getLogger(__name__)
INF = float("inf")


# --- the checkpoint ---------------------------------------------------------------------------------


class Checkpoint:
    """Memory-mapped tensors of a snapshot, read by name in the scoring dtype."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors import safe_open

        self.files = weight_files(model_dir)
        self._open = {p: safe_open(str(p), framework="pt") for p in sorted(set(self.files.values()))}

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str, dtype: Any) -> Any:
        return self._open[self.files[name]].get_tensor(name).to(dtype)


# --- the model on the meta device -----------------------------------------------------------------------


@dataclass
class _Layers:
    parent: Any  # the module holding the layer list
    attr: str  # its attribute name
    prefix: str  # checkpoint name prefix of layer i: f"{prefix}.{i}."
    modules: Any  # the nn.ModuleList


def find_layers(model: Any, n_layers: int) -> _Layers:
    """The decoder's ModuleList of `n_layers` blocks (layers, h, decoder.layers, ...)."""
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers and n_layers > 0:
            parent_name, _, attr = name.rpartition(".")
            return _Layers(model.get_submodule(parent_name) if parent_name else model, attr, name, module)
    raise Unsupported(f"{type(model).__name__}: no list of {n_layers} decoder layers found")


def _n_layers(config: Any) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        n = getattr(config, key, None)
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    raise Unsupported(f"{type(config).__name__}: no layer count")


def _tensor_bytes(module: Any, dtype_bytes: int) -> int:
    return sum(p.numel() for p in module.parameters()) * dtype_bytes


def build_meta_model(model_dir: Path, dtype: Any) -> Any:
    """The causal LM of `model_dir` on the meta device: shapes only, built-in classes only."""
    import torch
    from transformers import AutoModelForCausalLM

    from validator.scoring.engine import ScoringError
    from validator.scoring.model_load import model_config

    try:
        config = model_config(model_dir)  # bounded read, kernel and quantizer keys stripped
    except ScoringError as e:
        raise Unsupported(str(e)) from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa",
                                                 trust_remote_code=False)
    return model.eval()


def load_resident(model: Any, ckpt: Checkpoint, layers: _Layers, dev: Any, dtype: Any) -> int:
    """Everything but the decoder layers onto the device, from the checkpoint; tied weights
    tied, rotary tables rebuilt. Returns their bytes. Unsupported when something stays meta."""
    skip = layers.prefix + "."
    state = {}
    for name, p in model.named_parameters():
        if name.startswith(skip):
            continue
        if name in ckpt:
            state[name] = ckpt.get(name, dtype).to(dev)
    for name, b in model.named_buffers():
        if not name.startswith(skip) and name in ckpt:
            state[name] = ckpt.get(name, b.dtype).to(dev)
    model.load_state_dict(state, strict=False, assign=True)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    _rebuild_buffers(model, skip, dev)
    meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if not n.startswith(skip) and t.is_meta]
    if meta:
        raise Unsupported(f"{type(model).__name__}: {meta[:3]} neither in the checkpoint nor rebuildable")
    return sum(t.numel() * t.element_size() for n, t in model.named_parameters() if not n.startswith(skip))


def _rebuild_buffers(model: Any, skip: str, dev: Any) -> None:
    """Non-persistent buffers (rotary inverse frequencies) are not in the checkpoint: build the
    module that owns them again, on the device, from its config."""
    for name, module in list(model.named_modules()):
        if name.startswith(skip) or not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        where = f"{type(module).__name__} at {name}"
        if any(True for _ in module.parameters(recurse=False)):
            raise Unsupported(f"{where}: weights beside buffers that are not in the checkpoint")
        cfg = getattr(module, "config", None) or model.config
        try:
            fresh = type(module)(cfg).to(dev)
        except Exception as e:  # noqa: BLE001 - a module we cannot rebuild makes the model unsupported
            raise Unsupported(f"{where}: buffers cannot be rebuilt ({e})") from None
        want = {n: tuple(b.shape) for n, b in module.named_buffers()}
        if {n: tuple(b.shape) for n, b in fresh.named_buffers()} != want:
            raise Unsupported(f"{where}: rebuilt from the config, its buffers differ in shape")
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, fresh)


# --- capture and replay stand-ins ----------------------------------------------------------------------


class _Captured(Exception):
    def __init__(self, hidden: Any, args: tuple, kwargs: dict) -> None:
        super().__init__("captured")
        self.hidden, self.args, self.kwargs = hidden, args, kwargs


def _stand_in(like: Any, forward: Callable) -> Any:
    import torch

    class StandIn(torch.nn.Module):
        def forward(self, hidden_states, *args, **kwargs):  # noqa: D401 - a layer's signature
            return forward(hidden_states, args, kwargs)

    m = StandIn()
    for attr in ("attention_type", "layer_idx", "is_sliding"):  # read by some decoders before the call
        if hasattr(like, attr):
            setattr(m, attr, getattr(like, attr))
    return m


def _raise_captured(hidden, args, kwargs):
    raise _Captured(hidden, args, kwargs)


# --- streaming ------------------------------------------------------------------------------------------


class _Prefetch:
    """Reads layer i's tensors from the mmap on a thread while layer i-1 runs."""

    def __init__(self, ckpt: Checkpoint, names: Callable[[int], list[tuple[str, str]]], dtype: Any, pin: bool):
        self.ckpt, self.names, self.dtype, self.pin = ckpt, names, dtype, pin
        self._thread: threading.Thread | None = None
        self._result: dict | BaseException | None = None

    def start(self, i: int) -> None:
        def run() -> None:
            try:
                out = {}
                for local, full in self.names(i):
                    t = self.ckpt.get(full, self.dtype)
                    out[local] = t.pin_memory() if self.pin else t
                self._result = out
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
                self._result = e

        self._result = None
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def take(self) -> dict:
        assert self._thread is not None
        self._thread.join()
        result = self._result
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[return-value]


def streamed_losses(model_dir: str | os.PathLike, token_lists: Sequence[Sequence[int] | None], device: Any, *,
                    max_device_bytes: int, token_budget: int | None = None,
                    on_layer: Callable[[int, int], None] | None = None) -> tuple[list[float], StreamInfo]:
    """Per-sample summed cross-entropy of the model in `model_dir`, streamed layer by layer
    under `max_device_bytes` of device memory. Same numbers as engine.engine_losses (fp32:
    within 1e-5 relative). `on_layer(group, layer)` is called before each layer runs (progress;
    tests use it to crash mid-stream). Raises Unsupported (score it resident instead) or
    ScoringError("oom") when one layer and the resident parts exceed the cap."""
    import time

    import torch

    from validator.scoring.engine import ScoringError, _device, _engine_parts, chunked_ce_sums, loss_chunk_tokens

    root = Path(model_dir)
    dev = _device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    dbytes = torch.tensor([], dtype=dtype).element_size()
    model = build_meta_model(root, dtype)
    parts, reason = _engine_parts(model)
    if parts is None:
        raise Unsupported(reason)
    n_layers = _n_layers(model.config)
    layers = find_layers(model, n_layers)
    ckpt = Checkpoint(root)
    info = StreamInfo(layers=n_layers, layer_bytes=max(_tensor_bytes(m, dbytes) for m in layers.modules))
    for i, layer in enumerate(layers.modules):
        for name, _ in layer.named_parameters():
            if f"{layers.prefix}.{i}.{name}" not in ckpt:
                raise Unsupported(f"{layers.prefix}.{i}.{name} is not in the checkpoint")
        if any(True for _ in layer.buffers()):
            raise Unsupported(f"{type(layer).__name__} holds buffers: not streamed")
    info.resident_bytes = load_resident(model, ckpt, layers, dev, dtype)
    parts, reason = _engine_parts(model)  # the head, now real

    hidden = int(getattr(model.config, "hidden_size", 0) or parts.weight.shape[1])
    inter = int(getattr(model.config, "intermediate_size", 0) or 4 * hidden)
    vocab = int(parts.weight.shape[0])
    if token_budget is None:
        token_budget = constants.TOKEN_BUDGET_GPU if dev.type == "cuda" else constants.TOKEN_BUDGET_CPU
    # the loss chunk's fp32 logits take at most a quarter of what the cap leaves after the weights
    spare = max_device_bytes - info.resident_bytes - info.layer_bytes
    chunk = max(1, min(loss_chunk_tokens(vocab, dev), token_budget, spare // (4 * vocab * 4)))
    out = [INF if ids is None else 0.0 for ids in token_lists]
    lengths = {i: len(ids) for i, ids in enumerate(token_lists) if ids is not None and len(ids) >= 2}
    shape = Shape(hidden, inter, vocab, dbytes, info.resident_bytes, info.layer_bytes)
    try:
        token_budget, batches, groups = plan(lengths, shape, max_device_bytes, token_budget, chunk)
    except MemoryError as e:
        raise ScoringError("oom", str(e)) from None
    info.groups, info.batches = len(groups), len(batches)
    names = lambda i: [(n, f"{layers.prefix}.{i}.{n}") for n, _ in layers.modules[i].named_parameters()]  # noqa: E731
    prefetch = _Prefetch(ckpt, names, dtype, pin=dev.type == "cuda")
    copy_stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
    sums_of: dict[int, float] = {}
    originals = layers.modules
    try:
        with torch.inference_mode():
            for g, group in enumerate(groups):
                states = [_capture(parts.base, layers, token_lists, b, dev) for b in group]
                prefetch.start(0)
                for i in range(n_layers):
                    t0 = time.monotonic()
                    host = prefetch.take()
                    if i + 1 < n_layers:
                        prefetch.start(i + 1)
                    layer = originals[i]
                    layer.to_empty(device=dev)
                    _copy_in(layer, host, copy_stream)
                    info.weight_bytes_read += sum(t.numel() * t.element_size() for t in host.values())
                    info.max_layers_resident = max(info.max_layers_resident, 1 + sum(
                        1 for m in originals if m is not layer and any(not p.is_meta for p in m.parameters())))
                    t1 = time.monotonic()
                    if on_layer is not None:
                        on_layer(g, i)
                    for s in states:
                        res = layer(s["hidden"], *s["args"], **s["kwargs"])
                        s["tuple"] = isinstance(res, tuple)
                        s["hidden"] = res[0] if isinstance(res, tuple) else res
                    layer.to("meta")  # frees the device copy
                    del host
                    info.seconds_copy += t1 - t0
                    info.seconds_compute += time.monotonic() - t1
                for b, s in zip(group, states):
                    for k, v in zip(b, _finish(parts, layers, s, token_lists, b, dev, chunk, chunked_ce_sums)):
                        sums_of[k] = v
    finally:
        setattr(layers.parent, layers.attr, originals)
    for k, v in sums_of.items():
        out[k] = v
    return out, info


def _ids_batch(token_lists, batch: list[int], dev):
    """The engine's batch layout (engine._padded_inputs: right padding, no mask: padding never
    reaches a real token under causal attention) on the device, with the flat predicting rows."""
    import torch

    from validator.scoring.engine import _padded_inputs

    seqs = [token_lists[i] for i in batch]
    ids, mask, flat = _padded_inputs(seqs, with_mask=False)
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    return ids.to(dev), None if mask is None else mask.to(dev), flat.to(dev), lens


def _capture(base, layers: _Layers, token_lists, batch: list[int], dev) -> dict:
    """Run the decoder up to its first layer: the hidden states and every argument the layers get."""
    import torch

    ids, mask, _, _ = _ids_batch(token_lists, batch, dev)
    setattr(layers.parent, layers.attr, torch.nn.ModuleList([_stand_in(layers.modules[0], _raise_captured)]))
    try:
        base(input_ids=ids, attention_mask=mask, use_cache=False)
    except _Captured as c:
        return {"hidden": c.hidden, "args": c.args, "kwargs": c.kwargs}
    finally:
        setattr(layers.parent, layers.attr, layers.modules)
    raise Unsupported(f"{type(base).__name__} never called its decoder layers")


def _copy_in(layer, host: dict, stream) -> None:
    """The staged tensors into the layer's (empty) device parameters; a side stream on CUDA."""
    import torch

    params = dict(layer.named_parameters())
    if stream is None:
        for name, t in host.items():
            params[name].copy_(t)
        return
    with torch.cuda.stream(stream):
        for name, t in host.items():
            params[name].copy_(t, non_blocking=True)
    torch.cuda.current_stream().wait_stream(stream)


def _finish(parts, layers: _Layers, state: dict, token_lists, batch: list[int], dev, chunk: int, ce) -> list[float]:
    """The decoder's tail (its own final norm) over the streamed hidden states, then the engine's loss."""
    import torch

    ids, mask, flat, lens = _ids_batch(token_lists, batch, dev)
    streamed = state["hidden"]
    as_tuple = state.get("tuple", False)
    replay = _stand_in(layers.modules[0], lambda h, a, k: (streamed,) if as_tuple else streamed)
    setattr(layers.parent, layers.attr, torch.nn.ModuleList([replay]))
    try:
        hidden = parts.base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    finally:
        setattr(layers.parent, layers.attr, layers.modules)
    n, width = ids.shape
    owner = torch.repeat_interleave(torch.arange(n), lens - 1).to(dev)
    h = hidden.reshape(n * width, -1).index_select(0, flat)
    targets = ids.reshape(-1).index_select(0, flat + 1)
    return ce(h, targets, owner, n, parts.weight, parts.bias, parts.transform, chunk).cpu().tolist()
