"""Reference loop vs scoring engine on the same samples: speed, peak memory, equality.

Each path runs in its own child process (same seed -> same random-init Llama and the same
token lists), so one path's allocations never count against the other's peak: on CPU the
child's RSS high-water mark (VmHWM: the parent's memory is not counted), on CUDA
torch.cuda.max_memory_allocated. Sample lengths follow FineWeb-edu roughly: log-normal,
median --median tokens, capped at --max-len.

    python benchmarks/bench_scoring.py --hidden 256 --layers 4 --vocab 128256 --samples 200 --device cpu

Paths: reference (one sample at a time), engine (right-padded batches, no mask: the default),
masked (the same batches with the padding mask, as before the mask was dropped) and packed
(samples back to back in one row, per-sample attention: validator.scoring.packing).

Appends one JSON line per run to benchmarks/results/scoring.jsonl (unless --no-record).
--flops adds forward FLOP/s ~ 2 x (parameters outside the input embedding) x tokens, and
with --peak-tflops the fraction of that peak (attention score FLOPs are not counted);
--measure-peak also times a large matrix product on the device, the ceiling actually
reachable there, and reports the fraction of that.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from peakmem import peak_rss_bytes  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "scoring.jsonl"
PATHS = ("reference", "engine", "masked", "packed")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=None, help="attention heads (default hidden // 64)")
    p.add_argument("--kv-heads", type=int, default=None,
                   help="key/value heads (default: as many as --heads; Llama-3 shapes use 8)")
    p.add_argument("--intermediate", type=int, default=None, help="MLP width (default 4 x hidden)")
    p.add_argument("--vocab", type=int, default=128_256)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--median", type=float, default=700.0, help="median sample length in tokens")
    p.add_argument("--sigma", type=float, default=0.9, help="log-normal sigma of sample lengths")
    p.add_argument("--max-len", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token-budget", type=int, default=None, help="engine token budget (default per device)")
    p.add_argument("--paths", default="reference,engine",
                   help=f"which paths to run, comma-separated, of {', '.join(PATHS)}")
    p.add_argument("--flops", action="store_true", help="report forward FLOP/s (and fraction of --peak-tflops)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak TFLOP/s at --dtype")
    p.add_argument("--measure-peak", action="store_true",
                   help="also time a large matrix product at --dtype on --device (the ceiling a forward "
                        "can reach) and report each path's fraction of it")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-record", action="store_true", help="do not append to the results file")
    p.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.path_list = [x.strip() for x in args.paths.split(",") if x.strip()]
    unknown = [x for x in args.path_list if x not in PATHS]
    if unknown or not args.path_list:
        p.error(f"--paths {args.paths!r}: unknown or no path {unknown} (known: {', '.join(PATHS)})")
    if args.heads is None:
        args.heads = max(1, args.hidden // 64)
    if args.kv_heads is None:
        args.kv_heads = args.heads
    if args.intermediate is None:
        args.intermediate = 4 * args.hidden
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    for name in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "samples", "max_len"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.hidden % args.heads:
        p.error(f"--hidden {args.hidden} is not a multiple of --heads {args.heads}")
    if args.heads % args.kv_heads:
        p.error(f"--heads {args.heads} is not a multiple of --kv-heads {args.kv_heads}")
    return args


def sample_lengths(n: int, median: float, sigma: float, max_len: int, seed: int) -> list[int]:
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.normal(np.log(median), sigma, size=n)).round().astype(int)
    return [int(x) for x in np.clip(lengths, 2, max_len)]


def token_lists(args) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(args.seed + 1)
    return [rng.integers(0, args.vocab, size=n).tolist()
            for n in sample_lengths(args.samples, args.median, args.sigma, args.max_len, args.seed)]


def build_model(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         intermediate_size=args.intermediate, max_position_embeddings=max(4096, args.max_len),
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(args.seed)
    config._attn_implementation = "sdpa"
    # Built on the device in the target dtype: a 7B config would otherwise need 28 GB of
    # host memory and minutes of fp32 random init before the copy.
    with torch.device(args.device):
        model = LlamaForCausalLM._from_config(config, dtype=getattr(torch, args.dtype))
    return model.eval()


def forward_params(model) -> int:
    """Parameters that cost a multiply-add per token (the input embedding is a lookup)."""
    embed = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embed


def run_child(args) -> dict:
    """Run one path in this process and return its figures."""
    import psutil
    import torch

    from validator.scoring.engine import _engine_run, reference_losses

    cuda = args.device.startswith("cuda")
    lists = token_lists(args)
    model = build_model(args)
    warm = sorted(lists, key=len)[:2]
    options = {"engine": {}, "masked": {"pad_mask": True}, "packed": {"packed": True}}.get(args.child)
    fn = reference_losses if args.child == "reference" else (
        lambda m, t, d: _engine_run(m, t, d, args.token_budget, **options)[0])
    fn(model, warm, args.device)  # kernels, allocator and thread pools warmed for both paths alike
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = psutil.Process().memory_info().rss
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    losses = fn(model, lists, args.device)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = {
        "path": args.child,
        "seconds": seconds,
        "tokens": sum(len(t) for t in lists),
        "losses": losses,
        "rss_before_bytes": base_rss,
        "peak_rss_bytes": peak_rss_bytes(),  # this child's high-water mark, model included
        "forward_params": forward_params(model),
        # Other work on the machine skews wall time: the 1-minute load average around the run.
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "threads": torch.get_num_threads(),
    }
    if cuda:
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        out["cuda_bytes_before"] = torch.cuda.memory_allocated()
    return out


def matmul_tflops(device: str, dtype: str, n: int = 8192, reps: int = 10) -> float:
    """TFLOP/s of an n x n x n product on random data (zeros run faster than real inputs):
    the mean of `reps` timed products after three warm-ups."""
    import torch

    dt_ = getattr(torch, dtype)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dt_, generator=g)
    b = torch.randn(n, n, device=device, dtype=dt_, generator=g)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_model()} ({os.cpu_count()} CPUs)"


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def child_command(args, path: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", path]
    for name in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "samples", "median", "sigma",
                 "max_len", "device", "dtype", "seed", "token_budget"):
        value = getattr(args, name)
        if value is not None:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    return cmd


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_child(args)), flush=True)
        return None

    measured_peak = None
    if args.measure_peak:
        # Before the paths run, in this process: the children start with the device to themselves.
        size = 8192 if args.device.startswith("cuda") else 1024
        measured_peak = matmul_tflops(args.device, args.dtype, n=size)
        print(f"matrix product {size}^3 at {args.dtype}: {measured_peak:.1f} TFLOP/s", flush=True)
        if args.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    results = {}
    for path in args.path_list:
        print(f"running {path} ...", flush=True)
        proc = subprocess.run(child_command(args, path), capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{path} child failed with exit code {proc.returncode}")
        results[path] = json.loads(lines[-1][len("RESULT "):])

    cuda = args.device.startswith("cuda")
    mem_key = "peak_cuda_bytes" if cuda else "peak_rss_bytes"
    figures = {}
    for path, r in results.items():
        f = {"seconds": round(r["seconds"], 3), "tokens": r["tokens"],
             "tokens_per_s": round(r["tokens"] / r["seconds"], 1),
             "peak_mem_bytes": r[mem_key],
             "peak_mem_above_start_bytes": r[mem_key] - (r["cuda_bytes_before"] if cuda else r["rss_before_bytes"]),
             "loadavg_1m_before_after": r["loadavg_1m"], "threads": r["threads"],
             "forward_params": r["forward_params"]}
        if args.flops:
            tflops = 2 * r["forward_params"] * r["tokens"] / r["seconds"] / 1e12
            f["forward_tflops"] = round(tflops, 4)
            if args.peak_tflops:
                f["fraction_of_peak"] = round(tflops / args.peak_tflops, 4)
            if measured_peak:
                f["fraction_of_measured_matmul"] = round(tflops / measured_peak, 4)
        figures[path] = f
        print(f"{path:>9}: {f['seconds']:8.2f} s  {f['tokens_per_s']:10.1f} tok/s  "
              f"peak {f['peak_mem_bytes'] / 2**20:8.1f} MiB ({f['peak_mem_above_start_bytes'] / 2**20:8.1f} MiB "
              "above the start of scoring)"
              + (f"  {f['forward_tflops']:.4f} TFLOP/s" if args.flops else "")
              + (f" = {f['fraction_of_peak']:.1%} of peak" if "fraction_of_peak" in f else "")
              + (f" = {f['fraction_of_measured_matmul']:.1%} of the measured matmul"
                 if "fraction_of_measured_matmul" in f else "")
              + f"  (load {r['loadavg_1m'][0]:.1f} -> {r['loadavg_1m'][1]:.1f})")

    record = {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "device": device_name(args.device),
        "torch": __import__("torch").__version__,
        "transformers": __import__("transformers").__version__,
        "flags": {k: v for k, v in vars(args).items() if k not in ("child", "out", "no_record", "path_list")},
        "figures": figures,
    }
    if measured_peak:
        record["measured_matmul_tflops"] = round(measured_peak, 4)
    if "reference" in results and "engine" in results:
        ref, eng = results["reference"]["losses"], results["engine"]["losses"]
        record["max_rel_loss_diff"] = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(ref, eng))
        record["time_ratio_engine_over_reference"] = round(figures["engine"]["seconds"] / figures["reference"]["seconds"], 4)
        record["peak_mem_ratio_engine_over_reference"] = round(
            figures["engine"]["peak_mem_bytes"] / figures["reference"]["peak_mem_bytes"], 4)
        record["peak_mem_above_start_ratio"] = round(
            figures["engine"]["peak_mem_above_start_bytes"] / max(1, figures["reference"]["peak_mem_above_start_bytes"]), 4)
        print(f"engine/reference: time x{record['time_ratio_engine_over_reference']:.3f}, "
              f"peak memory x{record['peak_mem_ratio_engine_over_reference']:.3f} "
              f"(above start x{record['peak_mem_above_start_ratio']:.3f}); "
              f"max relative loss difference {record['max_rel_loss_diff']:.2e}")
    if "reference" in results:
        ref = results["reference"]["losses"]
        for path in results:
            if path not in ("reference", "engine"):  # engine keeps its own top-level keys above
                got = results[path]["losses"]
                record[f"max_rel_loss_diff_{path}"] = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(ref, got))
    if "engine" in results:
        for path in ("masked", "packed"):
            if path in figures:
                ratio = round(figures[path]["tokens_per_s"] / figures["engine"]["tokens_per_s"], 4)
                record[f"tokens_per_s_ratio_{path}_over_engine"] = ratio
                print(f"{path}/engine: tokens/s x{ratio:.3f}")
    if not args.no_record:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        print(f"recorded in {args.out}")
    return record


if __name__ == "__main__":
    main()
