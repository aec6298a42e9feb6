"""`coldint-validator consensus`: how far our on-chain weights are from the other validators'.

Reads the chain once and scores nothing: our weights are the ones the chain holds for our
hotkey (its last set_weights), compared with every other active validator's, and the
estimated validator trust the chain will give them (validator/core/consensus.py has the rules).

    coldint-validator consensus --network finney --wallet.name W --wallet.hotkey H
    coldint-validator consensus --network finney --hotkey 5F...   (no wallet needed)
    coldint-validator consensus --chain-db .coldint/chain.sqlite --hotkey val   (a LocalChain)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

from rich.console import Console

import constants
from validator.core.chain import ChainError
from validator.cli.argtypes import int_at_least


def register_consensus_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add `consensus` to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser("consensus", help="our agreement with the other validators (estimated vtrust)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", default="local",
                   help="local (a LocalChain file) | finney | test | ws://host:port (default %(default)s)")
    p.add_argument("--netuid", type=int, default=constants.NETUID, help="subnet id (default %(default)s)")
    p.add_argument("--chain-db", type=Path, default=None, metavar="PATH",
                   help=f"LocalChain file (default: <state-dir>/{constants.LOCAL_CHAIN_DB})")
    p.add_argument("--state-dir", type=Path, default=Path(constants.STATE_DIR_DEFAULT))
    p.add_argument("--hotkey", help="our validator hotkey (ss58 on a network); default: the wallet's hotkey")
    p.add_argument("--wallet.name", dest="wallet_name", default="default")
    p.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default")
    p.add_argument("--wallet.path", dest="wallet_path", default="~/.bittensor/wallets")
    p.add_argument("--top", type=int_at_least(0), default=constants.CONSENSUS_TOP_DIFFERENCES,
                   help="uids listed where we differ most (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.add_argument("--log-level", default="WARNING")
    p.set_defaults(func=run_consensus_command)
    return p


def _open_chain(args: argparse.Namespace, err: Console):
    """(chain, our hotkey) from the flags, or None after printing why not."""
    if args.network == "local":
        from validator.adapters.chain.local import LocalChain

        path = args.chain_db or args.state_dir / constants.LOCAL_CHAIN_DB
        if not Path(path).exists():  # reading must not create an empty chain
            err.print(f"no local chain at {path} (pass --chain-db, or --network finney)", highlight=False)
            return None
        if not args.hotkey:
            err.print("a local chain needs --hotkey: the validator hotkey whose weights are compared", highlight=False)
            return None
        return LocalChain(path, netuid=args.netuid), args.hotkey
    from validator.adapters.chain.subtensor import SubtensorChain

    wallet = None
    if not args.hotkey:
        import bittensor as bt

        wallet = bt.Wallet(name=args.wallet_name, hotkey=args.wallet_hotkey, path=args.wallet_path)
    chain = SubtensorChain(args.network, netuid=args.netuid, wallet=wallet)
    hotkey = args.hotkey or chain.hotkey
    if not hotkey:
        err.print(f"cannot read the hotkey of wallet {args.wallet_name}/{args.wallet_hotkey} under "
                  f"{args.wallet_path}; pass --hotkey SS58", highlight=False)
        return None
    return chain, hotkey


def run_consensus_command(args: argparse.Namespace, console: Optional[Console] = None) -> int:
    """Print the consensus report of our hotkey's on-chain weights; 0 on success, 1 when the
    chain cannot be read or holds no weights of ours.

    Output goes to `console` (errors too, when one is given; else to stderr)."""
    from validator.core.consensus import consensus_report
    from validator.adapters.leaderboard import consensus_table, consensus_validators_table, make_console

    err = console or Console(stderr=True)
    console = console or make_console()
    opened = _open_chain(args, err)
    if opened is None:
        return 1
    chain, hotkey = opened
    try:
        meta, _ = chain.sync()
    except ChainError as exc:
        err.print(f"[red]chain error:[/red] {exc}", markup=True, highlight=False)
        return 1
    uid = meta.uid_of(hotkey)
    if uid is None:
        err.print(f"hotkey {hotkey} is not registered on netuid {args.netuid}", highlight=False)
        return 1
    ours = meta.weights.get(uid) or {}
    if not ours:
        err.print(f"hotkey {hotkey} (uid {uid}) holds no weights on netuid {args.netuid}: nothing to compare "
                  "(run the validator, which sets them)", highlight=False)
        return 1
    report = consensus_report(meta, ours, hotkey=hotkey, top_n=args.top)
    if args.json:
        console.print_json(json.dumps(report, allow_nan=False))
    else:
        console.print(consensus_table(report))
        console.print(consensus_validators_table(report))
        console.print(f"our weights: uid {uid}, set {report['our_age_blocks']} blocks before block {meta.block} "
                      f"on netuid {args.netuid}", highlight=False)
    return 0
