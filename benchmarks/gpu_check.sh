#!/usr/bin/env bash
# The GPU checks of the scoring engine, in one call that ends inside 10 minutes (a lent
# device machine gives a session 15 minutes, its start included). Each stage has its own
# time limit, so one that fails or runs long still leaves the others' results.
#
#   bash benchmarks/gpu_check.sh            # results under $OUT (the device tool), else benchmarks/results/gpu/
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh   # the same stages on the CPU with tiny shapes:
#                                                    # try the script here before spending device time
#
# Stages: the machine (nvidia-smi, versions); the engine-vs-reference tests on CUDA (fp32
# within 1e-4, bf16 as load_model gives it) and the worker's real CUDA failures; then
# bench_scoring.py, reference vs engine on 1500 samples in bf16, for a Llama-3.2-1B shape
# and a Llama-2-7B shape, each with the measured matmul ceiling beside the datasheet peak;
# then bench_streamed.py: the 7B shape resident vs layer-streamed under a 24 GiB cap.
# Afterwards append $OUT/scoring.jsonl to benchmarks/results/scoring.jsonl (and
# $OUT/streamed.jsonl to benchmarks/results/streamed.jsonl) and commit them.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
: > "$out/summary.txt"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
py="$(command -v python3 || command -v python)"
peak=989  # H100/H200 SXM dense bf16 TFLOP/s (datasheet); --measure-peak records what the chip does
status=0
if [ -n "${GPU_CHECK_SMOKE:-}" ]; then
  run=(--device cpu --dtype float32 --samples 8 --median 32 --max-len 64)
  shape_1b=(--hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 128 --vocab 512)
  shape_7b=(--hidden 64 --layers 2 --heads 4 --intermediate 172 --vocab 256)
  streamed=(--device cpu --samples 8 --median 32 --max-len 64 --room-mib 16)
else
  run=(--device cuda --dtype bfloat16 --samples 1500)
  shape_1b=(--hidden 2048 --layers 16 --heads 32 --kv-heads 8 --intermediate 8192 --vocab 128256)  # Llama-3.2-1B
  shape_7b=(--hidden 4096 --layers 32 --heads 32 --intermediate 11008 --vocab 32000)  # Llama-2-7B
  streamed=(--device cuda --samples 400 --median 700 --max-len 4096 --cap-gb 24)
fi

stage() {  # stage NAME SECONDS COMMAND...: run with a limit, log to $out/NAME.log, note the exit code
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
  [ "$rc" -eq 0 ] || status=1
}

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || echo "nvidia-smi: none"
  "$py" -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "transformers", transformers.__version__,
"gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
  "$py" -c 'import flash_attn; print("flash_attn", flash_attn.__version__)' 2>/dev/null || echo "flash_attn: not installed (SDPA)"
} 2>&1 | tee "$out/machine.txt"

stage tests 120 "$py" -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_worker.py -k cuda -rs
common=("${run[@]}" --seed 0 --flops --peak-tflops "$peak" --measure-peak --out "$out/scoring.jsonl")
stage bench_1b 150 "$py" benchmarks/bench_scoring.py "${common[@]}" "${shape_1b[@]}"
stage bench_7b 180 "$py" benchmarks/bench_scoring.py "${common[@]}" "${shape_7b[@]}"
stage streamed_7b 120 "$py" benchmarks/bench_streamed.py "${streamed[@]}" "${shape_7b[@]}" --seed 0 \
  --out "$out/streamed.jsonl"

cat "$out/summary.txt"
exit "$status"
