"""hub.ensure_model against hostile config files, on olah (loopback): bounded JSON, the config
build in a worker with time and memory limits, crash loops, keys that pick code paths."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from validator.core.failures import FailureReason, FetchError, retry_after
import constants
from tests.factories import make_model
from tests.olah_fixture import publish
from validator.adapters import hub
from validator.core.competitions import Competition
from validator.adapters.hub import checks as hub_checks
from validator.adapters.hub import ensure_model, snapshot_path
from validator.adapters.hub.store import _process_start
from validator.core.identity import ModelId, files_hash, secure_hash

HOTKEY = "5LimitsHotkeyAAA"
# What a validator downloads from a model saved without a tokenizer (written out, not derived):
# tokenizer_config.json is always asked for, the rest by the weights and generation rules.
DOWNLOADED = ("config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json")
COMP = Competition(id="c00", reward=1.0, model_types=["LlamaForCausalLM"], parameters=10**9,
                   model_size=10**9, dataset="local")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("limits") / "base")


@pytest.fixture(autouse=True)
def fresh_counts(monkeypatch):
    """Every test builds its configs in a worker of its own (no counts remembered across tests)."""
    monkeypatch.setattr(hub_checks, "_COUNTED", {})


@pytest.fixture
def no_weights() -> hub.Downloader:
    """A Downloader for ensure_model(download=...) that fails the test if any file of the
    download set is fetched."""
    def refuse(*_a, **_k):
        raise AssertionError("the download started")

    return refuse


def n_params_in(model_dir: Path) -> int:
    """The parameter count read from the weights themselves (independent of the config path)."""
    from safetensors import safe_open

    total = 0
    with safe_open(model_dir / "model.safetensors", "pt") as st:
        for k in st.keys():
            total += math.prod(st.get_slice(k).get_shape())
    return total


def variant(base: Path, dst: Path, files: dict[str, bytes] | None = None, config_edit=None) -> Path:
    shutil.copytree(base, dst)
    if config_edit is not None:
        cfg = json.loads((dst / "config.json").read_text())
        config_edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    for name, data in (files or {}).items():
        (dst / name).write_bytes(data)
    return dst


def commit(mirror: Path, name: str, model_dir: Path) -> ModelId:
    sha = publish(mirror, "mallory", name, model_dir)
    files = [f for f in DOWNLOADED if (model_dir / f).exists()]
    return ModelId("mallory", name, sha, secure_hash(files_hash(model_dir, files), HOTKEY), "c00")


def refused(mid: ModelId, endpoint: str, model_dir: Path,
            download: hub.Downloader = hub.download_files) -> FetchError:
    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEY, COMP, model_dir, endpoint=endpoint, progress=False, download=download)
    assert not snapshot_path(model_dir, HOTKEY, mid).exists()
    assert not hub.attempt_marker(snapshot_path(model_dir, HOTKEY, mid)).exists()  # the checks ended
    return err.value


def with_value(raw: bytes, key: str, value_json: str) -> bytes:
    """A JSON object's text with one more key whose value is given as JSON text."""
    text = raw.decode().rstrip()
    assert text.endswith("}")
    return f'{text[:-1].rstrip()}, "{key}": {value_json}}}'.encode()


DEEP = "[" * 100_000 + "]" * 100_000  # 100,000 levels
WIDE = "[" + ",".join(["[]"] * 1_000_000) + "]"  # 10^6 + 1 values


# --- bounded JSON ------------------------------------------------------------------------------


def test_oversize_config_refused_before_any_download(base, olah_mirror, olah_hub, tmp_path, monkeypatch,
                                                     no_weights):
    raw = (base / "config.json").read_bytes()
    monkeypatch.setattr(constants, "HUB_SMALL_FILE_MAX_BYTES", len(raw) + 100)
    model = variant(base, tmp_path / "src", {"config.json": raw.rstrip() + b" " * 200})
    err = refused(commit(olah_mirror, "big-config", model), olah_hub.endpoint, tmp_path / "store", download=no_weights)
    assert err.reason is FailureReason.constraint
    assert "/config.json: " in err.detail and f"more than HUB_SMALL_FILE_MAX_BYTES = {len(raw) + 100}" in err.detail


