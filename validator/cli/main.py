"""The `coldint-validator` command: run, demo, leaderboard, benchmark, chain."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from validator.core.failures import retry_after
import constants
from validator.cli.logsetup import LEVELS, log_level, setup_logging
from validator.cli.preflight import (SetupError, check_device, check_offline_endpoint, check_registration, check_wallet,
                                 check_writable_dir, default_device, device_memory_bytes, existing_file, file_or_url,
                                 finite_float, int_at_least, non_negative_float)

DEFAULT_STATE_DIR = Path(constants.STATE_DIR_DEFAULT)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("chain")
    g.add_argument("--network", default="finney",
                   help="finney | test | ws://host:port | local (a LocalChain SQLite file, see --chain-db)")
    g.add_argument("--netuid", type=int_at_least(0), default=constants.NETUID, help="subnet id")
    g.add_argument("--chain-db", type=Path, help="LocalChain file (default: <state-dir>/chain.sqlite); "
                   "with --offline on finney/test the chain to read instead of the network")
    g.add_argument("--hotkey", help="LocalChain: the validator's hotkey (weights are set as it)")
    g.add_argument("--wallet.name", dest="wallet_name", default="default", help="subtensor: the wallet (coldkey) name")
    g.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default",
                   help="subtensor: the hotkey weights are set with; must be registered on --netuid")
    g.add_argument("--wallet.path", dest="wallet_path", default="~/.bittensor/wallets", help="where wallets are")
    g = p.add_argument_group("evaluation")
    g.add_argument("--device", default=None, help="cuda | cuda:N | cpu (default: cuda when available)")
    g.add_argument("--devices", default=None, metavar="DEV,DEV",
                   help="score on several devices at once, one worker per device (e.g. cuda:0,cuda:1; "
                        "cpu,cpu runs two CPU workers); default: --device alone")
    g.add_argument("--max-device-memory", type=non_negative_float, default=None, metavar="GB",
                   help="device memory a model may use: a model whose weights exceed it is scored layer by layer "
                        "(same losses; default: streamed only when it exceeds the free CUDA memory)")
    g.add_argument("--competitions", default=None, type=file_or_url,
                   help=f"competitions.json: a file or an https URL (default: {constants.COMPETITIONS_URL})")
    g.add_argument("--benchmark", type=existing_file, default=None,
                   help="benchmark.json of local candidates to inject (default: none)")
    g.add_argument("--hall-of-fame", default=None, type=file_or_url,
                   help=f"hall_of_fame.json: a file or an https URL (default: {constants.HALL_OF_FAME_URL})")
    g.add_argument("--eval-samples", type=int_at_least(1), default=None,
                   help="samples per step (default: competitions.json's eval_samples, else "
                        f"{constants.EVAL_SAMPLES})")
    g.add_argument("--hf-endpoint", default=None,
                   help="hub endpoint URL, or local:<mirror dir> to serve a git mirror on 127.0.0.1 for this run "
                        "(default: $HF_ENDPOINT or huggingface.co)")
    g.add_argument("--no-isolation", action="store_true",
                   help="score in this process instead of a worker per model (debugging only)")
    g = p.add_argument_group("storage")
    g.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                   help="state, eval caches, config copies, the lock file; one validator per dir")
    g.add_argument("--model-dir", type=Path, default=None, help="model store (default: <state-dir>/models)")
    g.add_argument("--model-store-gb", type=finite_float, default=None,
                   help="N: keep the store under N GB; -N: keep N GB of the disk free "
                        f"(default: -{constants.MODEL_STORE_DEFAULT_FREE_GB:g}, keep that much free)")
    g = p.add_argument_group("behaviour")
    g.add_argument("--offline", action="store_true",
                   help="no network at all: no chain writes, a LocalChain file (--chain-db) for the chain, "
                        "configs from the state dir's last good copy, a file flag or the shipped copy")
    g.add_argument("--dont-set-weights", action="store_true", help="score and report, never set weights")
    g.add_argument("--steps", type=int_at_least(0), default=None,
                   help="run N steps, then exit; 0 checks the setup and exits (default: run until stopped)")
    g.add_argument("--step-interval", type=non_negative_float, default=constants.STEP_MIN_INTERVAL_S,
                   help="minimum seconds between step starts")
    g.add_argument("--save-step-json", type=Path, default=None, help="also write each step's data here")
    g.add_argument("--wandb", action="store_true", help="log each step's table to Weights & Biases")
    add_log_level(p, None)


def add_log_level(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--log-level", type=log_level, default=default, metavar="LEVEL",
                   help=f"{', '.join(LEVELS)} (default: "
                        + (default if default else "INFO on a terminal, WARNING when stderr is not one") + ")")


def check_offline_chain(args: argparse.Namespace) -> None:
    if args.network != "local" and args.offline and not args.chain_db:
        raise SetupError(f"--offline --network {args.network}: nothing is read from the network offline, so a "
                         "LocalChain file is needed (--chain-db PATH); to watch the real chain without setting "
                         "weights use --dont-set-weights instead of --offline")


def make_chain(args: argparse.Namespace):
    """The chain named by the flags. Offline, only a LocalChain file: no network is reached."""
    check_offline_chain(args)
    if args.network == "local" or args.offline:
        from validator.adapters.chain.local import LocalChain

        db = args.chain_db or args.state_dir / constants.LOCAL_CHAIN_DB
        if args.network != "local" and not Path(db).is_file():
            raise SetupError(f"--chain-db {db}: no such LocalChain file")
        return LocalChain(db, netuid=args.netuid, hotkey=args.hotkey)
    from validator.adapters.chain.subtensor import SubtensorChain

    wallet = None
    if not args.offline:
        import bittensor as bt

        wallet = bt.Wallet(name=args.wallet_name, hotkey=args.wallet_hotkey, path=args.wallet_path)
    return SubtensorChain(args.network, netuid=args.netuid, wallet=wallet)


def _own_uid(chain) -> int | None:
    """Our uid on the subnet (for competitions-<uid>.json), or None when unknown yet."""
    hotkey = getattr(chain, "hotkey", None)
    if not hotkey:
        return None
    try:
        return chain.sync()[0].uid_of(hotkey)
    except Exception as e:  # noqa: BLE001 - the per-validator file is optional; the step reports a dead chain
        logging.getLogger("validator").warning("cannot read our uid from the chain (%s): "
                                               "competitions-<uid>.json is not tried", e)
        return None


def model_store_budget(args: argparse.Namespace) -> float:
    """--model-store-gb, else keep MODEL_STORE_DEFAULT_FREE_GB of the disk free: re-committed
    large models must not fill the disk of a box nobody watches."""
    return args.model_store_gb if args.model_store_gb is not None else -constants.MODEL_STORE_DEFAULT_FREE_GB


_UNSET: object = object()


def build_validator(args: argparse.Namespace, console=None, *, chain=None, uid: object = _UNSET,
                    say: Callable[[str], None] | None = None):
    """Wire the adapters named by the flags into a Validator. `chain` and `uid`: already made
    by the caller (else from the flags); `say` gets a line for each config source in force."""
    from validator.adapters import data
    from validator.adapters import hub
    from validator.core.competitions import CompetitionsConfig
    from validator.adapters.halloffame import HallOfFameSource
    from validator.adapters.leaderboard import StepProgress
    from validator.step.loop import Settings, Validator
    from validator.scoring.dispatch import make_score_fn

    endpoint = args.hf_endpoint or os.environ.get("HF_ENDPOINT")
    model_dir = args.model_dir or args.state_dir / "models"
    chain = make_chain(args) if chain is None else chain
    comps = CompetitionsConfig(args.competitions, uid=_own_uid(chain) if uid is _UNSET else uid,
                               url=constants.COMPETITIONS_URL, state_dir=args.state_dir, offline=args.offline)
    hall_of_fame = HallOfFameSource(args.hall_of_fame, url=constants.HALL_OF_FAME_URL, state_dir=args.state_dir,
                                    offline=args.offline)
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
            logging.getLogger("validator").warning(msg)
            validator.note_problem(msg)
        return comps.parsed

    def fetch(model_id, hotkey, competition, deadline=None):
        path = hub.ensure_model(model_id, hotkey, competition, model_dir, endpoint=endpoint, deadline=deadline)
        return path, hub.verified_dir_hash(path) or hub.model_dir_hash(path)

    score = make_score_fn(device=args.device or default_device(), cache_dir=args.state_dir / "tokenizers",
                          endpoint=endpoint, isolate=not args.no_isolation,
                          max_device_bytes=device_memory_bytes(args.max_device_memory),
                          devices=[check_device(d.strip()) for d in args.devices.split(",")]
                          if args.devices else None)
    store = hub.ModelStore(model_dir, model_store_budget(args))
    settings = Settings(state_dir=args.state_dir, offline=args.offline, dont_set_weights=args.dont_set_weights,
                        benchmark_path=args.benchmark, eval_samples=args.eval_samples, save_step_json=args.save_step_json,
                        step_interval_s=args.step_interval)
    hotkey = chain.hotkey  # its own weights must not steer which top miners it visits
    shards = args.state_dir / "fineweb_shards.json"  # row counts of the dumps, kept across restarts
    validator = Validator(chain, competitions, fetch, score,
                          lambda name, **kw: data.source_for(name, endpoint=endpoint, shard_list_cache=shards, **kw),
                          settings, hotkey=hotkey, retry_after=retry_after,
                          cleanup=store.cleanup, progress=StepProgress(console),
                          hall_of_fame=hall_of_fame)
    return validator


def describe_source(source) -> str:
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


def say(line: str) -> None:
    """An operator message at start: on stderr whatever the log level."""
    print(line, file=sys.stderr, flush=True)


def check_run_setup(args: argparse.Namespace) -> str:
    """Every check that needs no chain; returns the device to score on. SetupError on the first problem."""
    if args.offline:
        check_offline_chain(args)
        if not (args.hf_endpoint or "").startswith("local:"):  # a local mirror is served on loopback
            check_offline_endpoint(args.hf_endpoint or os.environ.get("HF_ENDPOINT"))
        if args.wandb:
            raise SetupError("--offline --wandb: Weights & Biases needs the network; drop one of them")
    device = check_device(args.device) if args.device is not None else default_device()
    check_writable_dir(args.state_dir, "--state-dir")
    check_writable_dir(args.model_dir or args.state_dir / "models", "--model-dir")
    if args.save_step_json is not None:
        check_writable_dir(args.save_step_json.parent, "--save-step-json")
    return device


def open_chain(args: argparse.Namespace):
    """The chain, and our uid on it (_UNSET: to be read by build_validator). On a subtensor
    network that sets weights, the wallet's hotkey must be readable and registered."""
    chain = make_chain(args)
    from validator.adapters.chain.local import LocalChain

    if isinstance(chain, LocalChain):
        say(describe_local_chain(chain, existed=getattr(args, "_chain_existed", True)))
        return chain, _UNSET
    if args.dont_set_weights:
        return chain, _UNSET
    hotkey = check_wallet(chain.wallet, args.wallet_name, args.wallet_hotkey, args.wallet_path)
    uid = check_registration(chain, hotkey, args.netuid, args.network)
    if uid is not None:
        say(f"{args.network} netuid {args.netuid}: hotkey {hotkey} is uid {uid}")
    return chain, uid


