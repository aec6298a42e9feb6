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

`--model-id ns:name:commit` skips the upload and commits an existing upload (steps 3-5,
with the check of step 1 made on the downloaded snapshot).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

if not __package__:  # run as a file (python scripts/upload_model.py): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from validator.core.failures import FetchError
import constants  # noqa: E402
from validator.adapters import hub  # noqa: E402
from validator.core.identity import InvalidCommitment, ModelId, check_repo_part, dir_hash, secure_hash  # noqa: E402

LOCAL_PREFIX = "local:"


class UploadError(RuntimeError):
    """A step of the publish failed; the message names the step and the reason."""


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


def parse_model_id(text: str) -> tuple[str, str, str]:
    parts = text.split(":")
    if len(parts) != 3:
        raise UploadError(f"--model-id {text!r}: expected namespace:name:commit")
    ns, name, commit = parts
    try:
        check_repo_part(ns, "namespace")
        check_repo_part(name, "name")
    except ValueError as exc:
        raise UploadError(f"--model-id {text!r}: {exc}") from None
    if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
        raise UploadError(f"--model-id {text!r}: commit must be a 40-character lowercase hex sha")
    return ns, name, commit


def parse_repo(repo: str) -> tuple[str, str]:
    ns, sep, name = repo.partition("/")
    if not sep:
        raise UploadError(f"--repo {repo!r}: expected namespace/name")
    try:
        return check_repo_part(ns, "namespace"), check_repo_part(name, "name")
    except ValueError as exc:
        raise UploadError(f"--repo {repo!r}: {exc}") from None


def _hash_as_validator(repo_id: str, commit: str, mirror: Path | None, endpoint: str | None, token,
                       competition: Any, work: Path, log: Callable[[str], None]) -> str:
    """Directory hash of the snapshot at `commit` as a validator downloads it, after checking
    that download against the competition."""
    def fetch(ep: str | None) -> Path:
        return hub.download_snapshot(repo_id, commit, work, competition=competition, endpoint=ep, token=token,
                                     progress=False)

    if mirror is not None and endpoint is None:
        from validator.adapters.localhub import LocalHub

        with LocalHub(mirror) as server:  # the same path a validator's download takes: olah
            log(f"downloading {repo_id}@{commit[:12]} back through a temporary olah at {server.endpoint}")
            snap = fetch(server.endpoint)
    else:
        log(f"downloading {repo_id}@{commit[:12]} back from {hub.resolve_endpoint(endpoint)}")
        snap = fetch(endpoint)
    return dir_hash(snap)  # exactly the files a validator downloads (download_snapshot checked them)


def _read_back(chain: Any, hotkey: str, text: str, tries: int, wait_s: float, log: Callable[[str], None]) -> int:
    """Block of the commitment once chain.sync() shows it; UploadError after `tries` reads."""
    seen = None
    for attempt in range(1, tries + 1):
        try:
            _metagraph, commitments = chain.sync()
        except Exception as exc:  # noqa: BLE001 - a chain hiccup: read again
            seen = f"sync failed: {exc}"
        else:
            found = commitments.get(hotkey)
            if found is not None and found.text == text:
                return found.block
            seen = found.text if found is not None else "no commitment"
        if attempt < tries:
            log(f"commitment not visible yet ({seen}); reading again in {wait_s:.0f} s")
            time.sleep(wait_s)
    raise UploadError(f"read back: after {tries} reads the chain shows {seen!r} for {hotkey}, not {text!r}")


def check_commitment_fits(namespace: str, name: str, competition_id: str) -> None:
    """UploadError unless `namespace:name:<commit>:<hash>:competition` fits the chain (128
    bytes of UTF-8): checked before anything is uploaded."""
    try:
        ModelId(namespace, name, "0" * 40, "A" * 43 + "=", competition_id)
    except InvalidCommitment as exc:
        raise UploadError(f"commitment for {namespace}/{name} in {competition_id}: {exc}") from None