@pytest.mark.parametrize("shape, named", [
    (DEEP, "nested deeper than 32 levels"),
    (WIDE, "more than 500000 JSON values"),
], ids=["deep", "wide"])  # short ids: pytest puts the test's id in the environment of every subprocess
@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json"])
def test_deep_or_wide_small_json_refused_before_any_download(shape, named, name, base, olah_mirror, olah_hub,
                                                             tmp_path, no_weights):
    raw = (base / name).read_bytes() if (base / name).exists() else b'{"model_max_length": 64}'
    model = variant(base, tmp_path / "src", {name: with_value(raw, "padding", shape)})
    err = refused(commit(olah_mirror, f"shape-{name[:6]}-{len(shape)}", model), olah_hub.endpoint,
                  tmp_path / "store", download=no_weights)
    assert err.reason is FailureReason.constraint
    assert f"/{name}: " in err.detail and named in err.detail
    assert "HUB_JSON_MAX_DEPTH = 32" in err.detail and "HUB_JSON_MAX_ELEMENTS = 500000" in err.detail


def test_deep_generation_config_refused_on_disk(base, olah_mirror, olah_hub, tmp_path):
    """generation_config.json is read by the load, not by the rule: bounded once downloaded."""
    raw = (base / "generation_config.json").read_bytes()
    model = variant(base, tmp_path / "src", {"generation_config.json": with_value(raw, "padding", DEEP)})
    err = refused(commit(olah_mirror, "deep-genconfig", model), olah_hub.endpoint, tmp_path / "store")
    assert err.reason is FailureReason.constraint
    assert "/generation_config.json: " in err.detail and "nested deeper than 32 levels" in err.detail


def test_within_bounds_unchanged(base, olah_mirror, olah_hub, tmp_path):
    """A config nesting 20 deep with 400,000 values passes the bounds (and is built)."""
    nested = "[" * 20 + "]" * 20
    model = variant(base, tmp_path / "src")
    raw = with_value((model / "config.json").read_bytes(), "nested", nested)
    (model / "config.json").write_bytes(with_value(raw, "wide", "[" + ",".join(["0"] * 399_000) + "]"))
    mid = commit(olah_mirror, "roomy", model)
    path = ensure_model(mid, HOTKEY, COMP, tmp_path / "store", endpoint=olah_hub.endpoint, progress=False).path
    assert hub.read_marker(path)["parameters"] == n_params_in(base)


# --- the config build in a worker -----------------------------------------------------------------


def test_build_killed_by_the_memory_limit_is_refused(base, olah_mirror, olah_hub, tmp_path, monkeypatch,
                                                     no_weights):
    monkeypatch.setattr(constants, "CONFIG_CHECK_MEMORY_BYTES", 64 * 1024**2)  # below what torch already maps
    mid = commit(olah_mirror, "hungry", variant(base, tmp_path / "src"))
    err = refused(mid, olah_hub.endpoint, tmp_path / "store", download=no_weights)
    assert err.reason is FailureReason.constraint
    assert err.detail.startswith(f"{mid.repo_id}@{mid.commit[:12]}/config.json: config checks crashed: oom")
    assert "CONFIG_CHECK_MEMORY_BYTES" in err.detail
    assert retry_after(err.reason, 1) is None  # permanent for the commitment


def test_build_past_the_time_limit_is_refused(base, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "CONFIG_CHECK_TIMEOUT_S", 0.2)  # the worker's imports alone take longer
    cfg = json.loads((base / "config.json").read_text())
    with pytest.raises(FetchError) as err:
        hub.check_config(cfg, COMP, "mallory/x@abc/config.json")
    assert err.value.reason is FailureReason.constraint
    assert err.value.detail.startswith("mallory/x@abc/config.json: config checks crashed: timeout")


def test_build_runs_in_another_process(base, monkeypatch):
    """The validator's own process never builds the model."""
    from transformers import AutoModelForCausalLM

    def refuse(*_a, **_k):
        raise AssertionError("built in the validator's process")

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", refuse)
    cfg = json.loads((base / "config.json").read_text())
    assert hub.check_config(cfg, COMP)[1] == n_params_in(base)


# --- crash loops ---------------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("record", [
    lambda: {"pid": dead_pid(), "process_start": None, "at": 0},
    # the pid is alive but is a later process (a container's validator is pid 1 at every start)
    lambda: {"pid": os.getpid(), "process_start": -1, "at": 0},
    lambda: "not JSON {",
])
def test_stale_attempt_marker_refuses_without_trying_again(record, base, olah_mirror, olah_hub, tmp_path,
                                                           no_weights):
    mid = commit(olah_mirror, "crasher", variant(base, tmp_path / "src"))
    store = tmp_path / "store"
    marker = hub.attempt_marker(snapshot_path(store, HOTKEY, mid))
    marker.parent.mkdir(parents=True)
    value = record()
    marker.write_text(value if isinstance(value, str) else json.dumps(value))
    for _ in range(2):  # at every later visit too: the marker stays
        with pytest.raises(FetchError) as err:
            ensure_model(mid, HOTKEY, COMP, store, endpoint=olah_hub.endpoint, progress=False, download=no_weights)
        assert err.value.reason is FailureReason.constraint
        assert "an earlier check of this commit never finished" in err.value.detail
        assert str(marker) in err.value.detail and marker.exists()


