"""Publish a model for the coldint subnet: check it, upload it to the hub (huggingface.co or
a local git mirror), hash it as a validator downloads it, commit it on chain, read it back.

`publish_and_commit` is the one way to do it; scripts/upload_model.py (the miner's command)
and the demo call it. See scripts/upload_model.py for the steps and their failures.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import constants
from validator.adapters import hub
from validator.core.failures import FetchError
from validator.core.identity import InvalidCommitment, ModelId, check_repo_part, dir_hash, secure_hash

LOCAL_PREFIX = "local:"


class UploadError(RuntimeError):
    """A step of the publish failed; the message names the step and the reason."""


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
        from validator.adapters.hub.localhub import LocalHub

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
