import json

import pytest

from benchmark.config import BenchmarkError, load_benchmark, parse_benchmark


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
