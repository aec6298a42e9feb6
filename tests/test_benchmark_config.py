import json

import pytest

from validator.adapters.candidates import load_benchmark
from validator.core.candidates import BenchmarkError, parse_benchmark


def _model_dir(tmp_path, name="m"):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def test_valid_entries_and_defaults(tmp_path):
    d = _model_dir(tmp_path)
    entries, errors = parse_benchmark({"_c": "comment", "a": {"competition": "c00", "path": str(d)},
                                       "b": {"competition": "c01", "path": str(d), "label": "B", "block": 7}})
    assert errors == {}
    assert entries["a"].label == "a" and entries["a"].block is None and entries["a"].path == d.resolve()
    assert entries["b"].label == "B" and entries["b"].block == 7


@pytest.mark.parametrize("raw,where", [
    ({"path": "X"}, "competition"),
    ({"competition": "c00", "path": "/nonexistent/dir"}, "path"),
    ({"competition": "c00", "path": "X", "block": -1}, "block"),
    ({"competition": "c00", "path": "X", "extra": 1}, "extra"),
    ("not an object", "entry"),
])
def test_bad_entry_is_reported_and_skipped(tmp_path, raw, where):
    d = _model_dir(tmp_path)
    if isinstance(raw, dict) and raw.get("path") == "X":
        raw = {**raw, "path": str(d)}
    entries, errors = parse_benchmark({"bad": raw, "good": {"competition": "c00", "path": str(d)}})
    assert list(entries) == ["good"]
    assert "bad" in errors and (where in errors["bad"] or where == "entry"), errors


def test_dir_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    _, errors = parse_benchmark({"x": {"competition": "c00", "path": str(tmp_path / "empty")}})
    assert "config.json" in errors["x"]


