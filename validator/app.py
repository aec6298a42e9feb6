"""The composition root: one typed RunConfig, and the functions that wire the adapters it
names into a running thing (the chain, the validator, the benchmark's parts).

The command line, the demo, the benchmark plugin and the tests all build through here, so
a flag means the same thing wherever it is given. Nothing here parses flags or prints.

`--offline` has one meaning (`check_offline`): no network at all. The chain is a LocalChain
file (`network="local"`) or none; any other network is refused before work. The hub is a
local mirror (an endpoint on this machine) or, without one, only the model store. Config
files come from a path, the state dir's last good copy or the copy shipped in constants/,
never from a URL.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import constants
from validator.preflight import (SetupError, check_device, check_offline_endpoint, default_device,
                                 device_memory_bytes)
from validator.core.failures import retry_after
from validator.ports import Chain, ModelSource, SampleSource, Snapshot

log = logging.getLogger("validator")

DEFAULT_STATE_DIR = Path(constants.STATE_DIR_DEFAULT)
LOCAL_NETWORK = "local"
UNREAD_UID: Any = object()  # build_validator reads our uid from the chain itself


@dataclass(frozen=True)
class RunConfig:
    """Everything a run (or a benchmark) needs; the flags map onto it one to one.

    `endpoint`: the hub endpoint URL (None: $HF_ENDPOINT, else huggingface.co). A
    `local:<mirror>` spec must be opened (validator.cli.hub.open_endpoint) and replaced by its
    URL before `build_validator` / `build_benchmark`."""

    # chain
    network: str | None = "finney"  # None: no chain (the offline benchmark's field is its file)
    netuid: int = constants.NETUID
    chain_db: Path | None = None  # LocalChain file (default: <state_dir>/chain.sqlite)
    hotkey: str | None = None  # LocalChain: the validator's hotkey
    wallet_name: str = "default"
    wallet_hotkey: str = "default"
    wallet_path: str = "~/.bittensor/wallets"
    # storage
    state_dir: Path = DEFAULT_STATE_DIR
    model_dir: Path | None = None  # model store (default: <state_dir>/models)
    model_store_gb: float | None = None  # N: at most N GB; -N: keep N GB free; None: the default
    # hub, devices, scoring
    endpoint: str | None = None
    device: str | None = None  # None: cuda when available
    devices: tuple[str, ...] | None = None  # one worker per device; None: `device` alone
    max_device_memory_gb: float | None = None
    isolate: bool = True  # a worker process per model
    ray: str | None = None  # a Ray cluster's address (or "auto"): one actor per GPU scores (validator.scoring.ray_scorer)
    # configs and inputs
    competitions: str | None = None  # a file or URL; None: constants.COMPETITIONS_URL (offline: shipped)
    hall_of_fame: str | None = None
    benchmark: Path | None = None  # benchmark.json of local candidates to inject
    # behaviour and limits
    offline: bool = False
    dont_set_weights: bool = False
    eval_samples: int | None = None
    steps: int | None = None  # None: until stopped
    step_interval_s: float = constants.STEP_MIN_INTERVAL_S
    save_step_json: Path | None = None
    wandb: bool = False

    @property
    def store_dir(self) -> Path:
        return Path(self.model_dir) if self.model_dir is not None else Path(self.state_dir) / "models"

    @property
    def chain_file(self) -> Path:
        return Path(self.chain_db) if self.chain_db is not None else Path(self.state_dir) / constants.LOCAL_CHAIN_DB

    @property
    def hub_endpoint(self) -> str | None:
        """The endpoint in force: the flag, else $HF_ENDPOINT, else None (huggingface.co)."""
        return self.endpoint or os.environ.get("HF_ENDPOINT") or None

    @property
    def store_budget_gb(self) -> float:
        """model_store_gb, else keep MODEL_STORE_DEFAULT_FREE_GB of the disk free: re-committed
        large models must not fill the disk of a box nobody watches."""
        return self.model_store_gb if self.model_store_gb is not None else -constants.MODEL_STORE_DEFAULT_FREE_GB


def check_offline(config: RunConfig, *, chain_needed: bool = True) -> None:
    """SetupError unless the config can run with no network at all (see the module doc).
    `chain_needed`: False for the benchmark, whose offline field may come from its file alone."""
    from urllib.parse import urlparse

    if not config.offline:
        return
    if config.network != LOCAL_NETWORK and (chain_needed or config.network is not None):
        raise SetupError(f"--offline --network {config.network}: offline reads no network, so the chain is a "
                         "LocalChain file (--network local --chain-db PATH); to watch the real chain without "
                         "setting weights use --dont-set-weights instead")
    endpoint = config.hub_endpoint
    if endpoint is not None and not endpoint.startswith("local:"):  # a local mirror is served on loopback
        if urlparse(endpoint).scheme not in ("http", "https"):  # a bad spec says so, not "not on this machine"
            raise SetupError(f"--hf-endpoint {endpoint!r}: expected an http(s):// URL or local:<mirror dir>")
        check_offline_endpoint(endpoint)
    for what, location in (("--competitions", config.competitions), ("--hall-of-fame", config.hall_of_fame)):
        if location is not None and urlparse(str(location)).scheme.lower() in ("http", "https"):
            raise SetupError(f"--offline {what} {location}: a URL; offline reads configs from files only")
    if config.ray is not None and config.ray != "auto":
        host = urlparse(config.ray if "://" in config.ray else f"ray://{config.ray}").hostname
        if host not in ("127.0.0.1", "localhost", "::1") and not (host or "").startswith("127."):
            raise SetupError(f"--offline --ray {config.ray}: a cluster on another machine needs the network")
    if config.wandb:
        raise SetupError("--offline --wandb: Weights & Biases needs the network; drop one of them")


def hub_offline(config: RunConfig) -> bool:
    """Offline without a hub endpoint: models only from the store (HF_HUB_OFFLINE, read by
    huggingface_hub here and in the workers). True when it was switched on."""
    if not config.offline or config.hub_endpoint:
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    return True


def open_chain(config: RunConfig, *, read_only: bool = False) -> Chain:
    """The chain the config names. `network="local"`: a LocalChain file (`read_only`: it must
    exist, an empty new one would be an empty field); else subtensor, with the wallet unless
    `read_only`. Offline on another network: SetupError, nothing opened."""
    check_offline(config)
    if config.network == LOCAL_NETWORK:
        from validator.adapters.chain.local import LocalChain

        if read_only and not config.chain_file.is_file():
            raise SetupError(f"--network local: no chain at {config.chain_file} (pass --chain-db)")
        return LocalChain(config.chain_file, netuid=config.netuid, hotkey=config.hotkey)
    from validator.adapters.chain.subtensor import SubtensorChain

    wallet = None
    if not read_only:
        import bittensor as bt

        wallet = bt.Wallet(name=config.wallet_name, hotkey=config.wallet_hotkey, path=config.wallet_path)
    return SubtensorChain(config.network, netuid=config.netuid, wallet=wallet)


def own_uid(chain: Chain) -> int | None:
    """Our uid on the subnet (for competitions-<uid>.json), or None when unknown yet."""
    hotkey = getattr(chain, "hotkey", None)
    if not hotkey:
        return None
    try:
        return chain.sync()[0].uid_of(hotkey)
    except Exception as e:  # noqa: BLE001 - the per-validator file is optional; the step reports a dead chain
        log.warning("cannot read our uid from the chain (%s): competitions-<uid>.json is not tried", e)
        return None


def model_source(model_dir: Path, endpoint: str | None, *, progress: bool = True) -> ModelSource:
    """validator.ports.ModelSource over the hub: the verified snapshot and its content hash."""
    from validator.adapters import hub

    hub.install_timeouts()  # before any request: a hub that never answers must not hang a step

    def fetch(model_id, hotkey, competition, deadline=None) -> Snapshot:
        return hub.ensure_model(model_id, hotkey, competition, model_dir, endpoint=endpoint, progress=progress,
                                deadline=deadline)

    return fetch


def make_scorer(config: RunConfig, *, devices: bool = True):
    """The scoring function the config names (validator.scoring.dispatch.Scorer); cheap, workers start lazily."""
    from validator.scoring.dispatch import make_score_fn

    cache_dir = Path(config.state_dir) / "tokenizers"
    local = make_score_fn(device=config.device or default_device(), cache_dir=cache_dir,
                          endpoint=config.hub_endpoint, isolate=config.isolate,
                          max_device_bytes=device_memory_bytes(config.max_device_memory_gb),
                          devices=[check_device(d) for d in config.devices] if devices and config.devices else None)
    if config.ray is None:
        return local
    from validator.scoring.ray_scorer import RayScorer, RaySetupError

    try:  # the driver's own scorer stays for models that are not on the hub (benchmark candidates)
        return RayScorer(config.ray, local, config.store_dir, cache_dir, config.hub_endpoint,
                         scorer_kw={"max_device_bytes": device_memory_bytes(config.max_device_memory_gb)})
    except RaySetupError as e:
        raise SetupError(str(e)) from None


def describe_source(source: Any) -> str:
    """Where a config source's copy in force came from, for the operator."""
    doc = source.document
    offline = " (offline)" if source.offline else ""
    if doc is None:
        return f"nothing loaded{offline}: {source.last_error}"
    if doc.origin == "fallback":
        return f"the copy shipped with the validator, {doc.location}{offline}"
    if doc.origin == "disk cache":
        return f"the last good copy kept in {source.cache_path} (from {doc.location}){offline}"
    return f"{doc.location}{offline}"


