import base64
import hashlib

import pytest
from hypothesis import given, strategies as st

from validator.identity import InvalidCommitment, ModelId, dir_hash, secure_hash

GOOD = ModelId("coldint", "llama-1b_v2", "a" * 40, "A" * 43 + "=", "c00")


def test_round_trip():
    text = GOOD.to_commitment()
    assert text == f"coldint:llama-1b_v2:{'a' * 40}:{'A' * 43}=:c00"
    assert ModelId.from_commitment(text) == GOOD
    assert GOOD.repo_id == "coldint/llama-1b_v2"


parts = st.from_regex(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,20}[A-Za-z0-9_])?", fullmatch=True).filter(
    lambda s: ".." not in s and "--" not in s)
hashes = st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode())


@given(parts, parts, st.from_regex(r"[0-9a-f]{40}", fullmatch=True), hashes,
       st.from_regex(r"[A-Za-z0-9_-]{1,10}", fullmatch=True))
def test_round_trip_property(ns, name, commit, h, comp):
    mid = ModelId(ns, name, commit, h, comp)
    assert ModelId.from_commitment(mid.to_commitment()) == mid


@pytest.mark.parametrize("text", [
    "", "a:b:c:d", "a:b:c:d:e:f",
    f"..:name:{'a' * 40}:{'A' * 43}=:c00",
    f"ns:../etc:{'a' * 40}:{'A' * 43}=:c00",
    f"ns/x:name:{'a' * 40}:{'A' * 43}=:c00",
    f"ns:na--me:{'a' * 40}:{'A' * 43}=:c00",
    f"ns:name:{'A' * 40}:{'A' * 43}=:c00",  # upper-case sha
    f"ns:name:{'a' * 39}:{'A' * 43}=:c00",
    f"ns:name:{'a' * 40}:{'A' * 44}:c00",
    f"ns:name:{'a' * 40}:{'A' * 43}=:c 00",
    f"ns:name:{'a' * 40}:{'A' * 43}=:",
    f"-ns:name:{'a' * 40}:{'A' * 43}=:c00",
    "x" * 1000,
])
def test_rejects_bad(text):
    with pytest.raises(InvalidCommitment):
        ModelId.from_commitment(text)


@given(st.text(max_size=300))
def test_any_string_parses_or_raises_clearly(text):
    try:
        mid = ModelId.from_commitment(text)
    except InvalidCommitment as e:
        assert str(e)
    else:
        assert mid.to_commitment() == text
        assert "/" not in mid.namespace + mid.name and ".." not in mid.namespace + mid.name


def test_dir_hash_nested_matches_independent(tmp_path):
    files = {"b.txt": b"bee", "a.txt": b"ay", "sub/z.bin": b"\x00\x01", "sub/deeper/c": b"c" * 5000,
             "aa/x": b"x"}
    for rel, data in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    # os.walk order with sorted dirs: root files first (sorted), then aa/, sub/, sub/deeper/
    order = ["a.txt", "b.txt", "aa/x", "sub/z.bin", "sub/deeper/c"]
    concat = "".join(base64.b64encode(hashlib.sha256(files[r]).digest()).decode() for r in order)
    expected = base64.b64encode(hashlib.sha256(concat.encode()).digest()).decode()
    assert dir_hash(tmp_path) == expected
    # secure hash binds to the hotkey
    hk = "5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo5EYjQX"
    assert secure_hash(expected, hk) == base64.b64encode(hashlib.sha256((expected + hk).encode()).digest()).decode()
    assert secure_hash(expected, hk) != secure_hash(expected, hk[:-1] + "Y")


def test_dir_hash_changes_with_content(tmp_path):
    (tmp_path / "f").write_bytes(b"1")
    h1 = dir_hash(tmp_path)
    (tmp_path / "f").write_bytes(b"2")
    assert dir_hash(tmp_path) != h1
