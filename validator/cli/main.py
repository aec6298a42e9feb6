"""The `coldint-validator` command: run, demo, leaderboard, chain, consensus, hub, and the
commands plugged in through the `coldint_validator.commands` entry-point group (benchmark).

This module is the parser and the dispatch; each command's work is in its own module
(validator.cli.run, validator.cli.chain, ...), the wiring in validator.app.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from validator import app
from validator.cli.logsetup import add_log_level, setup_logging
from validator.preflight import SetupError, check_writable_dir
from validator.cli.argtypes import int_at_least

# entry points in this group are callables `register(subparsers)` adding one command
COMMANDS_GROUP = "coldint_validator.commands"


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
        from validator.adapters.htmlreport import write_report
        from validator.adapters.step_report import step_to_report

        written = write_report(step_to_report(step), args.out)
        print(f"report: {written['html']} (and report.json, {len(written) - 2} PNG plots)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from validator.cli.demo import run_demo

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


def register_plugins(subparsers: Any) -> list[str]:
    """Add the commands of the COMMANDS_GROUP entry points (`pip install -e .` registers
    setup.py's); the names added. A plugin that fails to load is logged and left out: it
    must not take `run` down with it."""
    from importlib.metadata import entry_points

    added = []
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        if ep.name in subparsers.choices:
            continue
        try:
            ep.load()(subparsers)
        except Exception as e:  # noqa: BLE001 - a broken plugin is reported, the built-in commands stay
            logging.getLogger("validator").warning("command plugin %s (%s) not loaded: %s", ep.name, ep.value, e)
            continue
        added.append(ep.name)
    return added


def build_parser() -> argparse.ArgumentParser:
    from validator.cli.chain import register_commands
    from validator.cli.consensus import register_consensus_command
    from validator.cli.hub import register_hub_command
    from validator.cli.run import register_run_command

    parser = argparse.ArgumentParser(prog="coldint-validator", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_run_command(sub)

    p = sub.add_parser("demo", help="build a local field (chain, hub, models, text) and run two steps on it")
    p.add_argument("--dir", type=Path, default=Path("demo"), help="where the field is built")
    p.add_argument("--steps", type=int_at_least(0), default=2, help="validator steps to run on the field")
    p.add_argument("--eval-samples", type=int_at_least(1), default=200, help="samples per step")
    add_log_level(p, "WARNING")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("leaderboard", help="re-render the last saved step")
    p.add_argument("--state-dir", type=Path, default=app.DEFAULT_STATE_DIR, help="the validator's state dir")
    p.add_argument("--step-json", type=Path, default=None, help="a file written by --save-step-json")
    p.add_argument("--out", type=Path, default=None,
                   help="also write report.html, report.json and PNG plots (loss, win rate, win matrix) here")
    add_log_level(p, "WARNING")
    p.set_defaults(func=cmd_leaderboard)

    register_plugins(sub)
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