def test_file_level_errors(tmp_path):
    assert load_benchmark(tmp_path / "missing.json") == ({}, {})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BenchmarkError, match="bad.json"):
        load_benchmark(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(BenchmarkError, match="object"):
        load_benchmark(bad)


def test_example_file_parses(tmp_path):
    from pathlib import Path

    data = json.loads((Path(__file__).parent.parent / "benchmark_example.json").read_text())
    entries, errors = parse_benchmark(data)
    # the example's paths are placeholders: both entries are reported, none crash
    assert entries == {} and set(errors) == {"my-candidate", "older-run"}


@pytest.mark.parametrize("content", [
    json.dumps({"a": {"competition": "c00", "path": "/x"}}).encode("utf-16"),  # BOM + UTF-16
    bytes(range(256)) * 4,  # binary junk: not UTF-8
    b"[" * 100_000,  # nesting too deep for the json module
])
def test_unreadable_file_is_a_benchmark_error(tmp_path, content):
    bad = tmp_path / "bench.json"
    bad.write_bytes(content)
    with pytest.raises(BenchmarkError, match="bench.json: cannot read"):
        load_benchmark(bad)


def test_utf8_bom_is_tolerated(tmp_path):
    d = _model_dir(tmp_path)
    f = tmp_path / "bench.json"
    f.write_bytes(json.dumps({"a": {"competition": "c00", "path": str(d)}}).encode("utf-8-sig"))
    entries, errors = load_benchmark(f)
    assert list(entries) == ["a"] and errors == {}


def test_not_an_object_names_the_file(tmp_path):
    f = tmp_path / "bench.json"
    f.write_text("[1]")
    with pytest.raises(BenchmarkError, match=r"bench\.json.*object"):
        load_benchmark(f)


def test_unknown_home_is_a_per_entry_error(tmp_path):
    # Path.expanduser raises RuntimeError for an unknown user: the entry is skipped, the rest run
    d = _model_dir(tmp_path)
    f = tmp_path / "bench.json"
    f.write_text(json.dumps({"bad": {"competition": "c00", "path": "~nosuchuser_zz/model"},
                             "good": {"competition": "c00", "path": str(d)}}))
    entries, errors = load_benchmark(f)
    assert list(entries) == ["good"]
    assert "path" in errors["bad"] and "~nosuchuser_zz/model" in errors["bad"], errors


def test_permission_error_in_path_check_is_a_per_entry_error(tmp_path, monkeypatch):
    from pathlib import Path

    d = _model_dir(tmp_path)

    def denied(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_dir", denied)
    entries, errors = parse_benchmark({"x": {"competition": "c00", "path": str(d)}})
    assert entries == {} and "Permission denied" in errors["x"] and str(d) in errors["x"], errors


def test_unstattable_file_is_a_benchmark_error(tmp_path, monkeypatch):
    from pathlib import Path

    def denied(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", denied)
    with pytest.raises(BenchmarkError, match="bench.json.*Permission denied"):
        load_benchmark(tmp_path / "bench.json")


def test_validator_step_reports_a_bad_file_instead_of_crashing(tmp_path):
    from validator.adapters.candidates import benchmark_entries

    f = tmp_path / "bench.json"
    f.write_bytes("{}".encode("utf-16"))
    entries, problems = benchmark_entries(f, {})
    assert entries == [] and len(problems) == 1 and "bench.json" in problems[0]


# --- live's form: coldint_validator's benchmark_example.json, read by load_benchmark_config ------

LIVE_EXAMPLE = {  # coldint_validator 4690180:benchmark_example.json, paths replaced by real dirs
    "254": {"competition": "c01", "block": 3461910, "path": "<phi3_v1>", "label": "phi3_v1"},
    "255": {"competition": "c01", "block": 3461904, "path": "<Phi-3-mini-4k>", "label": "Phi-3-mini-4k"},
}


def test_live_example_is_read_unchanged(tmp_path):
    data = json.loads(json.dumps(LIVE_EXAMPLE))
    for entry in data.values():
        entry["path"] = str(_model_dir(tmp_path, entry["path"].strip("<>")))
    f = tmp_path / "benchmark.json"
    f.write_text(json.dumps(data, indent=1))
    entries, errors = load_benchmark(f)
    assert errors == {} and list(entries) == ["254", "255"]
    e = entries["254"]
    assert (e.uid, e.competition, e.block, e.label) == (254, "c01", 3461910, "phi3_v1")
    assert e.path == (tmp_path / "phi3_v1").resolve() and e.hotkey is None


def test_live_form_defaults_block_label_and_takes_a_hotkey(tmp_path):
    d = _model_dir(tmp_path, "20240724_phi3mini")
    entries, errors = parse_benchmark({"7": {"competition": "c00", "path": str(d), "hotkey": "5Fxyz"},
                                       "8": {"competition": "c00", "path": str(d), "block": 2**31},
                                       "mine": {"competition": "c00", "path": str(d)}})
    assert errors == {}
    e7 = entries["7"]
    assert e7.block is None and e7.live_block == 2**31  # live: bcfg.get("block", 1 << 31)
    assert e7.label == "20240724_phi3mini"  # live: the path's last part
    assert e7.hotkey == "5Fxyz" and e7.uid == 7
    assert entries["8"].block is None  # live's 2**31 written out means the same: no block
    assert entries["mine"].uid is None and entries["mine"].label == "mine"  # ours: the id


@pytest.mark.parametrize("raw, reason", [
    ({"competition": "c00", "path": "X", "block": "soon"}, "block: Input should be a valid integer"),
    ({"competition": "c00", "path": "X", "hotkey": ""}, "hotkey: String should have at least 1 character"),
    ({"competition": "c00", "path": "X", "uid": 3}, "uid: not a field"),
    ({"path": "X", "block": -5}, "competition: Field required; block: Input should be greater than or equal to 0"),
    ([1, 2], "entry: expected an object with competition and path, got list"),
])
def test_bad_entry_names_every_reason(tmp_path, raw, reason):
    d = _model_dir(tmp_path)
    if isinstance(raw, dict):
        raw = {**raw, "path": str(d)}
    entries, errors = parse_benchmark({"12": raw, "good": {"competition": "c00", "path": str(d)}})
    assert list(entries) == ["good"] and reason in errors["12"], errors


def test_oversize_and_deep_files_refused_before_parsing(tmp_path):
    import constants

    f = tmp_path / "bench.json"
    with open(f, "wb") as fh:
        fh.truncate(constants.BENCHMARK_MAX_BYTES + 1)
    with pytest.raises(BenchmarkError, match=r"bench\.json: cannot read benchmark\.json: more than"):
        load_benchmark(f)
    f.write_bytes(b'{"a": ' * 50_000 + b"{}" + b"}" * 50_000)
    with pytest.raises(BenchmarkError, match=r"bench\.json: cannot read benchmark\.json: JSON nested deeper"):
        load_benchmark(f)
