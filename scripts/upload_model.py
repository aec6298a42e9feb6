"""Publish a model for the coldint subnet: upload it to the hub and commit it on chain.

    python -m scripts.upload_model MODEL_DIR --competition c00 --repo me/my-model \\
        --wallet.name miner --wallet.hotkey default            # huggingface.co + finney
    python -m scripts.upload_model MODEL_DIR --competition c00 --repo me/tiny \\
        --hub local:./mirror --network local --chain-db state/chain.sqlite --hotkey 5F...

Steps (any failure exits non-zero with a message saying which step and why):
1. the model dir is checked against the competition before anything is uploaded: the
   commitment fits the chain's 128 bytes, the dir's size, and the files validators will
   download (safetensors weights, model class from model_type, parameter count), and the
   content is not what this hotkey has committed already (committing it again would reset
   its age, the advantage it holds: refused unless --force); only then is the hotkey
   registered (--register, a local chain);
2. upload: a private repo on huggingface.co (token from HF_TOKEN / HF_ACCESS_TOKEN, a
   .env file, or `hf auth login`), or a git commit in a local mirror
   (`--hub local:<dir>`, the repos olah serves);
3. the snapshot is downloaded back at the new commit through the same hub client and the
   same rule a validator uses (validator/core/live_repo.py: only the files transformers 4.44
   loads, the repo's total size checked), and its directory hash is taken from that
   download, so the commitment verifies on live validators and ours. For a local mirror
   the download goes through olah: the one at `--endpoint`, else a temporary olah started
   on 127.0.0.1 for the purpose;
4. `namespace:name:commit:hash:competition` is committed on chain with the hotkey, and read
   back (chain.sync()) until it shows;
5. the repo is made public (a hub repo; a local mirror has no visibility), and its URL printed.

The steps are validator.publish.publish_and_commit (the demo runs them too); this script
maps its flags onto it and opens the chain.

`--model-id ns:name:commit` skips the upload and commits an existing upload (steps 3-5,
with the check of step 1 made on the downloaded snapshot).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

if not __package__:  # run as a file (python scripts/upload_model.py): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import constants  # noqa: E402
from validator.adapters import hub  # noqa: E402
from validator.core.failures import FetchError  # noqa: E402
from validator.publish import LOCAL_PREFIX, UploadError, publish_and_commit  # noqa: E402


def load_token() -> str | None:
    """HF token: $HF_TOKEN, $HF_ACCESS_TOKEN, the same keys in a .env file (current dir or
    above), else the token cached by `hf auth login`."""
    for key in ("HF_TOKEN", "HF_ACCESS_TOKEN"):
        if os.environ.get(key):
            return os.environ[key]
    try:
        from dotenv import dotenv_values, find_dotenv

        values = dotenv_values(find_dotenv(usecwd=True))
    except ImportError:  # python-dotenv is in install_requires; tolerate a bare env
        values = {}
    for key in ("HF_TOKEN", "HF_ACCESS_TOKEN"):
        if values.get(key):
            return values[key]
    from huggingface_hub import get_token

    return get_token()


def make_chain(args: argparse.Namespace) -> tuple[Any, Any, str, Callable[[], None] | None]:
    """(chain, signer, hotkey ss58, register) from the flags; `register` (for --register on a
    local chain, else None) is called by publish_and_commit once its checks have passed.
    bittensor is imported only when needed."""
    if args.network == "local":
        from validator.adapters.chain.local import LocalChain

        if not args.hotkey:
            raise UploadError("--hotkey is required with --network local")
        db = Path(args.chain_db or constants.CHAIN_DB_DEFAULT)
        if not db.exists() and not args.register:  # never commit into a fresh, empty chain by mistake
            raise UploadError(f"--chain-db {db}: no local chain there (pass --register to create it)")
        chain = LocalChain(db, netuid=args.netuid)
        def register() -> None:
            metagraph, _ = chain.sync()
            if metagraph.uid_of(args.hotkey) is None:
                uid = chain.register(args.hotkey)
                print(f"registered {args.hotkey} as uid {uid} on the local chain {db}")
        return chain, args.hotkey, args.hotkey, register if args.register else None
    import bittensor as bt

    from validator.adapters.chain.subtensor import SubtensorChain

    wallet = bt.Wallet(name=args.wallet_name, hotkey=args.wallet_hotkey, path=args.wallet_path)
    hotkey = wallet.hotkey.ss58_address
    if args.register:
        raise UploadError("--register: only on a local chain (--network local); register on "
                          f"{args.network} with btcli subnet register")
    return SubtensorChain(args.network, netuid=args.netuid, wallet=wallet), wallet, hotkey, None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="upload_model", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", nargs="?", help="the model dir (safetensors, config.json, tokenizer files)")
    p.add_argument("--competition", required=True, help="competition id, e.g. c00")
    p.add_argument("--competitions", default=constants.COMPETITIONS_URL, help="competitions.json path or URL")
    p.add_argument("--hub", default="hf", help="'hf' (huggingface.co, default) or local:<mirror dir>")
    p.add_argument("--endpoint", default=None,
                   help="hub endpoint (default $HF_ENDPOINT or huggingface.co); with --hub local: the olah serving it")
    p.add_argument("--repo", help="namespace/name of the repo to upload to")
    p.add_argument("--model-id", help="namespace:name:commit of an existing upload to commit (no upload)")
    p.add_argument("--hotkey", help="hotkey ss58 (--network local)")
    p.add_argument("--register", action="store_true",
                   help="register --hotkey on the local chain if needed, once the checks have passed")
    p.add_argument("--force", action="store_true",
                   help="commit even content this hotkey has already committed (restarts its age: loses its "
                        "advantage)")
    p.add_argument("--wallet.name", dest="wallet_name", default="default")
    p.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default")
    p.add_argument("--wallet.path", dest="wallet_path", default="~/.bittensor/wallets")
    p.add_argument("--network", default="finney", help="local | finney | test | ws://...")
    p.add_argument("--netuid", type=int, default=constants.NETUID)
    p.add_argument("--chain-db", default=None, help=f"local chain file (default {constants.CHAIN_DB_DEFAULT})")
    p.add_argument("--readback-tries", type=int, default=constants.UPLOAD_CHAIN_READBACK_TRIES)
    p.add_argument("--readback-wait", type=float, default=constants.UPLOAD_CHAIN_READBACK_WAIT_S)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from validator.adapters.competitions_source import load_competitions
        from validator.core.competitions import CompetitionsError

        try:
            comps = load_competitions(args.competitions)
        except CompetitionsError as exc:
            raise UploadError(str(exc)) from None
        if args.competition not in comps:
            raise UploadError(f"--competition {args.competition!r}: not in {args.competitions} "
                              f"(known: {', '.join(sorted(comps))})")
        token = None if args.hub.startswith(LOCAL_PREFIX) else load_token()
        comp = comps[args.competition]
        if args.model_id is None and args.model_dir is not None and Path(args.model_dir).is_dir():
            try:  # before any chain is opened (or a local one created): a refused model touches nothing
                hub.check_model_constraints(args.model_dir, comp)
            except FetchError as exc:
                raise UploadError(f"check against competition {comp.id}: {exc}") from None
        chain, signer, hotkey, register = make_chain(args)
        mid = publish_and_commit(args.model_dir, comp, hub_spec=args.hub, chain=chain,
                                 signer=signer, hotkey=hotkey, repo=args.repo, model_id=args.model_id,
                                 endpoint=args.endpoint, token=token, readback_tries=args.readback_tries,
                                 readback_wait_s=args.readback_wait, force=args.force, register=register)
    except (UploadError, FetchError) as exc:
        print(f"upload_model: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the chain adapters raise their own errors
        print(f"upload_model: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(mid.to_commitment())
    return 0


if __name__ == "__main__":
    sys.exit(main())