def describe_local_chain(chain, existed: bool = True) -> str:
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

    args.device = check_run_setup(args)
    if args.offline and not (args.hf_endpoint or os.environ.get("HF_ENDPOINT")):
        os.environ["HF_HUB_OFFLINE"] = "1"  # models only from the store; read by huggingface_hub and the workers
        say("hub: offline, only models already in the model store")
    if args.network == "local":
        args._chain_existed = Path(args.chain_db or args.state_dir / constants.LOCAL_CHAIN_DB).exists()
    try:
        lock = RunLock(args.state_dir).acquire()
    except LockHeld as e:
        raise SetupError(str(e)) from None
    close_hub = None
    try:
        if lock.took_over is not None:
            say(f"took over the stale lock of pid {lock.took_over} (no longer running) in {args.state_dir}")
        if (args.hf_endpoint or "").startswith("local:"):  # a mirror dir: olah on loopback for this run
            from validator.cli.hub import EndpointError, open_endpoint

            try:
                args.hf_endpoint, close_hub = open_endpoint(args.hf_endpoint)
            except EndpointError as e:
                raise SetupError(f"--hf-endpoint {e}") from None
            say(f"local hub at {args.hf_endpoint}")
        chain, uid = open_chain(args)
        console = make_console()
        validator = build_validator(args, console, chain=chain, uid=uid, say=say)
        budget = model_store_budget(args)
        say(f"model store {args.model_dir or args.state_dir / 'models'}: "
            + (f"keeps {-budget:g} GB of its disk free" if budget < 0 else f"at most {budget:g} GB"))
        if args.steps == 0:
            say("setup checked (--steps 0)")
            return 0
        wandb_run = _wandb_init(args) if args.wandb else None
        stop = graceful_loop_stop(validator)
        for report in validator.run(args.steps):
            validator.progress.stop()
            print_report(report, console)
            if wandb_run is not None:
                _wandb_log(wandb_run, report)
        return 0 if stop.first is None else exit_status(stop.first)
    finally:
        if close_hub is not None:
            close_hub()
        lock.release()


