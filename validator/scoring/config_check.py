"""The config check that builds things, as a worker job (validator.scoring.worker.run_isolated).

Building a transformers config and a causal LM on the meta device from a miner's config.json
is the one check before the download whose time and memory we do not bound by construction;
a hostile config could take the validator down with it. hub.count_parameters_isolated runs
this job in a child process with a time and a memory limit.

torch and transformers are imported here, at module import: the worker applies its memory
limit after importing the job's module, so the limit bounds the build, not the libraries.
"""
from __future__ import annotations

import importlib

from validator.adapters import hub
from validator.core.failures import FetchError

for _library in ("torch", "transformers"):  # imported before the worker's memory limit applies
    importlib.import_module(_library)


def count_parameters_job(cfg: dict, what: str) -> dict:
    """hub.count_parameters(cfg, what) as JSON: {"class", "parameters"}, or {"refused": a
    FailureReason value, "detail"} for a config it refuses (a typed refusal, not a crash)."""
    try:
        arch, n_params = hub.count_parameters(cfg, what)
    except FetchError as exc:
        return {"refused": exc.reason.value, "detail": exc.detail}
    return {"class": arch, "parameters": n_params}
