"""The `coldint-validator` command: run, demo, leaderboard, benchmark, chain."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import constants

DEFAULT_STATE_DIR = Path(constants.STATE_DIR_DEFAULT)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("chain")
    g.add_argument("--network", default="local",
                   help="local (an SQLite chain in the state dir) | finney | test | ws://host:port")
    g.add_argument("--netuid", type=int, default=constants.NETUID)
    g.add_argument("--chain-db", type=Path, help="LocalChain file (default: <state-dir>/chain.sqlite)")
    g.add_argument("--hotkey", help="LocalChain: the validator's hotkey (weights are set as it)")
    g.add_argument("--wallet.name", dest="wallet_name", default="default")
    g.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default")
    g.add_argument("--wallet.path", dest="wallet_path", default="~/.bittensor/wallets")
    g = p.add_argument_group("evaluation")
    g.add_argument("--device", default=None, help="cuda | cuda:N | cpu (default: cuda when available)")
    g.add_argument("--competitions", default=None,
                   help=f"competitions.json: a file or an https URL (default: {constants.COMPETITIONS_URL})")
    g.add_argument("--benchmark", type=Path, default=None, help="benchmark.json of local candidates to inject")
    g.add_argument("--hall-of-fame", default=None,
                   help=f"hall_of_fame.json: a file or an https URL (default: {constants.HALL_OF_FAME_URL})")
    g.add_argument("--eval-samples", type=int, default=None,
                   help="samples per step (default: competitions.json's eval_samples, else "
                        f"{constants.EVAL_SAMPLES})")
    g.add_argument("--hf-endpoint", default=None, help="hub endpoint (default: $HF_ENDPOINT or huggingface.co)")
    g.add_argument("--no-isolation", action="store_true",
                   help="score in this process instead of a worker per model (debugging only)")
    g = p.add_argument_group("storage")
    g.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    g.add_argument("--model-dir", type=Path, default=None, help="model store (default: <state-dir>/models)")
    g.add_argument("--model-store-gb", type=float, default=None,
                   help="N: keep the store under N GB; -N: keep N GB of the disk free")
    g = p.add_argument_group("behaviour")
    g.add_argument("--offline", action="store_true", help="never set weights, never reach a network chain")
    g.add_argument("--dont-set-weights", action="store_true")
    g.add_argument("--steps", type=int, default=None, help="run N steps, then exit")
    g.add_argument("--step-interval", type=float, default=constants.STEP_MIN_INTERVAL_S,
                   help="minimum seconds between step starts")
    g.add_argument("--save-step-json", type=Path, default=None, help="also write each step's data here")
    g.add_argument("--wandb", action="store_true", help="log each step's table to Weights & Biases")
    g.add_argument("--log-level", default="INFO")


def make_chain(args: argparse.Namespace):
    if args.network == "local" or args.offline and args.network in ("finney", "test") and args.chain_db:
        from validator.chain.local import LocalChain

        db = args.chain_db or args.state_dir / constants.LOCAL_CHAIN_DB
        return LocalChain(db, netuid=args.netuid, hotkey=args.hotkey)
    from validator.chain.subtensor import SubtensorChain

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


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_validator(args: argparse.Namespace, console=None):
    """Wire the adapters named by the flags into a Validator."""
    from validator import data, hub
    from validator.competitions import CompetitionsConfig
    from validator.halloffame import HallOfFameSource
    from validator.leaderboard import StepProgress
    from validator.loop import Settings, Validator
    from validator.scorer import make_score_fn

    endpoint = args.hf_endpoint or os.environ.get("HF_ENDPOINT")
    model_dir = args.model_dir or args.state_dir / "models"
    chain = make_chain(args)
    comps = CompetitionsConfig(args.competitions, uid=_own_uid(chain), url=constants.COMPETITIONS_URL,
                               state_dir=args.state_dir, offline=args.offline)
    hall_of_fame = HallOfFameSource(args.hall_of_fame, url=constants.HALL_OF_FAME_URL, state_dir=args.state_dir,
                                    offline=args.offline)

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
                          endpoint=endpoint, isolate=not args.no_isolation)
    store = hub.ModelStore(model_dir, args.model_store_gb) if args.model_store_gb is not None else None
    settings = Settings(state_dir=args.state_dir, offline=args.offline, dont_set_weights=args.dont_set_weights,
                        benchmark_path=args.benchmark, eval_samples=args.eval_samples, save_step_json=args.save_step_json,
                        step_interval_s=args.step_interval)
    hotkey = chain.hotkey  # its own weights must not steer which top miners it visits
    shards = args.state_dir / "fineweb_shards.json"  # row counts of the dumps, kept across restarts
    validator = Validator(chain, competitions, fetch, score,
                          lambda name, **kw: data.source_for(name, endpoint=endpoint, shard_list_cache=shards, **kw),
                          settings, hotkey=hotkey, retry_after=hub.retry_after,
                          cleanup=store.cleanup if store else None, progress=StepProgress(console),
                          hall_of_fame=hall_of_fame)
    return validator


def cmd_run(args: argparse.Namespace) -> int:
    from validator.leaderboard import make_console, print_report

    console = make_console()
    validator = build_validator(args, console)
    wandb_run = _wandb_init(args) if args.wandb else None
    for report in validator.run(args.steps):
        validator.progress.stop()
        print_report(report, console)
        if wandb_run is not None:
            _wandb_log(wandb_run, report)
    return 0


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
    from validator.leaderboard import load_report, print_report

    path = args.step_json or args.state_dir / "last_step.json"
    try:
        step = load_report(path)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_report(step)
    if args.out:
        from benchmark.report import write_report
        from validator.leaderboard import step_to_report

        written = write_report(step_to_report(step), args.out)
        print(f"report: {written['html']} (and report.json, {len(written) - 2} PNG plots)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from validator.demo import run_demo

    return run_demo(args.dir, steps=args.steps, eval_samples=args.eval_samples)


def build_parser() -> argparse.ArgumentParser:
    from benchmark.compare import register_benchmark_command
    from validator.chain.cli import register_commands
    from validator.consensus_cli import register_consensus_command

    parser = argparse.ArgumentParser(prog="coldint-validator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the validator")
    add_run_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="build a local field (chain, hub, models, text) and run two steps on it")
    p.add_argument("--dir", type=Path, default=Path("demo"), help="where the field is built (default: ./demo)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--eval-samples", type=int, default=200, help="samples per step (default 200)")
    p.add_argument("--log-level", default="WARNING")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("leaderboard", help="re-render the last saved step")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    p.add_argument("--step-json", type=Path, default=None, help="a file written by --save-step-json")
    p.add_argument("--out", type=Path, default=None,
                   help="also write report.html, report.json and PNG plots (loss, win rate, win matrix) here")
    p.add_argument("--log-level", default="WARNING")
    p.set_defaults(func=cmd_leaderboard)

    register_benchmark_command(sub)
    register_commands(sub)
    register_consensus_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if hasattr(args, "func"):
        return args.func(args)
    from validator.chain.cli import run_chain_command

    return run_chain_command(args)


if __name__ == "__main__":
    sys.exit(main())