def _wandb_init(args):
    try:
        import wandb
    except ImportError:
        raise SystemExit("--wandb needs the wandb extra: pip install 'coldint-validator[wandb]'")
    return wandb.init(project="coldint-validator", name=f"validator-{args.hotkey or args.wallet_hotkey}",
                      config={k: str(v) for k, v in vars(args).items() if k != "func"})


WANDB_COLUMNS = ["label", "uid", "win_rate", "loss_per_token", "weight", "status"]


def _wandb_log(run, report: dict) -> None:
    """Each competition's table of the step; a logging failure never stops the validator."""
    import wandb

    try:
        for cid, comp in report["competitions"].items():
            table = wandb.Table(columns=WANDB_COLUMNS, data=[[m.get(c) for c in WANDB_COLUMNS] for m in comp["models"]])
            run.log({f"{cid}/leaderboard": table, "block": report["block"]}, step=report["step"])
    except Exception as e:  # noqa: BLE001 - wandb is optional telemetry
        logging.getLogger("validator").warning("wandb logging failed for step %s: %s", report.get("step"), e)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from validator.adapters.leaderboard import load_report, print_report

    if args.out:
        check_writable_dir(args.out, "--out")  # before the work, not after the step is rendered
    path = args.step_json or args.state_dir / "last_step.json"
    try:
        step = load_report(path)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_report(step)
    if args.out:
        from benchmark.report import write_report
        from validator.adapters.leaderboard import step_to_report

        written = write_report(step_to_report(step), args.out)
        print(f"report: {written['html']} (and report.json, {len(written) - 2} PNG plots)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from validator.demo.run import run_demo

    check_writable_dir(args.dir, "--dir")
    return run_demo(args.dir, steps=args.steps, eval_samples=args.eval_samples)


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, unless the text already says it or there is
    none worth showing (None, False: a switch that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or not action.option_strings or action.default in (None, False)
                or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("coldint-validator")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def subparsers_of(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below `parser`, depth first."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                out += [sub] + subparsers_of(sub)
    return out


def build_parser() -> argparse.ArgumentParser:
    from benchmark.compare import register_benchmark_command
    from validator.cli.chain import register_commands
    from validator.cli.consensus import register_consensus_command
    from validator.cli.hub import register_hub_command

    parser = argparse.ArgumentParser(prog="coldint-validator", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the validator", description="Run the validator: score the miners' "
                       "models each step and set weights. Checks the whole setup before the first step.")
    add_run_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="build a local field (chain, hub, models, text) and run two steps on it")
    p.add_argument("--dir", type=Path, default=Path("demo"), help="where the field is built")
    p.add_argument("--steps", type=int_at_least(0), default=2, help="validator steps to run on the field")
    p.add_argument("--eval-samples", type=int_at_least(1), default=200, help="samples per step")
    add_log_level(p, "WARNING")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("leaderboard", help="re-render the last saved step")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="the validator's state dir")
    p.add_argument("--step-json", type=Path, default=None, help="a file written by --save-step-json")
    p.add_argument("--out", type=Path, default=None,
                   help="also write report.html, report.json and PNG plots (loss, win rate, win matrix) here")
    add_log_level(p, "WARNING")
    p.set_defaults(func=cmd_leaderboard)

    register_benchmark_command(sub)
    register_commands(sub)
    register_consensus_command(sub)
    register_hub_command(sub)
    text = f"coldint-validator {version()}"
    parser.add_argument("--version", action="version", version=text)
    for p in subparsers_of(parser):
        p.formatter_class = HelpFormatter
        if "--version" not in p._option_string_actions:
            p.add_argument("--version", action="version", version=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; 2 for a setup that cannot work, 128 + N when stopped by signal N."""
    from validator.cli.stopping import StopNow, exit_status, install_stop_now

    install_stop_now()  # SIGTERM unwinds like Ctrl-C: olah and workers are stopped, state saved
    try:
        args = build_parser().parse_args(argv)
        setup_logging(getattr(args, "log_level", None))
        try:
            if hasattr(args, "func"):
                return args.func(args)
            from validator.cli.chain import run_chain_command

            return run_chain_command(args)
        except SetupError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    except StopNow as e:
        print(f"stopped ({signal_name(e.signum)})", file=sys.stderr)
        return exit_status(e.signum)


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


if __name__ == "__main__":
    sys.exit(main())
