"""competitions.json / hall_of_fame.json sources against a real HTTP server on 127.0.0.1."""
import http.server
import json
import threading
import time

import pytest

import constants
from validator.adapters import config_source
from validator.adapters.competitions_source import SHIPPED_COMPETITIONS, CompetitionsConfig
from validator.adapters.config_source import read_location
from validator.core.jsonread import SourceError, decode_json
from validator.adapters.halloffame import HallOfFameSource

LIVE = json.loads(SHIPPED_COMPETITIONS.read_text())
HOF = {"5FFM6Nvvm78GqyMratgXXvjbqZPi7SHgSQ81nyS96jBuUWgt": [
    {"block": 3382073, "reward": 0.2, "desc": "claiming UID 0", "url": "https://x.taostats.io/extrinsic/3382073-0049"}]}


def variant(**rewards):
    data = json.loads(json.dumps(LIVE))
    for cid, reward in rewards.items():
        data[cid]["reward"] = reward
    return data


class Server:
    """Serves `files` (path -> bytes, or a callable(handler) that answers itself); 404 otherwise."""

    def __init__(self):
        self.files: dict = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if callable(body):
                    return body(self)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                return None

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.alive = True

    def put(self, name: str, data) -> None:
        self.files[f"/{name}"] = data if isinstance(data, bytes) or callable(data) else json.dumps(data).encode()

    def stop(self) -> None:
        if self.alive:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()
            self.alive = False


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def comps(server, tmp_path, **kw):
    kw.setdefault("url", f"{server.base}/competitions.json")
    kw.setdefault("fallback", None)
    return CompetitionsConfig(timeout=5, state_dir=tmp_path / "state", **kw)


def test_defaults_are_the_live_urls_and_interval():
    assert constants.COMPETITIONS_URL == "https://github.com/coldint/sn29/raw/main/competitions.json"
    assert constants.HALL_OF_FAME_URL == "https://github.com/coldint/sn29/raw/main/hall_of_fame.json"
    assert constants.COMPETITIONS_REFRESH_S == constants.HALL_OF_FAME_REFRESH_S == 15 * 60


def test_per_validator_file_is_preferred_when_present(server, tmp_path):
    server.put("competitions.json", LIVE)
    server.put("competitions-7.json", variant(c00=0.9, c01=0.1))
    cfg = comps(server, tmp_path, uid=7)
    assert cfg.competitions["c00"].reward == 0.9 and cfg.location.endswith("/competitions-7.json")
    assert server.requests == ["/competitions-7.json"] and cfg.problems() == []


def test_shared_file_when_the_per_validator_one_is_404(server, tmp_path):
    server.put("competitions.json", LIVE)
    cfg = comps(server, tmp_path, uid=7)
    assert cfg.competitions["c00"].reward == 0.5 and cfg.location.endswith("/competitions.json")
    assert server.requests == ["/competitions-7.json", "/competitions.json"]
    assert cfg.last_error is None and cfg.problems() == []  # live: a missing per-uid file is not a problem


def test_broken_per_validator_file_falls_back_and_says_so(server, tmp_path):
    server.put("competitions.json", LIVE)
    server.put("competitions-7.json", b"{garbage")
    cfg = comps(server, tmp_path, uid=7)
    assert cfg.competitions["c00"].reward == 0.5
    assert any("competitions-7.json" in p and "invalid JSON" in p for p in cfg.problems())


def test_explicit_location_overrides_both(server, tmp_path):
    server.put("competitions.json", LIVE)
    server.put("competitions-7.json", variant(c00=0.9))
    server.put("mine.json", variant(c00=0.3))
    cfg = comps(server, tmp_path, uid=7, location=f"{server.base}/mine.json")
    assert cfg.competitions["c00"].reward == 0.3 and server.requests == ["/mine.json"]


def test_refresh_interval_on_an_injected_monotonic_clock(server, tmp_path):
    server.put("competitions.json", LIVE)
    clock = Clock()
    cfg = comps(server, tmp_path, clock=clock)
    assert len(server.requests) == 1
    server.put("competitions.json", variant(c00=0.7))
    clock.t += constants.COMPETITIONS_REFRESH_S - 1
    assert cfg.maybe_reload() is False and len(server.requests) == 1
    assert cfg.competitions["c00"].reward == 0.5
    clock.t += 1
    assert cfg.maybe_reload() is True and len(server.requests) == 2
    assert cfg.competitions["c00"].reward == 0.7
    # the wall clock is not consulted: only the injected clock moves the schedule
    assert cfg.maybe_reload() is False and len(server.requests) == 2


