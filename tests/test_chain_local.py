import argparse
import functools
import hashlib
import math
import multiprocessing as mp

import pytest
from rich.console import Console

import constants
from validator.core.chain import ChainError, Commitment
from validator.ports import Chain
from validator.cli.chain import register_commands, run_chain_command
from validator.adapters.chain.local import LocalChain, incentive_from_weights, local_block_hash


class Clock:
    """A controllable wall clock."""

    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def chain(tmp_path, clock):
    return LocalChain(tmp_path / "chain.sqlite", hotkey="val", clock=clock)


def test_is_a_chain(chain):
    assert isinstance(chain, Chain)
    assert chain.netuid == constants.NETUID


def test_block_follows_wall_clock_and_advance(chain, clock):
    assert chain.block == 0
    clock.t += constants.BLOCK_TIME_S - 0.001
    assert chain.block == 0
    clock.t += 0.001
    assert chain.block == 1
    clock.t += 10 * constants.BLOCK_TIME_S
    assert chain.block == 11
    assert chain.advance(5) == 16
    assert chain.block == 16
    assert chain.advance(0) == 16
    with pytest.raises(ChainError, match="advance"):
        chain.advance(-1)


def test_block_state_is_in_the_file(tmp_path, clock):
    path = tmp_path / "chain.sqlite"
    LocalChain(path, clock=clock).advance(7)
    clock.t += 3 * constants.BLOCK_TIME_S
    # a second handle (same clock) sees the same block: the creation time and offset are stored
    assert LocalChain(path, clock=clock).block == 10


def test_block_hash_deterministic(chain):
    chain.advance(3)
    expected = "0x" + hashlib.sha256(f"localchain:{constants.NETUID}:2".encode()).hexdigest()
    assert chain.block_hash(2) == expected == local_block_hash(constants.NETUID, 2)
    assert chain.block_hash(2) != chain.block_hash(3)
    with pytest.raises(ChainError, match="no block 4"):
        chain.block_hash(4)
    with pytest.raises(ChainError):
        chain.block_hash(-1)


def test_netuid_mismatch_refused(tmp_path):
    LocalChain(tmp_path / "c.sqlite", netuid=29)
    with pytest.raises(ChainError, match="netuid 29, not netuid 3"):
        LocalChain(tmp_path / "c.sqlite", netuid=3)


def test_not_sqlite_is_chain_error(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ChainError, match="c.sqlite"):
        LocalChain(path)


def test_register_assigns_lowest_free_uid_and_is_idempotent(chain):
    assert chain.register("val", coldkey="cold", stake=100.0, validator=True) == 0
    assert chain.register("m1") == 1
    assert chain.register("m2", coldkey="c2", stake=1.5) == 2
    assert chain.register("m1", stake=999) == 1  # existing hotkey: same uid, unchanged
    mg, _ = chain.sync()
    assert mg.uids == [0, 1, 2]
    assert mg.hotkeys == ["val", "m1", "m2"]
    assert mg.coldkeys == ["cold", "", "c2"]
    assert mg.stake == [100.0, 0.0, 1.5]
    assert mg.validator_permit == [True, False, False]
    assert mg.uid_of("m2") == 2 and mg.hotkey_of(1) == "m1"


@pytest.mark.parametrize("hotkey, stake", [("", 0.0), ("  ", 0.0), ("h", -1.0), ("h", float("nan"))])
def test_register_rejects_bad_input(chain, hotkey, stake):
    with pytest.raises(ChainError, match="register"):
        chain.register(hotkey, stake=stake)


def test_register_full_subnet(chain, monkeypatch):
    monkeypatch.setattr(constants, "SUBNET_UIDS", 3)
    for i in range(3):
        assert chain.register(f"h{i}") == i
    with pytest.raises(ChainError, match="full"):
        chain.register("h3")
    assert chain.register("h1") == 1


def test_commit_latest_replaces_and_records_block(chain):
    chain.register("m1")
    chain.register("m2")
    chain.commit("m1", "first")
    chain.advance(4)
    chain.commit("m2", "other")
    chain.advance(2)
    assert chain.commit("m1", "second") == 6
    _, commitments = chain.sync()
    assert commitments == {"m1": Commitment("second", 6), "m2": Commitment("other", 4)}


def test_commit_requires_registration(chain):
    with pytest.raises(ChainError, match="not registered"):
        chain.commit("ghost", "x")
    chain.register("m1")
    with pytest.raises(ChainError, match="string"):
        chain.commit("m1", 5)


def test_commit_longer_than_one_raw_field_is_refused(chain):
    """As on chain, a commitment is one Raw field of at most 128 bytes of UTF-8."""
    chain.register("m1")
    chain.commit("m1", "x" * 128)
    with pytest.raises(ChainError, match="129 bytes"):
        chain.commit("m1", "x" * 129)
    with pytest.raises(ChainError, match="130 bytes"):
        chain.commit("m1", "x" * 126 + "éé")  # 128 characters, 130 bytes
    assert chain.sync()[1]["m1"].text == "x" * 128  # the refused ones changed nothing