def _sync(chain: Any) -> tuple[Any, dict]:
    try:
        return chain.sync()
    except Exception as exc:  # noqa: BLE001 - reported with the step
        raise UploadError(f"chain: cannot read the metagraph ({type(exc).__name__}: {exc})") from None


def current_commitment(commitments: dict, hotkey: str) -> ModelId | None:
    """The hotkey's commitment in a chain.sync() answer, parsed; None when it has none (or an
    unparsable one)."""
    found = commitments.get(hotkey)
    if found is None:
        return None
    try:
        return ModelId.from_commitment(found.text)
    except InvalidCommitment:
        return None


def check_not_recommitted(commitments: dict, hotkey: str, secure: str, force: bool,
                          log: Callable[[str], None]) -> None:
    """UploadError when `secure` (the secure hash of the content for this hotkey) is the hash
    of the hotkey's current commitment: a new commitment of the same content only moves its
    block forward, which resets the age advantage it holds. `force` commits it anyway."""
    now = current_commitment(commitments, hotkey)
    if now is None or now.hash != secure:
        return
    what = f"{now.namespace}/{now.name}@{now.commit[:12]} ({now.competition})"
    if force:
        log(f"--force: committing content {hotkey} has already committed as {what} again (its age restarts)")
        return
    raise UploadError(f"check: hotkey {hotkey} has already committed this content as {what}; committing it "
                      "again would restart its age and lose the advantage it holds (pass --force to do it anyway)")


def repo_url(hub_spec: str, namespace: str, name: str, endpoint: str | None) -> str:
    """Where the published repo can be seen: the hub's page, or the mirror's git dir."""
    if hub_spec.startswith(LOCAL_PREFIX):
        mirror = Path(hub_spec[len(LOCAL_PREFIX):]).expanduser().resolve()
        path = mirror / "models" / namespace / name
        return f"{endpoint.rstrip('/')}/{namespace}/{name} ({path})" if endpoint else str(path)
    return f"{hub.resolve_endpoint(endpoint).rstrip('/')}/{namespace}/{name}"


def _check_registered(chain: Any, hotkey: str, metagraph: Any) -> None:
    """Fail before uploading when the hotkey could not commit anyway."""
    if metagraph is not None and metagraph.uid_of(hotkey) is None:
        raise UploadError(f"chain: hotkey {hotkey} is not registered on netuid {chain.netuid}")


