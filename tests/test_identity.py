import base64
import hashlib

import pytest
from hypothesis import given, strategies as st

from validator.core.identity import MAX_COMMITMENT_BYTES, InvalidCommitment, ModelId, NothingToHash, dir_hash, \
    files_hash, secure_hash

GOOD = ModelId("coldint", "llama-1b_v2", "a" * 40, "A" * 43 + "=", "c00")


def test_round_trip():
    text = GOOD.to_commitment()
    assert text == f"coldint:llama-1b_v2:{'a' * 40}:{'A' * 43}=:c00"
    assert ModelId.from_commitment(text) == GOOD
    assert GOOD.repo_id == "coldint/llama-1b_v2"


# sized so a commitment stays within the chain's 128 bytes (15 + 15 + 40 + 44 + 10 + 4 separators)
parts = st.from_regex(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,13}[A-Za-z0-9_])?", fullmatch=True).filter(
    lambda s: ".." not in s and "--" not in s)
hashes = st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode())


@given(parts, parts, st.from_regex(r"[0-9a-f]{40}", fullmatch=True), hashes,
       st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters=":"),
               min_size=1, max_size=10).filter(lambda c: len(c.encode()) <= 10))
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
    # `$` matches before a final newline: every field is matched whole
    f"ns:name:{'a' * 40}:{'A' * 43}=:c00\n",
    f"ns:name\n:{'a' * 40}:{'A' * 43}=:c00",
    f"ns:name:{'a' * 40}\n:{'A' * 43}=:c00",
    f"ns:name:{'a' * 40}:{'A' * 43}=\n:c00",
    f"ns:name:{'a' * 40}:{'A' * 43}=:c\t00",
    f"ns:name:{'a' * 40}:{'A' * 43}=:c\x0000",
    f"ns:name:{'a' * 40}:{'A' * 43}=:c\u200900",  # unicode whitespace
    f"ns:name:{'a' * 40}:{'A' * 43}=:c\x8500",  # C1 control
    # 129 bytes: one past what one Raw field holds
    f"{'n' * 20}:{'m' * 20}:{'a' * 40}:{'A' * 43}=:{'c' * 1}",
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


def test_commitment_limit_is_128_bytes_of_utf8():
    base = f"ns:nm:{'a' * 40}:{'A' * 43}=:"
    assert MAX_COMMITMENT_BYTES == 128
    fits = base + "c" * (128 - len(base))
    assert len(fits.encode()) == 128 and ModelId.from_commitment(fits).competition == "c" * (128 - len(base))
    with pytest.raises(InvalidCommitment, match="129 bytes"):
        ModelId.from_commitment(fits + "c")
    # characters are not bytes: 19 two-byte letters are 38 bytes
    two_byte = base + "é" * ((128 - len(base)) // 2)
    assert len(two_byte.encode()) <= 128 < len((two_byte + "é").encode())
    assert ModelId.from_commitment(two_byte).competition.startswith("é")
    with pytest.raises(InvalidCommitment, match="bytes"):
        ModelId.from_commitment(two_byte + "é")
    with pytest.raises(InvalidCommitment, match="bytes"):  # built, not parsed: the same bound
        ModelId("n" * 30, "m" * 30, "a" * 40, "A" * 43 + "=", "c00")


@pytest.mark.parametrize("competition", ["c00", "C-01_x", "tiny_limits", "комп", "a.b", "c/d", "x" * 30])
def test_any_competition_id_without_colon_or_space_is_accepted(competition):
    # live accepts any id without ':' (competitions.json decides which exist)
    text = f"ns:name:{'a' * 40}:{'A' * 43}=:{competition}"
    assert ModelId.from_commitment(text).competition == competition


def test_dir_hash_of_nothing_and_of_a_missing_path_are_clear_errors(tmp_path):
    with pytest.raises(NothingToHash, match="no files"):
        dir_hash(tmp_path)
    (tmp_path / "empty_sub").mkdir()
    with pytest.raises(NothingToHash):
        dir_hash(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        dir_hash(tmp_path / "missing")
    with pytest.raises(NothingToHash):
        files_hash(tmp_path, [])


def test_files_hash_is_the_hash_of_a_flat_snapshot_of_those_files(tmp_path):
    (tmp_path / "b.json").write_bytes(b"bee")
    (tmp_path / "a.json").write_bytes(b"ay")
    (tmp_path / "README.md").write_bytes(b"not downloaded")
    concat = "".join(base64.b64encode(hashlib.sha256(d).digest()).decode() for d in (b"ay", b"bee"))
    expected = base64.b64encode(hashlib.sha256(concat.encode()).digest()).decode()
    assert files_hash(tmp_path, ["b.json", "a.json"]) == expected
    flat = tmp_path / "flat"
    flat.mkdir()
    for n in ("a.json", "b.json"):
        (flat / n).write_bytes((tmp_path / n).read_bytes())
    assert dir_hash(flat) == expected
    with pytest.raises(ValueError, match="plain file name"):
        files_hash(tmp_path, ["sub/x"])


def test_dir_hash_changes_with_content(tmp_path):
    (tmp_path / "f").write_bytes(b"1")
    h1 = dir_hash(tmp_path)
    (tmp_path / "f").write_bytes(b"2")
    assert dir_hash(tmp_path) != h1