def test_set_weights_normalises_and_shows_in_metagraph(chain):
    chain.register("val", stake=10, validator=True)
    chain.register("m1")
    chain.register("m2")
    chain.register("m3")
    chain.advance(9)
    chain.set_weights([1, 2, 3], [3.0, 1.0, 0.0], version_key=4000)
    assert chain.weights_of("val") == {1: 0.75, 2: 0.25}  # zero dropped, sum 1
    record = chain.weights_record("val")
    assert (record.block, record.version_key) == (9, 4000)
    mg, _ = chain.sync()
    assert mg.weights == {0: {1: 0.75, 2: 0.25}}
    assert mg.last_update == [9, 0, 0, 0]
    assert mg.incentive == [0.0, 0.75, 0.25, 0.0]
    # a new set replaces the row
    chain.set_weights([3], [2.0], version_key=4001)
    assert chain.weights_of("val") == {3: 1.0}
    assert chain.weights_record("val").version_key == 4001


@pytest.mark.parametrize(
    "uids, weights, match",
    [
        ([1, 2], [1.0], "lengths must match"),
        ([1], [float("nan")], "finite"),
        ([1], [float("inf")], "finite"),
        ([1, 2], [1.0, -0.5], ">= 0"),
        ([1, 2], [0.0, 0.0], "all weights are zero"),
        ([], [], "no uids"),
        ([1, 1], [1.0, 1.0], "duplicate"),
        ([7], [1.0], r"uids \[7\] are not registered"),
    ],
)
def test_set_weights_validation(chain, uids, weights, match):
    chain.register("val", validator=True)
    chain.register("m1")
    chain.register("m2")
    with pytest.raises(ChainError, match=match):
        chain.set_weights(uids, weights, version_key=1)
    assert chain.weights_of("val") == {}


def test_set_weights_needs_registered_validator_hotkey(tmp_path, clock):
    path = tmp_path / "c.sqlite"
    no_key = LocalChain(path, clock=clock)
    no_key.register("m1")
    with pytest.raises(ChainError, match="without a validator hotkey"):
        no_key.set_weights([0], [1.0], 1)
    with pytest.raises(ChainError, match="validator hotkey val is not registered"):
        LocalChain(path, hotkey="val", clock=clock).set_weights([0], [1.0], 1)


def test_incentive_is_stake_weighted_average_of_rows():
    uids = [0, 1, 2, 3]
    rows = {0: {2: 1.0}, 1: {2: 0.5, 3: 0.5}}
    # stake 3:1 -> uid2 = 0.75*1 + 0.25*0.5, uid3 = 0.25*0.5
    got = incentive_from_weights(uids, rows, {0: 3.0, 1: 1.0})
    assert got == pytest.approx([0.0, 0.0, 0.875, 0.125])
    # zero total stake: rows count equally
    assert incentive_from_weights(uids, rows, {0: 0.0, 1: 0.0}) == pytest.approx([0, 0, 0.75, 0.25])
    assert incentive_from_weights(uids, {}, {}) == [0.0] * 4


def test_incentive_in_metagraph_with_two_validators(chain):
    chain.register("val", stake=3, validator=True)
    chain.register("val2", stake=1, validator=True)
    chain.register("m1")
    chain.register("m2")
    chain.set_weights([2], [1.0], 1)
    chain.set_weights_as("val2", [2, 3], [1.0, 1.0], 1)
    mg, _ = chain.sync()
    assert mg.weights == {0: {2: 1.0}, 1: {2: 0.5, 3: 0.5}}
    assert mg.incentive == pytest.approx([0.0, 0.0, 0.875, 0.125])
    assert math.isclose(sum(mg.incentive), 1.0)


def test_metagraph_block_hash_matches_block(chain):
    chain.advance(12)
    mg, _ = chain.sync()
    assert mg.block == 12 and mg.block_hash == chain.block_hash(12)


# --- two processes at once -------------------------------------------------------------------

N_COMMITS = 150


def _committer(path: str, n: int) -> None:
    chain = LocalChain(path)
    for i in range(n):
        chain.commit("miner", f"commit-{i}")
        if i % 10 == 0:
            chain.advance(1)


def _weight_setter(path: str, weights: list) -> None:
    LocalChain(path, hotkey="val").set_weights([1, 2], weights, version_key=77)


def test_commits_from_another_process_while_syncing(tmp_path):
    path = str(tmp_path / "chain.sqlite")
    chain = LocalChain(path)
    chain.register("miner")
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_committer, args=(path, N_COMMITS))
    proc.start()
    seen = []
    while proc.is_alive() or not seen:
        _, commitments = chain.sync()  # never raises "database is locked" while the other writes
        if "miner" in commitments:
            seen.append(int(commitments["miner"].text.split("-")[1]))
    proc.join(timeout=120)
    assert proc.exitcode == 0
    assert seen == sorted(seen)  # commits are seen in order, never torn or going back
    _, commitments = chain.sync()
    assert commitments["miner"].text == f"commit-{N_COMMITS - 1}"
    assert chain.block >= N_COMMITS // 10


