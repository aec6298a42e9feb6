"""validator/adapters/competitions_source.py: reading competitions.json from files and URLs,
and the refreshed config with its last good copy."""
import functools
import http.server
import json
import threading

import pytest

import constants
from tests.test_competitions import LIVE, live
from validator.adapters.competitions_source import CompetitionsConfig, load_competitions, load_config, per_validator_url
from validator.core.competitions import CompetitionsError, ValidatorDefaults, parse_competitions


def test_per_validator_url():
    assert per_validator_url(constants.COMPETITIONS_URL, 7) == \
        "https://github.com/coldint/sn29/raw/main/competitions-7.json"
    assert per_validator_url("http://127.0.0.1:8/a.json/competitions.json?x=1", 0) == \
        "http://127.0.0.1:8/a.json/competitions-0.json?x=1"
    with pytest.raises(ValueError, match="uid"):
        per_validator_url(constants.COMPETITIONS_URL, -1)


def test_load_file(tmp_path):
    path = tmp_path / "competitions.json"
    path.write_text(json.dumps(LIVE))
    comps = load_competitions(str(path))
    assert comps == parse_competitions(live())
    assert load_competitions(path.as_uri()) == comps  # file:// works too


def test_load_bad_json_file_names_file_and_line(tmp_path):
    path = tmp_path / "competitions.json"
    path.write_text('{"c00": {"reward": 1,}\n}')
    with pytest.raises(CompetitionsError) as info:
        load_competitions(str(path))
    assert str(path) in str(info.value) and "invalid JSON at line 1" in str(info.value)


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(CompetitionsError, match=r"nope\.json: not found"):
        load_competitions(str(path))


def test_load_malformed_file_names_file_competition_and_key(tmp_path):
    data = live()
    data["c01"]["model_size"] = "big"
    path = tmp_path / "competitions.json"
    path.write_text(json.dumps(data))
    parsed = load_config(str(path))  # one bad competition: the rest loads
    assert set(parsed.competitions) == {"c00"} and "competition c01: key 'model_size'" in parsed.disabled["c01"]
    assert set(load_competitions(str(path))) == {"c00"}
    data["c00"]["model_size"] = "big"  # none left: the file is refused, naming file, competition and key
    path.write_text(json.dumps(data))
    with pytest.raises(CompetitionsError) as info:
        load_competitions(str(path))
    message = str(info.value)
    assert str(path) in message and "competition c01: key 'model_size'" in message


@pytest.fixture
def http_dir(tmp_path):
    """A plain HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_load_from_loopback_url(http_dir):
    root, base = http_dir
    (root / "competitions.json").write_text(json.dumps(LIVE))
    assert load_competitions(f"{base}/competitions.json", timeout=10) == parse_competitions(live())
    port = base.rsplit(":", 1)[1]
    assert set(load_competitions(f"http://localhost:{port}/competitions.json", timeout=10)) == {"c00", "c01"}


def test_url_http_error_named(http_dir):
    _, base = http_dir
    with pytest.raises(CompetitionsError, match=r"HTTP 404"):
        load_competitions(f"{base}/missing.json", timeout=10)


@pytest.mark.parametrize(
    "location, reason",
    [
        ("http://example.com/competitions.json", "plain http is only allowed on loopback"),
        ("http://10.0.0.1/competitions.json", "plain http is only allowed on loopback"),
        ("ftp://127.0.0.1/competitions.json", "unsupported scheme 'ftp'"),
    ],
)
def test_refused_locations(location, reason):
    with pytest.raises(CompetitionsError, match=reason):
        load_competitions(location, timeout=1)


def test_config_keeps_last_good_on_failed_reload(tmp_path):
    path = tmp_path / "competitions.json"
    path.write_text(json.dumps(LIVE))
    config = CompetitionsConfig(str(path))
    assert config.parsed is not None and config.last_error is None
    first = config.competitions
    assert set(first) == {"c00", "c01"}

    path.write_text("{broken")
    assert config.reload() is False
    assert config.competitions == first
    assert "invalid JSON" in config.last_error

    bad = live()
    bad["c00"]["reward"] = bad["c01"]["reward"] = -1  # nothing left in force: the file is refused
    path.write_text(json.dumps(bad))
    assert config.reload() is False
    assert "competition c00: key 'reward'" in config.last_error
    assert config.competitions == first

    half = live()
    half["c00"]["reward"] = -1  # one bad competition: the other is the new config
    path.write_text(json.dumps(half))
    assert config.reload() is True and set(config.competitions) == {"c01"}
    assert any("competition c00: key 'reward'" in p for p in config.problems())

    path.unlink()
    assert config.reload() is False and "not found" in config.last_error

    changed = live()
    changed["c01"]["reward"] = 0.25
    path.write_text(json.dumps(changed))
    assert config.reload() is True
    assert config.last_error is None
    assert config.competitions["c01"].reward == 0.25


def test_config_never_loaded_says_why(tmp_path):
    config = CompetitionsConfig(str(tmp_path / "absent.json"))
    assert config.parsed is None and config.settings == ValidatorDefaults() and not config.paused
    assert config.competitions is None and "not found" in config.last_error
    assert any("not found" in p and "nothing loaded" in p for p in config.problems())


def test_config_reload_from_url(http_dir):
    root, base = http_dir
    (root / "competitions.json").write_text(json.dumps(LIVE))
    config = CompetitionsConfig(f"{base}/competitions.json", timeout=10)
    assert set(config.competitions) == {"c00", "c01"}
    (root / "competitions.json").unlink()
    assert config.reload() is False and "HTTP 404" in config.last_error
    assert set(config.competitions) == {"c00", "c01"}


def test_maybe_reload_respects_refresh_interval(tmp_path):
    path = tmp_path / "competitions.json"
    path.write_text(json.dumps(LIVE))
    config = CompetitionsConfig(str(path), refresh_s=100)
    t0 = config.attempted_at
    changed = live()
    changed["c00"]["reward"] = 2.0
    path.write_text(json.dumps(changed))
    assert config.maybe_reload(now=t0 + 50) is False
    assert config.competitions["c00"].reward == 0.5
    assert config.maybe_reload(now=t0 + 100) is True
    assert config.competitions["c00"].reward == 2.0
