"""Resident engine vs layer-streamed scoring on the same model and samples: time, peak memory,
equality, and the streaming cost model's prediction beside the measured time.

Each path runs in its own child process (same seed -> the same random-init Llama saved as
safetensors, the same token lists), so one path's memory never counts against the other's:
on CPU the child's RSS high-water mark (VmHWM), on CUDA torch.cuda.max_memory_allocated.
The streamed path runs under a device memory cap of --cap-fraction x the weights' bytes
(or --cap-gb), which forces the layer-by-layer path and several groups.

    python benchmarks/bench_streamed.py --hidden 512 --layers 8 --vocab 32000 --samples 120 --device cpu

Prediction: max(groups x layers x layer bytes / copy bandwidth, flops / achieved flop/s), with
the copy bandwidth timed on the device (mmap'd safetensors -> device tensors of one layer's
size) and the achieved flop/s of the resident run. Appends a JSON line per run to
benchmarks/results/streamed.jsonl (unless --no-record).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from peakmem import peak_rss_bytes  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "streamed.jsonl"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=None, help="attention heads (default hidden // 64)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    p.add_argument("--intermediate", type=int, default=None, help="MLP width (default 4 x hidden)")
    p.add_argument("--vocab", type=int, default=32_000)
    p.add_argument("--samples", type=int, default=120)
    p.add_argument("--median", type=float, default=300.0, help="median sample length in tokens")
    p.add_argument("--sigma", type=float, default=0.9)
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cap-fraction", type=float, default=0.5,
                   help="device cap: the embeddings and head, plus this fraction of the decoder layers' bytes, "
                        "plus --room-mib for activations")
    p.add_argument("--room-mib", type=float, default=64.0, help="activation room added to the cap (MiB)")
    p.add_argument("--cap-gb", type=float, default=None, help="device cap in GiB (overrides --cap-fraction)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--child", choices=["resident", "streamed"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--cap-bytes", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def token_lists(args) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(args.seed)
    lens = np.clip(rng.lognormal(np.log(args.median), args.sigma, args.samples).astype(int), 8, args.max_len)
    return [rng.integers(0, args.vocab, int(n)).tolist() for n in lens]


def build_model(args, out: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = args.heads or max(1, args.hidden // 64)
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                      num_attention_heads=heads, num_key_value_heads=args.kv_heads or heads,
                      intermediate_size=args.intermediate or 4 * args.hidden, max_position_embeddings=args.max_len,
                      tie_word_embeddings=False)
    torch.manual_seed(args.seed)
    cuda = args.device.startswith("cuda")
    with torch.device(args.device if cuda else "cpu"):  # a 7B shape is built on the GPU in bf16, no host copy
        model = LlamaForCausalLM(cfg).to(torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    del model
    return out


def forward_flops(args, tokens: list[list[int]]) -> float:
    """~2 x (parameters outside the input embedding) x tokens (attention scores not counted)."""
    h, inter = args.hidden, args.intermediate or 4 * args.hidden
    heads = args.heads or max(1, h // 64)
    kv = (args.kv_heads or heads) * (h // heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter
    return 2.0 * (per_layer * args.layers + h * args.vocab) * sum(len(t) for t in tokens)


def split_bytes(model_dir: Path, dtype_bytes: int) -> tuple[int, int]:
    """(bytes outside the decoder layers, bytes of the layers) in the scoring dtype."""
    from safetensors import safe_open

    from validator.scoring.stream_plan import weight_files

    resident = layers = 0
    by_file: dict[Path, list[str]] = {}
    for name, path in weight_files(model_dir).items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            for name in names:
                count = 1
                for d in f.get_slice(name).get_shape():
                    count *= d
                if ".layers." in name:
                    layers += count * dtype_bytes
                else:
                    resident += count * dtype_bytes
    return resident, layers


def copy_bandwidth(model_dir: Path, device: str) -> float:
    """Bytes per second from the mmap'd checkpoint to device tensors, over one layer's tensors."""
    import torch
    from safetensors import safe_open

    from validator.scoring.stream_plan import weight_files

    files = weight_files(model_dir)
    names = [n for n in files if ".layers.0." in n]
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    t0, total = time.perf_counter(), 0
    for n in names:
        with safe_open(str(files[n]), framework="pt") as f:
            t = f.get_tensor(n).to(device=device, dtype=dtype)
        total += t.numel() * t.element_size()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return total / max(time.perf_counter() - t0, 1e-9)


def run_child(args) -> dict:
    import torch

    from validator.scoring import engine, model_load, streaming

    tokens = token_lists(args)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    extra = {}
    if args.child == "resident":
        losses = engine.engine_losses(model_load.load_model(args.model_dir, args.device), tokens, args.device,
                                       verify=False)
    else:
        losses, info = streaming.streamed_losses(args.model_dir, tokens, args.device, max_device_bytes=args.cap_bytes)
        extra = {"groups": info.groups, "batches": info.batches, "layer_bytes": info.layer_bytes,
                 "resident_bytes": info.resident_bytes, "weight_bytes_read": info.weight_bytes_read,
                 "seconds_copy": info.seconds_copy, "seconds_compute": info.seconds_compute}
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "losses": losses, "peak_rss_bytes": peak_rss_bytes(),
            "peak_device_bytes": torch.cuda.max_memory_allocated() if cuda else None, **extra}


def child(args, path: str, model_dir: Path, cap: int) -> dict:
    cmd = [sys.executable, __file__, "--child", path, "--model-dir", str(model_dir), "--cap-bytes", str(cap),
           "--hidden", str(args.hidden), "--layers", str(args.layers), "--vocab", str(args.vocab),
           "--samples", str(args.samples), "--median", str(args.median), "--sigma", str(args.sigma),
           "--max-len", str(args.max_len), "--device", args.device, "--seed", str(args.seed)]
    for flag, v in (("--heads", args.heads), ("--kv-heads", args.kv_heads), ("--intermediate", args.intermediate)):
        if v is not None:
            cmd += [flag, str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the {path} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    from validator.scoring import stream_plan

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(args, Path(tmp) / "model")
        size = stream_plan.model_bytes(model_dir)
        resident, layers = split_bytes(model_dir, 2 if args.device.startswith("cuda") else 4)
        cap = int(args.cap_gb * 2**30) if args.cap_gb else \
            int(resident + layers * args.cap_fraction + args.room_mib * 2**20)
        tokens = token_lists(args)
        bandwidth = copy_bandwidth(model_dir, args.device)
        res = child(args, "resident", model_dir, cap)
        st = child(args, "streamed", model_dir, cap)
    flops = forward_flops(args, tokens)
    achieved = flops / res["seconds"]
    info = stream_plan.StreamInfo(groups=st["groups"], layers=args.layers, layer_bytes=st["layer_bytes"])
    predicted = stream_plan.predicted_seconds(info, bandwidth, flops, achieved)
    pairs = [(a, b) for a, b in zip(st["losses"], res["losses"]) if b not in (0.0, float("inf"))]
    rel = max((abs(a - b) / abs(b) for a, b in pairs), default=0.0)
    record = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor()
        or platform.machine(), "device": args.device, "shape": {"hidden": args.hidden, "layers": args.layers,
        "vocab": args.vocab, "intermediate": args.intermediate or 4 * args.hidden}, "samples": args.samples,
        "tokens": sum(len(t) for t in tokens), "weights_bytes": size, "cap_bytes": cap, "groups": st["groups"],
        "resident_s": res["seconds"], "streamed_s": st["seconds"], "time_ratio": st["seconds"] / res["seconds"],
        "predicted_streamed_s": predicted, "copy_bandwidth_gbs": bandwidth / 1e9,
        "achieved_gflops": achieved / 1e9, "streamed_copy_s": st["seconds_copy"],
        "streamed_compute_s": st["seconds_compute"], "peak_rss_resident_mib": res["peak_rss_bytes"] / 2**20,
        "peak_rss_streamed_mib": st["peak_rss_bytes"] / 2**20,
        "peak_device_resident_mib": None if res["peak_device_bytes"] is None else res["peak_device_bytes"] / 2**20,
        "peak_device_streamed_mib": None if st["peak_device_bytes"] is None else st["peak_device_bytes"] / 2**20,
        "max_rel_loss_diff": rel,
    }
    print(json.dumps(record, indent=1))
    if not args.no_record:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
