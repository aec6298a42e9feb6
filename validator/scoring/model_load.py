"""Loading a miner's model for scoring: its config.json (bounded, kernel and quantizer keys
stripped) and the causal LM built from it (safetensors only, no remote code, eval mode).
"""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

import constants
from validator.scoring.engine import ScoringError

log = logging.getLogger(__name__)


def _flash_attn_available() -> bool:
    try:
        importlib.import_module("flash_attn")
    except ImportError:
        return False
    return True


def model_config(path: str | os.PathLike):
    """The model's transformers config from config.json (bounded read), CONFIG_KEYS_STRIPPED removed."""
    from transformers import CONFIG_MAPPING

    from validator.adapters.files import StateError, read_json

    path = Path(path)
    try:
        raw = read_json(path / "config.json", max_bytes=constants.HUB_SMALL_FILE_MAX_BYTES,
                        max_depth=constants.CONFIG_MAX_DEPTH, max_elements=constants.CONFIG_MAX_ELEMENTS)
    except (StateError, FileNotFoundError) as e:
        raise ScoringError("load", f"config.json of {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ScoringError("load", f"config.json of {path} is not a JSON object")
    from validator.adapters.hub import strip_config_keys

    data = strip_config_keys(raw)
    if data != raw:
        log.info("model %s: config keys of CONFIG_KEYS_STRIPPED ignored (they would choose kernels or quantizers)",
                 path)
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ScoringError("load", f"config.json of {path}: unknown model_type {model_type!r}")
    return CONFIG_MAPPING[model_type].from_dict(data)


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """A causal LM from a local directory: safetensors only, no remote code, eval mode.

    bf16 with flash-attention 2 (or SDPA) on CUDA, fp32 with SDPA on CPU, whatever config.json
    asks for: its kernel and quantizer keys (CONFIG_KEYS_STRIPPED) are removed first.
    """
    import torch
    from transformers import AutoModelForCausalLM

    cuda = str(device).startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    attn_options = (["flash_attention_2"] if cuda and _flash_attn_available() else []) + ["sdpa", None]
    last_error: Exception | None = None
    for attn in attn_options:
        kwargs = dict(local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=dtype,
                      config=model_config(path))  # fresh per try: from_pretrained sets its attention on it
        if attn is not None:
            kwargs["attn_implementation"] = attn
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
            break
        except (ValueError, ImportError) as e:
            # An attention implementation the architecture lacks raises ValueError/ImportError:
            # try the next one; other load errors (missing/unsafe files) fail below too.
            last_error = e
    else:
        raise ScoringError("load", f"cannot load model from {path}: {type(last_error).__name__}: {last_error}")
    model.to(device)
    model.eval()
    return model