def publish_and_commit(model_dir: str | os.PathLike | None, competition: Any, *, hub_spec: str, chain: Any,
                       signer: Any, hotkey: str, repo: str | None = None, model_id: str | None = None,
                       endpoint: str | None = None, token: str | None = None,
                       readback_tries: int = constants.UPLOAD_CHAIN_READBACK_TRIES,
                       readback_wait_s: float = constants.UPLOAD_CHAIN_READBACK_WAIT_S,
                       log: Callable[[str], None] = print, force: bool = False,
                       register: Callable[[], None] | None = None) -> ModelId:
    """Check, register, upload, hash as a validator would, commit, read back, make public.

    hub_spec: "local:<mirror dir>" or "hf" (huggingface.co, or `endpoint`). signer: what
    chain.commit takes (a hotkey for LocalChain, a bittensor Wallet for SubtensorChain);
    hotkey: its ss58 address (bound into the secure hash). Content this hotkey has already
    committed is refused unless `force` (before the upload, and again on the hash taken
    from the download). `register` (if given) runs once every check has passed, before
    the upload. Returns the committed ModelId; raises UploadError (or FetchError) naming the
    failed step."""
    mirror = Path(hub_spec[len(LOCAL_PREFIX):]).expanduser() if hub_spec.startswith(LOCAL_PREFIX) else None
    if mirror is None and hub_spec != "hf":
        raise UploadError(f"--hub {hub_spec!r}: expected 'hf' or 'local:<mirror dir>'")
    if mirror is None and token is None and model_id is None:
        raise UploadError("upload: no Hugging Face token (set HF_TOKEN in the environment or .env, "
                          "or run `hf auth login`)")

    if model_id is not None:
        ns, name, commit = parse_model_id(model_id)
        check_commitment_fits(ns, name, competition.id)
        metagraph, _commitments = _sync(chain)
        if register is not None:
            register()
            metagraph, _commitments = _sync(chain)
        _check_registered(chain, hotkey, metagraph)
        log(f"committing the existing upload {ns}/{name}@{commit[:12]} (no upload)")
    else:
        if repo is None:
            raise UploadError("--repo namespace/name is required to upload (or --model-id to commit an upload)")
        if model_dir is None or not Path(model_dir).is_dir():
            raise UploadError(f"model dir {model_dir}: not a directory")
        ns, name = parse_repo(repo)
        check_commitment_fits(ns, name, competition.id)
        try:
            hub.check_model_constraints(model_dir, competition)
        except FetchError as exc:
            raise UploadError(f"check against competition {competition.id}: {exc}") from None
        log(f"{model_dir}: within competition {competition.id}'s limits")
        try:
            local_hash = hub.model_dir_hash(model_dir)
        except FetchError as exc:
            raise UploadError(f"check against competition {competition.id}: {exc}") from None
        metagraph, commitments = _sync(chain)
        check_not_recommitted(commitments, hotkey, secure_hash(local_hash, hotkey), force, log)
        if register is not None:
            register()
            metagraph, _commitments = _sync(chain)
        _check_registered(chain, hotkey, metagraph)
        try:
            if mirror is not None:
                commit = hub.publish_local(model_dir, mirror, ns, name)
            else:
                commit = hub.publish_hf(model_dir, f"{ns}/{name}", token, private=True, endpoint=endpoint)
        except Exception as exc:  # noqa: BLE001 - reported with the step
            raise UploadError(f"upload to {hub_spec} {ns}/{name}: {type(exc).__name__}: {exc}") from None
        log(f"uploaded {ns}/{name} at commit {commit}" + (" (private)" if mirror is None else ""))

    with tempfile.TemporaryDirectory(prefix="upload-hash-") as work:
        try:
            content = _hash_as_validator(f"{ns}/{name}", commit, mirror, endpoint, token, competition,
                                         Path(work), log)
        except FetchError as exc:
            raise UploadError(f"download back at {commit[:12]}: {exc}") from None
    mid = ModelId(ns, name, commit, secure_hash(content, hotkey), competition.id)
    if model_id is not None:  # an existing upload: its hash is known only now (an upload was checked before)
        check_not_recommitted(_sync(chain)[1], hotkey, mid.hash, force, log)
    text = mid.to_commitment()
    log(f"committing {text} for hotkey {hotkey}")
    try:
        chain.commit(signer, text)
    except Exception as exc:  # noqa: BLE001 - reported with the step
        raise UploadError(f"chain commit: {type(exc).__name__}: {exc}") from None
    block = _read_back(chain, hotkey, text, readback_tries, readback_wait_s, log)
    log(f"commitment on chain at block {block}")
    if mirror is None and token is None:
        log(f"no Hugging Face token: make {ns}/{name} public by hand")
    elif mirror is None:
        try:
            hub.set_visibility(f"{ns}/{name}", public=True, token=token, endpoint=endpoint)
        except Exception as exc:  # noqa: BLE001 - reported with the step
            raise UploadError(f"make {ns}/{name} public (it is committed; make it public by hand): {exc}") from None
        log(f"{ns}/{name} is public")
    log(f"repo: {repo_url(hub_spec, ns, name, endpoint)}")
    return mid


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
        register = None
        if args.register:
            def register() -> None:
                metagraph, _ = chain.sync()
                if metagraph.uid_of(args.hotkey) is None:
                    uid = chain.register(args.hotkey)
                    print(f"registered {args.hotkey} as uid {uid} on the local chain {db}")
        return chain, args.hotkey, args.hotkey, register
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
        from validator.core.competitions import CompetitionsError, load_competitions

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
