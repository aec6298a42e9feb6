"""`coldint-validator chain ...`: administer a LocalChain file from the shell.

    chain register HOTKEY [--coldkey C] [--stake S] [--validator]
    chain commit HOTKEY TEXT          (TEXT must be a valid model commitment)
    chain advance [N]
    chain show
    chain weights VALIDATOR_HOTKEY
Every subcommand takes --chain-db PATH (default constants.CHAIN_DB_DEFAULT).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

import constants
from validator.core.chain import ChainError
from validator.adapters.chain.local import LocalChain
from validator.core.identity import InvalidCommitment, ModelId
from validator.adapters.leaderboard import make_console
from validator.cli.argtypes import int_at_least, non_negative_float


def register_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `chain` command group to an argparse subparsers object; returns its parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--chain-db", default=constants.CHAIN_DB_DEFAULT, metavar="PATH",
        help=f"the local chain SQLite file (default {constants.CHAIN_DB_DEFAULT})",
    )
    common.add_argument("--netuid", type=int, default=constants.NETUID, help="subnet id (default %(default)s)")

    chain = subparsers.add_parser("chain", help="administer the local (SQLite) chain")
    sub = chain.add_subparsers(dest="chain_command", metavar="COMMAND", required=True)

    p = sub.add_parser("register", parents=[common], help="register a hotkey (idempotent)")
    p.add_argument("hotkey", help="the hotkey to register (any text on a local chain)")
    p.add_argument("--coldkey", default="", help="its owner's coldkey (default: none)")
    p.add_argument("--stake", type=non_negative_float, default=0.0, help="its stake, in the subnet's units")
    p.add_argument("--validator", action="store_true", help="give the hotkey a validator permit")

    p = sub.add_parser("commit", parents=[common], help="commit a model (namespace:name:commit:hash:competition)")
    p.add_argument("hotkey", help="a registered hotkey")
    p.add_argument("text", help="the commitment: namespace:name:commit:hash:competition")

    p = sub.add_parser("advance", parents=[common], help="move the chain N blocks ahead")
    p.add_argument("blocks", nargs="?", type=int_at_least(0), default=1, help="blocks to advance (default: 1)")

    sub.add_parser("show", parents=[common], help="the metagraph and commitments")

    p = sub.add_parser("weights", parents=[common], help="the weights a validator last set")
    p.add_argument("validator_hotkey", help="the validator whose weights to show")
    chain.set_defaults(func=run_chain_command)
    return chain


def _show(chain: LocalChain, console: Console) -> None:
    metagraph, commitments = chain.sync()
    table = Table(title=f"local chain {chain.path} - netuid {chain.netuid} - block {metagraph.block}")
    for column, justify in (("uid", "right"), ("hotkey", "left"), ("stake", "right"), ("incentive", "right"),
                            ("validator", "center"), ("commitment", "left"), ("commit block", "right")):
        table.add_column(column, justify=justify, overflow="fold")
    for i, uid in enumerate(metagraph.uids):
        hotkey = metagraph.hotkeys[i]
        commitment = commitments.get(hotkey)
        table.add_row(
            str(uid), hotkey, f"{metagraph.stake[i]:g}", f"{metagraph.incentive[i]:.4f}",
            "yes" if metagraph.validator_permit[i] else "",
            commitment.text if commitment else "", str(commitment.block) if commitment else "",
        )
    console.print(table)
    console.print(f"current block: {metagraph.block}")


def _weights(chain: LocalChain, validator_hotkey: str, console: Console) -> int:
    record = chain.weights_record(validator_hotkey)
    if record is None:
        console.print(f"{validator_hotkey} has not set weights on netuid {chain.netuid}")
        return 1
    metagraph, _ = chain.sync()
    table = Table(title=f"weights of {validator_hotkey}")
    table.add_column("uid", justify="right")
    table.add_column("hotkey")
    table.add_column("weight", justify="right")
    for uid, weight in sorted(record.weights.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(str(uid), metagraph.hotkey_of(uid) or "?", f"{weight:.6f}")
    console.print(table)
    console.print(f"set at block {record.block} with version_key {record.version_key}", highlight=False)
    return 0


def run_chain_command(args: argparse.Namespace, console: Optional[Console] = None) -> int:
    """Run a parsed `chain` subcommand; 0 on success, 1 on a chain error, 2 on bad input.

    Output goes to `console` (errors too, when one is given; else to stderr)."""
    err = console or Console(stderr=True)
    console = console or make_console()
    try:
        if args.chain_command == "commit":
            try:
                ModelId.from_commitment(args.text)
            except InvalidCommitment as exc:
                err.print(f"[red]refused commitment:[/red] {exc}", markup=True, highlight=False)
                return 2
        if args.chain_command in ("show", "weights") and not Path(args.chain_db).exists():
            # reading must not create an empty chain behind the user's back
            err.print(f"no local chain at {args.chain_db} (create one with `chain register`)", highlight=False)
            return 1
        chain = LocalChain(args.chain_db, netuid=args.netuid)
        if args.chain_command == "register":
            uid = chain.register(args.hotkey, coldkey=args.coldkey, stake=args.stake, validator=args.validator)
            console.print(f"{args.hotkey} registered as uid {uid} on netuid {chain.netuid}", highlight=False)
        elif args.chain_command == "commit":
            block = chain.commit(args.hotkey, args.text)
            console.print(f"{args.hotkey} committed at block {block}: {args.text}", highlight=False)
        elif args.chain_command == "advance":
            block = chain.advance(args.blocks)
            console.print(f"advanced {args.blocks} blocks; current block {block}", highlight=False)
        elif args.chain_command == "show":
            _show(chain, console)
        elif args.chain_command == "weights":
            return _weights(chain, args.validator_hotkey, console)
        else:
            err.print(f"unknown chain command {args.chain_command!r}")
            return 2
    except ChainError as exc:
        err.print(f"[red]chain error:[/red] {exc}", markup=True, highlight=False)
        return 1
    return 0
