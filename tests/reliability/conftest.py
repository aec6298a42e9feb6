"""Reliability campaign: shared fixtures and the summary line printed at the end of the session."""
from __future__ import annotations

import pytest

from tests.reliability import tally


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not tally.ran():
        return  # no reliability test ran in this session
    terminalreporter.write_line(tally.summary())
    if config.getoption("verbose") > 0:
        for line in tally.details():
            terminalreporter.write_line(line)


@pytest.fixture
def outside_guard(tmp_path_factory):
    """A sentinel dir outside every state/model dir; the test checks it is untouched."""
    from tests.reliability.world import tree_snapshot

    d = tmp_path_factory.mktemp("sentinel")
    (d / "secret.txt").write_text("SENTINEL-DO-NOT-READ")
    before = tree_snapshot(d)
    yield d
    assert tree_snapshot(d) == before, "a file outside the state and model dirs was written"


@pytest.fixture(scope="session")
def real_field(tmp_path_factory):
    from tests.reliability.world import build_real_field

    return build_real_field(tmp_path_factory.mktemp("realfield"))


@pytest.fixture(scope="session")
def real_hub(real_field):
    from validator.adapters.hub.localhub import LocalHub

    with LocalHub(real_field["mirror"]) as hub:
        yield hub


@pytest.fixture
def fast_hub_retries(monkeypatch):
    """huggingface_hub backs off 1+2+4+8+8 s between retries and the API calls time out after
    constants.HUB_TIMEOUT_S: compress both so a dead hub fails in seconds, same code path."""
    import types
    import time as real_time

    import constants
    import huggingface_hub.utils._http as hf_http

    fake_time = types.SimpleNamespace(**{k: getattr(real_time, k) for k in dir(real_time) if not k.startswith("__")})
    fake_time.sleep = lambda s: real_time.sleep(min(s, 0.01))
    monkeypatch.setattr(hf_http, "time", fake_time)
    import huggingface_hub.file_download as hf_download

    monkeypatch.setattr(hf_download, "time", fake_time)  # 1 s before each resume of a cut download
    import validator.adapters.hub.http as hub_http

    monkeypatch.setattr(hub_http, "time", fake_time)  # hub_http._with_retries' own pauses
    monkeypatch.setattr(constants, "HUB_TIMEOUT_S", 0.2)
