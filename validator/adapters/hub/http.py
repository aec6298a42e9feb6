"""Talking HTTP to the hub: which endpoint, what a failure means, when to retry, how long to wait.

The client is huggingface_hub, so `HF_ENDPOINT` (or `endpoint=`) can point at huggingface.co,
a mirror, or olah on loopback (localhub.py). Every exception of a hub call becomes a typed
FetchError here (`_classify`), and every request is bounded in time (`install_timeouts`).
"""
from __future__ import annotations

import errno
import os
import time
from typing import Any, Callable, TypeVar

import constants
from validator.core.failures import FailureReason, FetchError

DEFAULT_ENDPOINT = "https://huggingface.co"
T = TypeVar("T")


def resolve_endpoint(endpoint: str | None = None) -> str:
    """`endpoint`, else $HF_ENDPOINT read now (huggingface_hub reads it once, at import), else
    huggingface.co."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _classify(exc: BaseException, what: str) -> FetchError:
    """Map an exception from huggingface_hub / httpx / the OS to a typed FetchError."""
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if isinstance(exc, FetchError):
        return exc
    if isinstance(exc, HFValidationError):  # raised before any request: the id or a file name, not the hub
        return FetchError(FailureReason.bad_repo, f"{what}: refused by the hub client: {str(exc)[:200]}")
    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError)):
        return FetchError(FailureReason.not_found, f"{what}: {type(exc).__name__}")
    if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
        return FetchError(FailureReason.not_found, f"{what}: not on the hub (404)")
    if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
        status = exc.response.status_code
        if status in (401, 403, 404, 410):
            return FetchError(FailureReason.not_found, f"{what}: HTTP {status}")
        return FetchError(FailureReason.network, f"{what}: HTTP {status}")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FetchError(FailureReason.disk_full, f"{what}: {exc.strerror}")
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # a file name of the repo
        return FetchError(FailureReason.bad_repo, f"{what}: a file name is too long for the filesystem")
    # LocalEntryNotFoundError (the hub could not be reached), httpx transport errors,
    # timeouts, other OSErrors: the network or the server, worth a later retry.
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return FetchError(FailureReason.network, f"{what}: {type(exc).__name__}: {text}")


def _with_retries(fn: Callable[[], T], what: str) -> T:
    """Run a metadata call; a connection-level failure is tried again a couple of times
    (olah closes the connection after a 5xx, which breaks the next pooled request).

    A server that answered with a status is not retried here: huggingface_hub has already
    retried 5xx answers with its own backoff (about 23 s), and a second round of that per
    model made a failing hub cost over a minute per model."""
    from huggingface_hub.errors import HfHubHTTPError

    last: BaseException | None = None
    for attempt in range(constants.HUB_METADATA_RETRIES + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            err = _classify(exc, what)
            answered = isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None
            if err.reason is not FailureReason.network or answered:
                raise err from None
            last = err
            time.sleep(0.2 * (attempt + 1))
    assert last is not None
    raise last


# huggingface_hub sends its API calls (list_repo_tree, model_info) with no timeout at all,
# so a hub that accepts the connection and never answers would block the validator
# forever. Every request phase left unbounded gets constants.HUB_TIMEOUT_S (read per
# request); calls that carry their own timeout (file downloads) keep it.
_timeouts_installed = False


def _bound_timeouts(request: Any) -> None:
    timeout = dict(request.extensions.get("timeout") or {})
    for phase in ("connect", "read", "write", "pool"):
        if timeout.get(phase) is None:
            timeout[phase] = float(constants.HUB_TIMEOUT_S)
    request.extensions = {**request.extensions, "timeout": timeout}


def install_timeouts() -> None:
    """Bound every huggingface_hub request by HUB_TIMEOUT_S (see above). The composition root
    (validator.app) installs it before any work; the hub entry points (ensure_model,
    download_snapshot, remote_files, fetch_tokenizer) call it too, for scripts that use them
    alone. Idempotent.

    Process-wide on purpose: huggingface_hub takes no client per call (HfApi and
    hf_hub_download build theirs from one global factory, set_client_factory), so the bound
    can only be installed there. It changes nothing for a caller that set no timeout of its
    own but wants one."""
    global _timeouts_installed
    if _timeouts_installed:
        return
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    def factory():
        client = default_client_factory()
        hooks = client.event_hooks
        client.event_hooks = {"request": [*hooks.get("request", []), _bound_timeouts],
                              "response": list(hooks.get("response", []))}
        return client

    set_client_factory(factory)
    _timeouts_installed = True
