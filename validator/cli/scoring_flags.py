"""The flags `run` and `benchmark` share: where models come from and where they are scored."""
from __future__ import annotations

import argparse

from validator.cli.argtypes import non_negative_float


def add_scoring_flags(g: argparse._ArgumentGroup) -> None:
    """--device, --max-device-memory, --hf-endpoint, --no-isolation, --ray into `g`."""
    g.add_argument("--device", default=None, help="cuda | cuda:N | cpu (default: cuda when available)")
    g.add_argument("--max-device-memory", type=non_negative_float, default=None, metavar="GB",
                   help="device memory a model may use: a model whose weights exceed it is scored layer by layer "
                        "(same losses; default: streamed only when it exceeds the free CUDA memory)")
    g.add_argument("--hf-endpoint", default=None,
                   help="hub endpoint URL, or local:DIR to serve a git mirror dir (olah on 127.0.0.1) for this run "
                        "(default: $HF_ENDPOINT or huggingface.co)")
    g.add_argument("--no-isolation", action="store_true",
                   help="score in this process instead of a worker per model (debugging only: no time or "
                        "memory limit, a crashing model takes the process down)")
    g.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="score on a Ray cluster (pip install -e '.[ray]'): its address, e.g. 10.0.0.1:6379, or "
                        "auto (the cluster this machine joined); one actor per GPU, this process stays the driver")
