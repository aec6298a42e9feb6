"""Checks made before a command does any work, each failing with one clear message.

A validator that starts with a typo in --device would fail every model with `load` for
days; one whose hotkey is not registered would score for an hour and then fail to set
weights. These checks run first and raise SetupError (the command exits with status 2).
They are the composition root's (validator.app) and the CLI's; the flag types are
validator.cli.argtypes'.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class SetupError(Exception):
    """The setup cannot work; the message names the flag or file and the reason."""



# -- devices ----------------------------------------------------------------------------------

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device(spec: str, cuda_count: int | None = None) -> str:
    """`spec` if torch can use it: cpu, cuda or cuda:N with N below the devices torch sees."""
    m = _DEVICE.match(spec.strip())
    if not m or (m.group(1) == "cpu" and m.group(2) is not None):
        raise SetupError(f"--device {spec!r}: expected cpu, cuda or cuda:N")
    if m.group(1) == "cpu":
        return "cpu"
    count = cuda_device_count() if cuda_count is None else cuda_count
    if count == 0:
        raise SetupError(f"--device {spec}: torch sees no CUDA device (use --device cpu, or check the driver "
                         "and that torch was built with CUDA)")
    index = int(m.group(2) or 0)
    if index >= count:
        raise SetupError(f"--device {spec}: torch sees {count} CUDA device(s): cuda:0..cuda:{count - 1}")
    return spec.strip()


# -- files and dirs ---------------------------------------------------------------------------

def check_writable_dir(path: Path, flag: str) -> None:
    """`path` is, or can be created as, a directory this process can write in. Nothing is
    left behind: a missing dir is not created, the probe file is removed."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        where = f"{probe} is not a directory" if probe == path else f"{probe} (above it) is not a directory"
        raise SetupError(f"{flag} {path}: {where}")
    try:
        fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=probe)
    except OSError as e:
        raise SetupError(f"{flag} {path}: not writable ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(name)


# -- network and wallet -----------------------------------------------------------------------

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_offline_endpoint(endpoint: str | None) -> None:
    """--offline: a hub endpoint must be on this machine (no network at all)."""
    if endpoint is None:
        return
    host = urlparse(endpoint).hostname
    if host not in LOOPBACK and not (host or "").startswith("127."):
        raise SetupError(f"--offline: hub endpoint {endpoint} is not on this machine "
                         f"({', '.join(LOOPBACK)}); drop --offline or serve the models locally")


def check_wallet(wallet: Any, name: str, hotkey: str, path: str) -> str:
    """The ss58 address of the wallet's hotkey, read from its public file (no password)."""
    try:
        return str(wallet.hotkeypub.ss58_address)
    except Exception as e:  # noqa: BLE001 - bittensor-wallet raises its own KeyFileError types
        raise SetupError(f"wallet {name!r} hotkey {hotkey!r} under {path}: cannot read the hotkey ({e}); "
                         "check --wallet.name, --wallet.hotkey, --wallet.path "
                         "(create one with `btcli wallet new_hotkey`)") from None


def check_registration(chain: Any, hotkey: str, netuid: int, network: str) -> int | None:
    """Our uid on the subnet; SetupError when the chain answers that `hotkey` is not
    registered, None (the step will report it) when the chain cannot be read now."""
    from validator.core.chain import ChainError

    try:
        metagraph = chain.sync()[0]
    except (ChainError, OSError) as e:
        import logging

        logging.getLogger("validator").warning("cannot check the registration of %s on %s now (%s); "
                                               "the steps will retry the chain", hotkey, network, e)
        return None
    uid = metagraph.uid_of(hotkey)
    if uid is None:
        raise SetupError(f"hotkey {hotkey} is not registered on netuid {netuid} of {network} "
                         f"(register it with `btcli subnet register --netuid {netuid}`)")
    return uid


def device_memory_bytes(gb: float | None) -> int | None:
    """--max-device-memory GB -> bytes (GiB), None when not given."""
    return None if gb is None else int(gb * 2**30)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
