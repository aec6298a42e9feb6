"""Scoring-worker jobs for the fault campaign, run by validator.scoring.worker.run_isolated in a
child process instead of validator.scoring.job:score_model_job. The model dir's name says how
the worker misbehaves. Standard library only: a worker starts in ~0.1 s."""
from __future__ import annotations

import os
import resource
import signal
import time
from pathlib import Path

FIRED_SUFFIX = ".fired"  # <model dir>.fired: written by a job just before its fault fires


def score(model_path: str, samples: list, competition: dict, device: str = "cpu", tokenizer_path=None,
          engine: bool = True, token_cache_path=None, step_samples=None, token_cache_out=None) -> dict:
    name = Path(model_path).name
    if name.startswith(("segv", "oom", "hang", "raise")):  # the fault is about to fire: say so first
        Path(model_path + FIRED_SUFFIX).write_text(name)
    if name.startswith("segv"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if name.startswith("oom"):
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, hard))
        blob = bytearray(1 << 31)  # MemoryError: more than the address space allows
        return {"never": len(blob)}
    if name.startswith("hang"):
        time.sleep(600)
    if name.startswith("raise"):
        for i in range(40):  # a chatty library before the error: the reason must still name the error
            print(f"library warning line {i}", flush=True)
        raise RuntimeError("forward pass exploded")
    q = 1.0 + (sum(map(ord, name)) % 10) / 10
    return {"losses": {sid: q * len(text) for sid, text in samples},
            "n_tokens": {sid: max(len(text.split()), 1) for sid, text in samples}, "failure": None}