def test_set_weights_from_another_process_is_visible(tmp_path):
    path = str(tmp_path / "chain.sqlite")
    chain = LocalChain(path)
    chain.register("val", stake=5, validator=True)
    chain.register("m1")
    chain.register("m2")
    proc = mp.get_context("spawn").Process(target=_weight_setter, args=(path, [1.0, 3.0]))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == 0
    assert chain.weights_of("val") == {1: 0.25, 2: 0.75}
    mg, _ = chain.sync()
    assert mg.weights == {0: {1: 0.25, 2: 0.75}}
    assert chain.weights_record("val").version_key == 77


# --- `coldint-validator chain ...` (validator/cli/chain.py) -----------------------------------

COMMIT = "alice:model-a:" + "a" * 40 + ":" + "A" * 43 + "=:c00"


FROZEN = Clock()  # CLI tests: blocks move only by `advance`


@pytest.fixture(autouse=True)
def _frozen_cli_chain(monkeypatch):
    import validator.cli.chain as cli_module

    monkeypatch.setattr(cli_module, "LocalChain", functools.partial(LocalChain, clock=FROZEN))


def parser():
    p = argparse.ArgumentParser(prog="coldint-validator")
    register_commands(p.add_subparsers(dest="command"))
    return p


def run(db, *argv):
    args = parser().parse_args(["chain", argv[0], "--chain-db", str(db), *argv[1:]])
    console = Console(record=True, width=250, color_system=None)
    rc = run_chain_command(args, console=console)
    return rc, console.export_text()


def test_default_db_path():
    args = parser().parse_args(["chain", "show"])
    assert args.chain_db == constants.CHAIN_DB_DEFAULT == ".coldint/chain.sqlite"
    assert args.func is run_chain_command


def test_register_commit_advance_show(tmp_path):
    db = tmp_path / "state" / "chain.sqlite"
    assert run(db, "register", "val-hotkey", "--stake", "100", "--validator", "--coldkey", "cold1") == (
        0, "val-hotkey registered as uid 0 on netuid 29\n")
    rc, out = run(db, "register", "miner-hotkey")
    assert rc == 0 and "uid 1" in out
    rc, out = run(db, "advance", "7")
    assert rc == 0 and "current block 7" in out
    rc, out = run(db, "commit", "miner-hotkey", COMMIT)
    assert rc == 0 and "committed at block 7" in out

    LocalChain(db, hotkey="val-hotkey", clock=FROZEN).set_weights([1], [1.0], 4000)
    rc, out = run(db, "show")
    assert rc == 0
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[1:-1]]
            for line in out.splitlines() if line.startswith("│")}
    assert rows["0"] == ["0", "val-hotkey", "100", "0.0000", "yes", "", ""]
    assert rows["1"] == ["1", "miner-hotkey", "0", "1.0000", "", COMMIT, "7"]
    assert "current block: 7" in out


def test_advance_defaults_to_one(tmp_path):
    db = tmp_path / "c.sqlite"
    assert run(db, "advance")[0] == 0
    assert LocalChain(db, clock=FROZEN).block == 1


def test_commit_refuses_invalid_commitment(tmp_path):
    db = tmp_path / "c.sqlite"
    run(db, "register", "m")
    rc, out = run(db, "commit", "m", "not-a-commitment")
    assert rc == 2 and "refused commitment" in out and "expected namespace:name:commit:hash:competition" in out
    assert LocalChain(db, clock=FROZEN).sync()[1] == {}


def test_commit_unregistered_hotkey_is_chain_error(tmp_path):
    rc, out = run(tmp_path / "c.sqlite", "commit", "ghost", COMMIT)
    assert rc == 1 and "not registered" in out


def test_weights_command(tmp_path):
    db = tmp_path / "c.sqlite"
    run(db, "register", "val", "--validator")
    run(db, "register", "m1")
    run(db, "register", "m2")
    rc, out = run(db, "weights", "val")
    assert rc == 1 and "has not set weights" in out
    LocalChain(db, hotkey="val", clock=FROZEN).set_weights([1, 2], [1.0, 3.0], 4000)
    rc, out = run(db, "weights", "val")
    assert rc == 0 and "set at block 0 with version_key 4000" in out
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    assert rows == [["2", "m2", "0.750000"], ["1", "m1", "0.250000"]]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["advance", "x"], "argument blocks: 'x' is not an integer"),
        (["advance", "--", "-3"], "argument blocks: '-3' must be >= 0"),
        (["register", "h", "--stake=-1"], "argument --stake: '-1' must be a finite number >= 0"),
        (["register", "h", "--stake", "nan"], "argument --stake: 'nan' must be a finite number >= 0"),
    ],
)
def test_bad_arguments_rejected_by_parser(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["chain", argv[0], "--chain-db", str(tmp_path / "c.sqlite"), *argv[1:]])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_show_and_weights_need_an_existing_chain(tmp_path):
    db = tmp_path / "absent.sqlite"
    for command in (["show"], ["weights", "val"]):
        rc, out = run(db, *command)
        assert rc == 1 and "no local chain at" in out
    assert not db.exists()
