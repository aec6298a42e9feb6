"""pytest fixtures: a local model hub (olah on 127.0.0.1) serving git mirrors made in the test.

Registered for every test by tests/conftest.py (`pytest_plugins`): name the fixtures.

    from tests.olah_fixture import publish

    def test_x(olah_mirror, olah_hub):
        commit = publish(olah_mirror, "alice", "tiny", model_dir)   # git commit on main
        path = ensure_model(..., endpoint=olah_hub.endpoint)

Fixtures:
- `olah_mirror` (module): an empty mirror dir; repos go to <mirror>/models/<org>/<name>
  (publish() / validator.adapters.hub.publish_local write them; datasets/<org>/<name> likewise).
- `olah_hub` (module): a running `LocalHub` over `olah_mirror`; `.endpoint` is
  "http://127.0.0.1:<port>". One server per test module keeps the suite fast; repos
  published after it started are served too.
- `hf_endpoint` (function): sets HF_ENDPOINT to the hub for the test and yields the
  endpoint. huggingface_hub reads HF_ENDPOINT once at import, so code should still pass
  `endpoint=` explicitly (our functions read the variable at call time).

olah quirks (see validator/adapters/hub/localhub.py): always pass a revision; model_info sizes are None
(use list_repo_tree or HEAD); no HTTP Range on mirrored files.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from validator.adapters.hub import publish_local
from validator.adapters.hub.localhub import LocalHub


def publish(mirror_dir: str | Path, namespace: str, name: str, model_dir: str | Path) -> str:
    """Commit `model_dir`'s files as the new tree of <mirror>/models/<ns>/<name>; the sha."""
    return publish_local(model_dir, mirror_dir, namespace, name)


@pytest.fixture(scope="module")
def olah_mirror(tmp_path_factory) -> Path:
    mirror = tmp_path_factory.mktemp("olah_mirror")
    (mirror / "models").mkdir()
    (mirror / "datasets").mkdir()
    return mirror


@pytest.fixture(scope="module")
def olah_hub(olah_mirror):
    with LocalHub(olah_mirror) as hub:
        yield hub


@pytest.fixture
def hf_endpoint(olah_hub, monkeypatch) -> str:
    monkeypatch.setenv("HF_ENDPOINT", olah_hub.endpoint)
    return olah_hub.endpoint


@pytest.fixture
def fast_retries(monkeypatch):
    """huggingface_hub backs off for seconds (~25 s on a dead server) on a reset connection;
    the same code path, without the sleeps."""
    import time

    import huggingface_hub.file_download as fd
    import huggingface_hub.utils._http as http

    class NoSleep:
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def sleep(_s):
            return None

    monkeypatch.setattr(fd, "time", NoSleep())
    monkeypatch.setattr(http, "time", NoSleep())