def test_last_good_copy_kept_when_the_server_serves_garbage_then_dies(server, tmp_path):
    server.put("competitions.json", LIVE)
    clock = Clock()
    cfg = comps(server, tmp_path, clock=clock)
    first = cfg.competitions
    for garbage in (b"{not json", b"[1, 2]", json.dumps({"c00": {"reward": 1}}).encode(), b"\xff\xfe"):
        server.put("competitions.json", garbage)
        assert cfg.reload() is False and cfg.competitions == first and cfg.last_error
    server.stop()
    assert cfg.reload() is False and cfg.competitions == first
    assert "could not fetch" in cfg.last_error
    assert any("stays in force" in p for p in cfg.problems())


def test_last_good_copy_survives_a_restart_on_disk(server, tmp_path):
    server.put("competitions.json", variant(c00=0.8, c01=0.2))
    comps(server, tmp_path)
    cached = tmp_path / "state" / constants.CONFIG_CACHE_DIR / "competitions.json"
    assert json.loads(cached.read_bytes()) == variant(c00=0.8, c01=0.2)
    server.stop()
    again = comps(server, tmp_path)  # a restart while the server is down
    assert again.competitions["c00"].reward == 0.8 and again.last_error
    assert any("cached copy" in p for p in again.problems())
    offline = comps(server, tmp_path, offline=True)  # --offline: never fetched, the cache serves
    assert offline.competitions["c00"].reward == 0.8 and offline.last_error is None


def test_offline_reads_nothing_from_the_network(server, tmp_path):
    server.put("competitions.json", LIVE)
    cfg = comps(server, tmp_path, offline=True)
    assert server.requests == [] and cfg.competitions is None and "offline" in cfg.last_error


def test_offline_without_any_copy_runs_on_the_shipped_file(server, tmp_path):
    cfg = comps(server, tmp_path, offline=True, fallback=SHIPPED_COMPETITIONS)
    assert server.requests == [] and set(cfg.competitions) == {"c00", "c01"}
    assert any("shipped" in p for p in cfg.problems())
    # the default source (no explicit location) falls back to the shipped copy by itself
    assert CompetitionsConfig(url=f"{server.base}/competitions.json", offline=True).parsed is not None
    assert CompetitionsConfig(location=f"{server.base}/competitions.json", offline=True).parsed is None


def test_a_cache_from_another_location_is_not_used(server, tmp_path):
    server.put("competitions.json", LIVE)
    server.put("other.json", variant(c00=0.6))
    comps(server, tmp_path, location=f"{server.base}/other.json")
    server.stop()
    cfg = comps(server, tmp_path)
    assert cfg.competitions is None and any("ignored" in p for p in cfg.problems())


def test_deep_nesting_refused_cleanly(server, tmp_path):
    server.put("competitions.json", LIVE)
    cfg = comps(server, tmp_path)
    server.put("competitions.json", b"[" * 100_000 + b"]" * 100_000)
    assert cfg.reload() is False
    assert "nested deeper than" in cfg.last_error and cfg.competitions["c00"].reward == 0.5
    with pytest.raises(SourceError, match="nested deeper than 32 levels"):
        decode_json(b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "doc")
    with pytest.raises(SourceError, match="nested deeper"):
        decode_json(b"[" * 100_000, "doc")  # unbalanced too: still our error, not RecursionError
    # brackets inside strings are text, not nesting
    assert decode_json(json.dumps({"k": "[" * 5000}).encode(), "doc") == {"k": "[" * 5000}


def test_too_many_values_refused():
    with pytest.raises(SourceError, match="more than 100000 JSON values"):
        decode_json(json.dumps([0] * 200_000).encode(), "doc")
    assert len(decode_json(json.dumps([0] * 1000).encode(), "doc")) == 1000


def test_oversize_refused_before_reading_the_body(server, tmp_path):
    def huge(handler):  # announces 2 MB, sends 10 bytes, then holds the connection open
        handler.send_response(200)
        handler.send_header("Content-Length", str(2_000_000))
        handler.end_headers()
        handler.wfile.write(b"{" * 10)
        handler.wfile.flush()
        time.sleep(3)

    server.put("competitions.json", huge)
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="2000000 bytes announced"):
        read_location(f"{server.base}/competitions.json", "competitions", max_bytes=1_000_000, timeout=10)
    assert time.monotonic() - t0 < 2.5  # it did not wait for a body it would refuse


