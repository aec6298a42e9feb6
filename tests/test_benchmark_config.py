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
    from validator.loop import benchmark_entries

    f = tmp_path / "bench.json"
    f.write_bytes("{}".encode("utf-16"))
    entries, problems = benchmark_entries(f, {})
    assert entries == [] and len(problems) == 1 and "bench.json" in problems[0]
