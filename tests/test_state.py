"""validator/adapters/files.py: atomic writes, clear errors on corrupt files."""
import json
import logging
import os

import pytest

from validator.adapters.files import StateError, atomic_write_bytes, atomic_write_json, load_or_default, read_json


def test_json_round_trip_and_no_temp_files_left(tmp_path):
    path = tmp_path / "sub" / "state.json"
    obj = {"a": [1, 2.5, None, "x"], "b": {"c": True}}
    atomic_write_json(path, obj)
    assert read_json(path) == obj
    atomic_write_json(path, {"a": 2})  # replaces, leaves only the target behind
    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(path.parent) == ["state.json"]


def test_bytes_write_replaces_content(tmp_path):
    path = tmp_path / "blob.bin"
    atomic_write_bytes(path, b"\x00first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"


def test_failed_serialisation_keeps_old_file(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(ValueError):
        atomic_write_json(path, {"bad": float("inf")})  # strict JSON: callers encode inf themselves
    assert read_json(path) == {"ok": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_missing_file_gives_default_or_raises(tmp_path):
    assert read_json(tmp_path / "nope.json", default={"d": 1}) == {"d": 1}
    assert read_json(tmp_path / "nope.json", None) is None
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "nope.json")


def test_corrupt_file_error_names_the_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"half": [1, 2')
    with pytest.raises(StateError) as e:
        read_json(path, {})
    assert str(path) in str(e.value) and "corrupt" in str(e.value)
    assert e.value.path == path


def test_load_or_default_keeps_bad_copy(tmp_path, caplog):
    path = tmp_path / "state.json"
    path.write_bytes(b"\xff\xfe not json")
    with caplog.at_level(logging.WARNING):
        assert load_or_default(path, {"fresh": True}) == {"fresh": True}
    assert (tmp_path / "state.json.bad").read_bytes() == b"\xff\xfe not json"
    assert str(path) in caplog.text
    atomic_write_json(path, [1])
    assert load_or_default(path, None) == [1]
