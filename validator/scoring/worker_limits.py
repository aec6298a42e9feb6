"""What a scoring worker may use: its environment (an allow-list, secrets scrubbed, offline), its
memory limits per device, and the memory readings the parent's watchdog compares with them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import constants


# --- the child's environment (pure) -----------------------------------------------------------

# What a job may read from the environment: the interpreter, locale, temp dir, thread pools,
# the accelerator's driver and libraries, logging verbosity. Everything else is dropped.
_ENV_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TZ", "LANG", "LANGUAGE", "TMPDIR",
                        "TMP", "TEMP", "LD_LIBRARY_PATH", "TOKENIZERS_PARALLELISM", "TRANSFORMERS_VERBOSITY",
                        "SAFETENSORS_FAST_GPU", "CUBLAS_WORKSPACE_CONFIG"})
_ENV_PREFIXES = ("LC_", "PYTHON", "CUDA_", "NVIDIA_", "ROCR_", "HIP_", "HSA_", "ROCM_", "OMP_", "KMP_", "MKL_",
                 "OPENBLAS_", "GOTO_", "NUMEXPR_", "PYTORCH_", "TORCH_", "TORCHINDUCTOR_", "TRITON_", "NCCL_")
# Dropped even when allowed above: a name with one of these words (split at "_") is a secret.
_SECRET_WORDS = re.compile(r"(^|_)(TOKEN|TOKENS|SECRET|SECRETS|PASSWORD|PASSWD|PASS|KEY|KEYS|APIKEY|CREDENTIAL|"
                           r"CREDENTIALS|AUTH|MNEMONIC|SEED|WALLET|COLDKEY|HOTKEY|PRIVATE)(_|$)")
# Forced in the child: no job reaches the network, whatever the parent's environment says.
_ENV_FORCED = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}


def child_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The environment a job runs with: the allowed names of `parent`, minus anything that
    looks like a secret (HF_TOKEN, BT_*, WALLET*, *_KEY, ...), plus the offline switches."""
    env = {}
    for name, value in parent.items():
        upper = name.upper()
        if upper.startswith(("BT_", "BITTENSOR", "WALLET", "HF_", "HUGGING")) or _SECRET_WORDS.search(upper):
            continue
        if upper in _ENV_NAMES or upper.startswith(_ENV_PREFIXES):
            env[name] = value
    env.update(_ENV_FORCED)
    return env


# --- memory of a process group (Linux /proc; elsewhere the watchdog sees nothing) -----------

def host_memory_bytes() -> int | None:
    """Physical memory, or the cgroup's memory limit when smaller (a container); None if unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) > 0:
            total = int(raw) if total is None else min(total, int(raw))
    return total


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in process group `pgid` (0 where /proc is missing)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    try:
        pids = [d for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:  # field 5: the process group
                continue
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue  # the process ended between listing and reading: it holds nothing now
    return total


# --- the limits of a job -----------------------------------------------------------------------

def default_memory_limit() -> int | None:
    """SCORE_MEMORY_FRACTION of the host's (or the cgroup's) memory; None when it is unknown."""
    total = host_memory_bytes()
    return int(total * constants.SCORE_MEMORY_FRACTION) if total else None


# glibc maps up to 8 x cores malloc arenas of 64 MiB of address space (threads allocating at once):
# reserved, not used, but RLIMIT_AS counts it
_MALLOC_ARENA_BYTES = 64 * 1024**2


def worker_limits(device: str, memory_limit_bytes: int | None) -> dict:
    """run_isolated's memory arguments: the resident limit on every device; on CPU also an
    address-space limit with headroom for what torch reserves. Not on CUDA: the driver maps far
    more address space than it uses, and RLIMIT_AS makes CUDA initialisation fail."""
    if not memory_limit_bytes:
        return {}
    limits = {"rss_limit_bytes": int(memory_limit_bytes)}
    if not str(device).startswith("cuda"):
        limits["memory_limit_bytes"] = (int(memory_limit_bytes) + constants.SCORE_ADDRESS_SPACE_HEADROOM_BYTES
                                        + _MALLOC_ARENA_BYTES * 8 * (os.cpu_count() or 1))
    return limits