def test_oversize_body_without_length_refused(server):
    def unannounced(handler):
        handler.send_response(200)
        handler.end_headers()  # no Content-Length: read until close, bounded
        handler.wfile.write(b" " * 1_000_001)

    server.put("x.json", unannounced)
    with pytest.raises(SourceError, match="more than 1000000 bytes"):
        read_location(f"{server.base}/x.json", "competitions", max_bytes=1_000_000, timeout=10)


def test_oversize_file_refused_before_opening(tmp_path, monkeypatch):
    big = tmp_path / "competitions.json"
    with open(big, "wb") as f:
        f.truncate(2_000_000)  # sparse

    def no_open(*a, **k):
        raise AssertionError("opened a file it should refuse by its size")

    monkeypatch.setattr(config_source, "open", no_open, raising=False)
    with pytest.raises(SourceError, match="2000000 bytes, more than the 1000000 allowed"):
        read_location(big, "competitions", max_bytes=1_000_000, timeout=1)


def test_redirect_to_plain_http_elsewhere_refused(server):
    def redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", "http://example.com/competitions.json")
        handler.end_headers()

    server.put("competitions.json", redirect)
    with pytest.raises(SourceError, match="redirected to http://example.com.*only allowed on loopback"):
        read_location(f"{server.base}/competitions.json", "competitions", max_bytes=1000, timeout=5)


def test_redirect_on_loopback_followed(server):
    def redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", f"{server.base}/real.json")
        handler.end_headers()

    server.put("competitions.json", redirect)
    server.put("real.json", b"{}")
    assert read_location(f"{server.base}/competitions.json", "competitions", max_bytes=1000, timeout=5) == b"{}"


# --- hall of fame --------------------------------------------------------------------------------


def test_hall_of_fame_fetched_refreshed_and_kept(server, tmp_path):
    server.put("hall_of_fame.json", HOF)
    clock = Clock()
    hof = HallOfFameSource(url=f"{server.base}/hall_of_fame.json", state_dir=tmp_path / "state", clock=clock,
                           timeout=5)
    entries = hof.hall_of_fame
    assert list(entries) == list(HOF) and entries[next(iter(HOF))][0].block == 3382073
    assert server.requests == ["/hall_of_fame.json"]  # live has no per-validator hall of fame

    server.put("hall_of_fame.json", [HOF])  # the hall-of-fame parser refuses a document that is not an object
    clock.t += constants.HALL_OF_FAME_REFRESH_S - 1
    assert hof.maybe_reload() is False and len(server.requests) == 1  # not yet due
    clock.t += 1
    assert hof.maybe_reload() is False and len(server.requests) == 2
    assert list(hof.hall_of_fame) == list(HOF) and "expected an object" in hof.last_error
    server.put("hall_of_fame.json", b"{oops")
    assert hof.reload() is False and list(hof.hall_of_fame) == list(HOF) and "invalid JSON" in hof.last_error
    server.stop()
    restarted = HallOfFameSource(url=f"{server.base}/hall_of_fame.json", state_dir=tmp_path / "state", timeout=5)
    assert list(restarted.hall_of_fame) == list(HOF) and restarted.last_error


def test_hall_of_fame_never_loaded_is_empty_and_says_why(server, tmp_path):
    hof = HallOfFameSource(location=f"{server.base}/missing.json", timeout=5)
    assert hof.source.value is None and len(hof.hall_of_fame) == 0 and "HTTP 404" in hof.last_error


def test_hall_of_fame_explicit_file(tmp_path):
    path = tmp_path / "hof.json"
    path.write_text(json.dumps(HOF))
    hof = HallOfFameSource(location=path)
    assert hof.source.value is not None and hof.location == str(path)


def test_hall_of_fame_entries_skipped_by_the_parser_are_shown(tmp_path):
    path = tmp_path / "hof.json"
    path.write_text(json.dumps({**HOF, "5Bad": "not a list"}))
    hof = HallOfFameSource(location=path)
    assert hof.source.value is not None and hof.last_error is None and next(iter(HOF)) in hof.hall_of_fame
    assert any("5Bad" in p for p in hof.problems())


def test_a_damaged_cache_is_ignored_and_said(server, tmp_path):
    server.put("competitions.json", LIVE)
    comps(server, tmp_path)
    (tmp_path / "state" / constants.CONFIG_CACHE_DIR / "competitions.json").write_bytes(b"{trunc")
    server.stop()
    cfg = comps(server, tmp_path)
    assert cfg.competitions is None
    assert any("cached copy" in p and "unusable" in p and "invalid JSON" in p for p in cfg.problems())
