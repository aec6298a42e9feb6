"""`coldint-validator run`: its flags, flags -> RunConfig, every check before work, the loop.

The wiring itself is validator.app's; this module only maps the command line onto a
RunConfig, checks the setup (one clear error, exit status 2, nothing written) and drives
the validator's steps with a run lock, a local hub and Ctrl-C handling around them.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import constants
from validator import app
from validator.app import RunConfig
from validator.cli.logsetup import add_log_level
from validator.preflight import (SetupError, check_device, check_registration, check_wallet, check_writable_dir,
                                 default_device)
from validator.cli.argtypes import existing_file, file_or_url, finite_float, int_at_least, non_negative_float
from validator.cli.scoring_flags import add_scoring_flags

OFFLINE_HELP = ("no network at all: the chain is a LocalChain file (--network local; any other network is refused "
                "before work), the hub only a local mirror (local:DIR or an endpoint on this machine; without one, "
                "only models already in the model store), competitions.json and the hall of fame from a file "
                "flag, the state dir's last good copy or the copy shipped in constants/ (never a URL); no chain "
                "writes, no wandb")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("chain")
    g.add_argument("--network", default="finney",
                   help="finney | test | ws://host:port | local (a LocalChain SQLite file, see --chain-db)")
    g.add_argument("--netuid", type=int_at_least(0), default=constants.NETUID, help="subnet id")
    g.add_argument("--chain-db", type=Path, help="--network local: the LocalChain file "
                   "(default: <state-dir>/chain.sqlite)")
    g.add_argument("--hotkey", help="LocalChain: the validator's hotkey (weights are set as it)")
    g.add_argument("--wallet.name", dest="wallet_name", default="default", help="subtensor: the wallet (coldkey) name")
    g.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default",
                   help="subtensor: the hotkey weights are set with; must be registered on --netuid")
    g.add_argument("--wallet.path", dest="wallet_path", default="~/.bittensor/wallets", help="where wallets are")
    g = p.add_argument_group("evaluation")
    add_scoring_flags(g)
    g.add_argument("--devices", default=None, metavar="DEV,DEV",
                   help="score on several devices at once, one worker per device (e.g. cuda:0,cuda:1; "
                        "cpu,cpu runs two CPU workers); default: --device alone")
    g.add_argument("--competitions", default=None, type=file_or_url,
                   help=f"competitions.json: a file or an https URL (default: {constants.COMPETITIONS_URL})")
    g.add_argument("--benchmark", type=existing_file, default=None,
                   help="benchmark.json of local candidates to inject (default: none)")
    g.add_argument("--hall-of-fame", default=None, type=file_or_url,
                   help=f"hall_of_fame.json: a file or an https URL (default: {constants.HALL_OF_FAME_URL})")
    g.add_argument("--eval-samples", type=int_at_least(1), default=None,
                   help="samples per step (default: competitions.json's eval_samples, else "
                        f"{constants.EVAL_SAMPLES})")
    g = p.add_argument_group("storage")
    g.add_argument("--state-dir", type=Path, default=app.DEFAULT_STATE_DIR,
                   help="state, eval caches, config copies, the lock file; one validator per dir")
    g.add_argument("--model-dir", type=Path, default=None, help="model store (default: <state-dir>/models)")
    g.add_argument("--model-store-gb", type=finite_float, default=None,
                   help="N: keep the store under N GB; -N: keep N GB of the disk free "
                        f"(default: -{constants.MODEL_STORE_DEFAULT_FREE_GB:g}, keep that much free)")
    g = p.add_argument_group("behaviour")
    g.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    g.add_argument("--dont-set-weights", action="store_true", help="score and report, never set weights")
    g.add_argument("--steps", type=int_at_least(0), default=None,
                   help="run N steps, then exit; 0 checks the setup and exits (default: run until stopped)")
    g.add_argument("--step-interval", type=non_negative_float, default=constants.STEP_MIN_INTERVAL_S,
                   help="minimum seconds between step starts")
    g.add_argument("--save-step-json", type=Path, default=None, help="also write each step's data here")
    g.add_argument("--wandb", action="store_true", help="log each step's table to Weights & Biases")
    add_log_level(p, None)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run's flags as a RunConfig, one to one."""
    return RunConfig(
        network=args.network, netuid=args.netuid, chain_db=args.chain_db, hotkey=args.hotkey,
        wallet_name=args.wallet_name, wallet_hotkey=args.wallet_hotkey, wallet_path=args.wallet_path,
        state_dir=args.state_dir, model_dir=args.model_dir, model_store_gb=args.model_store_gb,
        endpoint=args.hf_endpoint, device=args.device,
        devices=tuple(d.strip() for d in args.devices.split(",")) if args.devices else None,
        max_device_memory_gb=args.max_device_memory, isolate=not args.no_isolation, ray=args.ray,
        competitions=args.competitions, hall_of_fame=args.hall_of_fame, benchmark=args.benchmark,
        offline=args.offline, dont_set_weights=args.dont_set_weights, eval_samples=args.eval_samples,
        steps=args.steps, step_interval_s=args.step_interval, save_step_json=args.save_step_json, wandb=args.wandb)


def say(line: str) -> None:
    """An operator message at start: on stderr whatever the log level."""
    print(line, file=sys.stderr, flush=True)