def build_validator(config: RunConfig, console: Any = None, *, chain: Chain | None = None, uid: Any = UNREAD_UID,
                    say: Callable[[str], None] | None = None):
    """Wire the adapters the config names into a validator.step.validator.Validator.
    `chain` and `uid`: already opened by the caller (else from the config; uid read from the
    chain); `say` gets a line for each config source in force."""
    from validator.adapters import hub, sources
    from validator.adapters.candidates import BenchmarkCandidates
    from validator.adapters.competitions_source import CompetitionsConfig
    from validator.adapters.halloffame import HallOfFameSource
    from validator.adapters.leaderboard import StepProgress
    from validator.step.validator import Settings, Validator

    endpoint = config.hub_endpoint
    state_dir = Path(config.state_dir)
    chain = open_chain(config) if chain is None else chain
    comps = CompetitionsConfig(config.competitions, uid=own_uid(chain) if uid is UNREAD_UID else uid,
                               url=constants.COMPETITIONS_URL, state_dir=state_dir, offline=config.offline)
    hall_of_fame = HallOfFameSource(config.hall_of_fame, url=constants.HALL_OF_FAME_URL, state_dir=state_dir,
                                    offline=config.offline)
    if say is not None:
        say(f"competitions: {describe_source(comps.source)}")
        say(f"hall of fame: {describe_source(hall_of_fame.source)}")
    if comps.parsed is None:
        raise SetupError(f"competitions: nothing usable ({comps.last_error})")

    def competitions():
        comps.maybe_reload()  # every COMPETITIONS_REFRESH_S; keeps the last good config on failure
        if comps.parsed is None:
            raise SystemExit(f"competitions: {comps.last_error}")
        for msg in comps.source.problems():  # a failed fetch: shown in this step's report, not only the log
            log.warning(msg)
            validator.note_problem(msg)
        return comps.parsed

    store = hub.ModelStore(config.store_dir, config.store_budget_gb)
    settings = Settings(state_dir=state_dir, offline=config.offline, dont_set_weights=config.dont_set_weights,
                        eval_samples=config.eval_samples,
                        save_step_json=config.save_step_json, step_interval_s=config.step_interval_s)
    shards = state_dir / "fineweb_shards.json"  # row counts of the dumps, kept across restarts
    validator = Validator(chain, competitions, model_source(config.store_dir, endpoint), make_scorer(config),
                          lambda name, **kw: sources.source_for(name, endpoint=endpoint, shard_list_cache=shards, **kw),
                          settings, hotkey=chain.hotkey,  # its own weights must not steer which miners it visits
                          retry_after=retry_after, cleanup=store.cleanup, progress=StepProgress(console),
                          hall_of_fame=hall_of_fame, candidates=BenchmarkCandidates(config.benchmark))
    return validator