def test_attempt_marker_of_a_live_process_is_a_leftover(base, olah_mirror, olah_hub, tmp_path):
    mid = commit(olah_mirror, "leftover", variant(base, tmp_path / "src"))
    store = tmp_path / "store"
    marker = hub.attempt_marker(snapshot_path(store, HOTKEY, mid))
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"pid": os.getpid(), "process_start": _process_start(os.getpid()), "at": 0}))
    assert ensure_model(mid, HOTKEY, COMP, store, endpoint=olah_hub.endpoint, progress=False).path.is_dir()
    assert not marker.exists()


def test_validator_killed_during_the_checks_is_not_killed_again(base, olah_mirror, olah_hub, tmp_path):
    """A process killed (SIGKILL, as by the OOM killer) while it checks a commit: the next
    ensure_model refuses the commit instead of checking it again."""
    mid = commit(olah_mirror, "killer", variant(base, tmp_path / "src"))
    store = tmp_path / "store"
    script = textwrap.dedent(f"""
        import os, signal
        from validator.adapters import hub
        from validator.adapters.hub import checks
        from validator.core.competitions import Competition
        from validator.core.identity import ModelId
        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        checks.count_parameters_isolated = die
        comp = Competition(id="c00", reward=1.0, model_types=["LlamaForCausalLM"], parameters=10**9,
                           model_size=10**9, dataset="local")
        mid = ModelId(*{[mid.namespace, mid.name, mid.commit, mid.hash, mid.competition]!r})
        hub.ensure_model(mid, {HOTKEY!r}, comp, {str(store)!r}, endpoint={olah_hub.endpoint!r}, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert hub.attempt_marker(snapshot_path(store, HOTKEY, mid)).exists()
    with pytest.raises(FetchError) as err:
        ensure_model(mid, HOTKEY, COMP, store, endpoint=olah_hub.endpoint, progress=False)
    assert err.value.reason is FailureReason.constraint
    assert "never finished" in err.value.detail and "died during it" in err.value.detail


def test_attempt_marker_present_during_the_checks_only(base, olah_mirror, olah_hub, tmp_path, monkeypatch):
    mid = commit(olah_mirror, "watched", variant(base, tmp_path / "src"))
    store = tmp_path / "store"
    marker = hub.attempt_marker(snapshot_path(store, HOTKEY, mid))
    seen = []
    real = hub.count_parameters_isolated

    def watching(*a, **k):
        seen.append(json.loads(marker.read_text())["pid"])
        return real(*a, **k)

    monkeypatch.setattr(hub_checks, "count_parameters_isolated", watching)
    ensure_model(mid, HOTKEY, COMP, store, endpoint=olah_hub.endpoint, progress=False)
    assert seen == [os.getpid(), os.getpid()]  # before the download and on disk
    assert not marker.exists()


# --- keys that choose code paths ----------------------------------------------------------------

CODE_PATH_KEYS = {
    "attn_implementation": "flash_attention_2",
    "_attn_implementation": "flash_attention_2",
    "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
}


def test_code_path_keys_accepted_and_built_without_them(base, olah_mirror, olah_hub, tmp_path):
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    def add(cfg):
        cfg.update(CODE_PATH_KEYS)

    model = variant(base, tmp_path / "src", config_edit=add)
    cfg = json.loads((model / "config.json").read_text())
    with pytest.raises(Exception):  # as written, transformers would pick flash-attention (not installed)
        AutoModelForCausalLM.from_config(CONFIG_MAPPING["llama"].from_dict(dict(cfg)))
    mid = commit(olah_mirror, "quantized", model)
    path = ensure_model(mid, HOTKEY, COMP, tmp_path / "store", endpoint=olah_hub.endpoint, progress=False).path
    marker = hub.read_marker(path)
    assert marker["parameters"] == n_params_in(base)
    assert "SlicedLlamaForCausalLM" in marker["class"]
    assert json.loads((path / "config.json").read_text()) == cfg  # the files themselves are untouched


def test_strip_config_keys_at_every_level():
    cfg = {"model_type": "llama", **CODE_PATH_KEYS,
           "text_config": {"hidden_size": 8, "attn_implementation": "sdpa", "layers": [{"quantization_config": {}}]}}
    before = json.dumps(cfg, sort_keys=True)
    assert hub.strip_config_keys(cfg) == {"model_type": "llama", "text_config": {"hidden_size": 8, "layers": [{}]}}
    assert json.dumps(cfg, sort_keys=True) == before  # a copy: the caller's dict is unchanged
    assert set(CODE_PATH_KEYS) <= set(constants.CONFIG_KEYS_STRIPPED)