def check_run_setup(config: RunConfig) -> RunConfig:
    """Every check that needs no chain; the config with the device to score on. SetupError on the first problem."""
    app.check_offline(config)
    device = check_device(config.device) if config.device is not None else default_device()
    if config.devices:
        for d in config.devices:
            check_device(d)
    check_writable_dir(config.state_dir, "--state-dir")
    check_writable_dir(config.store_dir, "--model-dir")
    if config.save_step_json is not None:
        check_writable_dir(config.save_step_json.parent, "--save-step-json")
    return dataclasses.replace(config, device=device)


def open_checked_chain(config: RunConfig, chain_existed: bool = True) -> tuple[Any, Any]:
    """The chain, and our uid on it (app.UNREAD_UID: read by build_validator). On a subtensor
    network that sets weights, the wallet's hotkey must be readable and registered."""
    chain = app.open_chain(config)
    if config.network == app.LOCAL_NETWORK:
        say(describe_local_chain(chain, existed=chain_existed))
        return chain, app.UNREAD_UID
    if config.dont_set_weights:
        return chain, app.UNREAD_UID
    hotkey = check_wallet(chain.wallet, config.wallet_name, config.wallet_hotkey, config.wallet_path)
    uid = check_registration(chain, hotkey, config.netuid, config.network)
    if uid is not None:
        say(f"{config.network} netuid {config.netuid}: hotkey {hotkey} is uid {uid}")
    return chain, uid


def describe_local_chain(chain: Any, existed: bool = True) -> str:
    metagraph = chain.sync()[0]
    ours = chain.hotkey
    miners = [hk for hk in metagraph.hotkeys if hk != ours]
    line = f"local chain {chain.path}: {len(miners)} miner(s), block {metagraph.block}"
    if not existed:
        line += " (a new, empty file)"
    if not miners:
        line += f"; nothing to score: register miners with `coldint-validator chain register --chain-db {chain.path}`"
    return line


def cmd_run(args: argparse.Namespace) -> int:
    from validator.adapters.leaderboard import make_console, print_report
    from validator.cli.runlock import LockHeld, RunLock
    from validator.cli.stopping import exit_status, graceful_loop_stop

    config = check_run_setup(config_from_args(args))
    if app.hub_offline(config):
        say("hub: offline, only models already in the model store")
    chain_existed = config.network != app.LOCAL_NETWORK or config.chain_file.exists()
    try:
        lock = RunLock(config.state_dir).acquire()
    except LockHeld as e:
        raise SetupError(str(e)) from None
    close_hub = None
    try:
        if lock.took_over is not None:
            say(f"took over the stale lock of pid {lock.took_over} (no longer running) in {config.state_dir}")
        if (config.endpoint or "").startswith("local:"):  # a mirror dir: olah on loopback for this run
            from validator.cli.hub import EndpointError, open_endpoint

            try:
                url, close_hub = open_endpoint(config.endpoint)
            except EndpointError as e:
                raise SetupError(f"--hf-endpoint {e}") from None
            config = dataclasses.replace(config, endpoint=url)
            say(f"local hub at {url}")
        chain, uid = open_checked_chain(config, chain_existed)
        console = make_console()
        validator = app.build_validator(config, console, chain=chain, uid=uid, say=say)
        budget = config.store_budget_gb
        say(f"model store {config.store_dir}: "
            + (f"keeps {-budget:g} GB of its disk free" if budget < 0 else f"at most {budget:g} GB"))
        if config.steps == 0:
            say("setup checked (--steps 0)")
            return 0
        wandb_run = _wandb_init(config) if config.wandb else None
        stop = graceful_loop_stop(validator)
        for report in validator.run(config.steps):
            validator.progress.stop()
            print_report(report, console)
            if wandb_run is not None:
                _wandb_log(wandb_run, report)
        return 0 if stop.first is None else exit_status(stop.first)
    finally:
        if close_hub is not None:
            close_hub()
        lock.release()


def _wandb_init(config: RunConfig) -> Any:
    try:
        import wandb
    except ImportError:
        raise SystemExit("--wandb needs the wandb extra: pip install 'coldint-validator[wandb]'")
    return wandb.init(project="coldint-validator", name=f"validator-{config.hotkey or config.wallet_hotkey}",
                      config={k: str(v) for k, v in dataclasses.asdict(config).items()})


WANDB_COLUMNS = ["label", "uid", "win_rate", "loss_per_token", "weight", "status"]


def _wandb_log(run: Any, report: dict) -> None:
    """Each competition's table of the step; a logging failure never stops the validator."""
    import wandb

    try:
        for cid, comp in report["competitions"].items():
            table = wandb.Table(columns=WANDB_COLUMNS, data=[[m.get(c) for c in WANDB_COLUMNS] for m in comp["models"]])
            run.log({f"{cid}/leaderboard": table, "block": report["block"]}, step=report["step"])
    except Exception as e:  # noqa: BLE001 - wandb is optional telemetry
        logging.getLogger("validator").warning("wandb logging failed for step %s: %s", report.get("step"), e)


def register_run_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add `run` to a `coldint-validator` subparsers object; returns its parser."""
    p = subparsers.add_parser("run", help="run the validator", description="Run the validator: score the miners' "
                              "models each step and set weights. Checks the whole setup before the first step.")
    add_run_flags(p)
    p.set_defaults(func=cmd_run)
    return p