@dataclass
class BenchmarkParts:
    """What `coldint-validator benchmark` runs on: the field's chain (None: no chain, the
    field is benchmark.json's incumbents), the model source and store, the scorer and the
    text sources, all wired as the validator wires them."""

    chain: Chain | None
    fetch: ModelSource
    model_dir: Path
    score: Any
    samples: Callable[[str], SampleSource]


def benchmark_competitions_location(config: RunConfig) -> str:
    """Where the benchmark reads competitions.json: the flag, else the URL (offline: the shipped copy)."""
    if config.competitions is not None:
        return str(config.competitions)
    if config.offline:
        from validator.adapters.competitions_source import SHIPPED_COMPETITIONS

        return str(SHIPPED_COMPETITIONS)
    return constants.COMPETITIONS_URL


def uses_chain(config: RunConfig) -> bool:
    """Whether the benchmark's field comes from a chain: online always, offline only from a LocalChain file."""
    return not config.offline or config.network == LOCAL_NETWORK


def build_benchmark(config: RunConfig) -> BenchmarkParts:
    """The benchmark's parts (the hub endpoint already opened); SetupError when offline
    names a network or a remote hub. The chain is read only (no wallet)."""
    from validator.adapters import sources

    check_offline(config, chain_needed=False)
    endpoint = config.hub_endpoint
    chain = open_chain(config, read_only=True) if uses_chain(config) else None
    return BenchmarkParts(chain=chain, fetch=model_source(config.store_dir, endpoint, progress=False),
                          model_dir=config.store_dir, score=make_scorer(config, devices=False),
                          samples=lambda dataset: sources.source_for(dataset, endpoint=endpoint))
