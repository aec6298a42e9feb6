"""LocalChain: the Chain port over an SQLite file, the embedded default and the test chain.

Several processes may use one file at once (a validator, a miner's upload script, the
`coldint-validator chain` command): the file is in WAL mode, every operation is its own
transaction (`BEGIN IMMEDIATE` for writes, so writers queue on the busy timeout instead of
failing), and no connection is kept between operations.

Blocks: block = explicit advances + floor((now - created) / BLOCK_TIME_S), so a local chain
moves like a real one and a test can jump ahead with `advance(n)`.

Incentive (a simple stand-in for Yuma consensus): every weight row counts, weighted by its
setter's stake (all rows equally when the setters' total stake is 0); the stake-weighted
average of the rows is normalised to sum 1.
"""
from __future__ import annotations

import hashlib
import math
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import constants
from validator.core.chain import ChainError, Commitment, Metagraph

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS neurons (
    uid INTEGER PRIMARY KEY,
    hotkey TEXT NOT NULL UNIQUE,
    coldkey TEXT NOT NULL,
    stake REAL NOT NULL,
    validator INTEGER NOT NULL,
    registered_block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS commitments (
    hotkey TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS weights (
    validator TEXT NOT NULL,
    uid INTEGER NOT NULL,
    weight REAL NOT NULL,
    PRIMARY KEY (validator, uid)
);
CREATE TABLE IF NOT EXISTS weight_sets (
    validator TEXT PRIMARY KEY,
    block INTEGER NOT NULL,
    version_key INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class WeightsRecord:
    """A validator's last set_weights: normalised weights, the block and the version key."""

    weights: dict[int, float]
    block: int
    version_key: int


def local_block_hash(netuid: int, block: int) -> str:
    """Deterministic stand-in for a block hash (same chain, same block -> same hash)."""
    return "0x" + hashlib.sha256(f"localchain:{netuid}:{block}".encode()).hexdigest()


def incentive_from_weights(
    uids: Sequence[int], rows: dict[int, dict[int, float]], stake_of: dict[int, float]
) -> list[float]:
    """Stake-weighted average of the weight rows, normalised to sum 1 (0s when no weights).

    `rows` maps setter uid -> {uid: weight} (each row sums to 1); `stake_of` maps uid -> stake.
    """
    rows = {v: row for v, row in rows.items() if row}
    if not rows:
        return [0.0] * len(uids)
    total_stake = sum(max(stake_of.get(v, 0.0), 0.0) for v in rows)
    scores = dict.fromkeys(uids, 0.0)
    for v, row in rows.items():
        share = max(stake_of.get(v, 0.0), 0.0) / total_stake if total_stake > 0 else 1.0 / len(rows)
        for uid, w in row.items():
            if uid in scores:
                scores[uid] += share * w
    total = sum(scores.values())
    return [scores[u] / total if total > 0 else 0.0 for u in uids]


class LocalChain:
    """A subnet ledger in one SQLite file. `hotkey` is the validator identity set_weights uses.

    `clock` (wall-clock seconds) drives the block number; every handle on one file must use
    the same kind of clock (a frozen test clock and time.time disagree by decades of blocks).
    """

    def __init__(
        self,
        path: str | Path,
        netuid: int = constants.NETUID,
        hotkey: Optional[str] = None,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = constants.LOCAL_CHAIN_BUSY_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self.netuid = int(netuid)
        self.hotkey = hotkey
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ChainError(f"local chain {self.path}: cannot create its directory ({exc.strerror})") from None
        self._init_db()

    # --- plumbing -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per operation.
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
        return conn

    @contextmanager
    def _tx(self, write: bool) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise ChainError(f"local chain {self.path}: cannot open ({exc})") from None
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise ChainError(f"local chain {self.path}: database error ({exc})") from None
        finally:
            conn.close()

    def _init_db(self) -> None:
        try:
            conn = self._connect()
            try:
                # WAL: readers never block the writer and vice versa; persistent in the file.
                conn.execute("PRAGMA journal_mode=WAL")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise ChainError(f"local chain {self.path}: cannot open as SQLite ({exc})") from None
        with self._tx(write=True) as conn:
            # statement by statement: executescript() would COMMIT our transaction first
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('netuid', ?)", (str(self.netuid),))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (repr(float(self._clock())),))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('block_offset', '0')")
            stored = int(conn.execute("SELECT value FROM meta WHERE key='netuid'").fetchone()[0])
            self._created = float(conn.execute("SELECT value FROM meta WHERE key='created'").fetchone()[0])
        if stored != self.netuid:
            raise ChainError(f"local chain {self.path} holds netuid {stored}, not netuid {self.netuid}")

    def _block(self, conn: sqlite3.Connection) -> int:
        offset = int(conn.execute("SELECT value FROM meta WHERE key='block_offset'").fetchone()[0])
        elapsed = max(0.0, self._clock() - self._created)
        return offset + int(elapsed // constants.BLOCK_TIME_S)

    @staticmethod
    def _uid_of(conn: sqlite3.Connection, hotkey: str) -> Optional[int]:
        row = conn.execute("SELECT uid FROM neurons WHERE hotkey=?", (hotkey,)).fetchone()
        return None if row is None else int(row[0])

    # --- the Chain protocol -------------------------------------------------------------------

    @property
    def block(self) -> int:
        with self._tx(write=False) as conn:
            return self._block(conn)

    def block_hash(self, block: int) -> str:
        current = self.block
        if not isinstance(block, int) or block < 0 or block > current:
            raise ChainError(f"local chain: no block {block!r} (current block is {current})")
        return local_block_hash(self.netuid, block)

    def sync(self) -> tuple[Metagraph, dict[str, Commitment]]:
        # One read transaction: the metagraph and commitments are from the same snapshot.
        with self._tx(write=False) as conn:
            block = self._block(conn)
            neurons = conn.execute(
                "SELECT uid, hotkey, coldkey, stake, validator, registered_block FROM neurons ORDER BY uid"
            ).fetchall()
            commit_rows = conn.execute(
                "SELECT c.hotkey, c.text, c.block FROM commitments c JOIN neurons n ON n.hotkey = c.hotkey"
            ).fetchall()
            weight_rows = conn.execute("SELECT validator, uid, weight FROM weights").fetchall()
            set_rows = conn.execute("SELECT validator, block FROM weight_sets").fetchall()
        uid_of = {hk: uid for uid, hk, *_ in neurons}
        uids = [int(n[0]) for n in neurons]
        present = set(uids)
        weights: dict[int, dict[int, float]] = {}
        for validator, uid, w in weight_rows:
            if validator in uid_of and uid in present:
                weights.setdefault(uid_of[validator], {})[int(uid)] = float(w)
        last_set = {uid_of[v]: int(b) for v, b in set_rows if v in uid_of}
        stake_of = {int(n[0]): float(n[3]) for n in neurons}
        metagraph = Metagraph(
            block=block,
            block_hash=local_block_hash(self.netuid, block),
            uids=uids,
            hotkeys=[n[1] for n in neurons],
            coldkeys=[n[2] for n in neurons],
            stake=[float(n[3]) for n in neurons],
            incentive=incentive_from_weights(uids, weights, stake_of),
            validator_permit=[bool(n[4]) for n in neurons],
            # the block of the uid's last set_weights, else its registration block
            last_update=[last_set.get(int(n[0]), int(n[5])) for n in neurons],
            weights=dict(sorted(weights.items())),
        )
        commitments = {hk: Commitment(text=text, block=int(b)) for hk, text, b in commit_rows}
        return metagraph, commitments

    def commit(self, signer: str, text: str) -> int:
        """Publish `text` as the commitment of hotkey `signer` (replaces its previous one);
        returns the block it was committed at."""
        if not isinstance(signer, str) or not signer:
            raise ChainError(f"local chain: commit signer must be a hotkey string, got {signer!r}")
        if not isinstance(text, str):
            raise ChainError(f"local chain: commitment text must be a string, got {type(text).__name__}")
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size > constants.COMMITMENT_MAX_BYTES:  # as on chain: one Raw field
            raise ChainError(f"local chain: commitment is {size} bytes of UTF-8, more than the "
                             f"{constants.COMMITMENT_MAX_BYTES} one field holds")
        with self._tx(write=True) as conn:
            if self._uid_of(conn, signer) is None:
                raise ChainError(f"local chain: hotkey {signer} is not registered on netuid {self.netuid}; cannot commit")
            block = self._block(conn)
            conn.execute(
                "INSERT OR REPLACE INTO commitments (hotkey, text, block) VALUES (?, ?, ?)",
                (signer, text, block),
            )
            return block

    def set_weights(self, uids: Sequence[int], weights: Sequence[float], version_key: int) -> None:
        """Set weights as the validator hotkey this chain was opened with."""
        if not self.hotkey:
            raise ChainError("local chain: opened without a validator hotkey; cannot set weights")
        self.set_weights_as(self.hotkey, uids, weights, version_key)

    # --- admin methods (local only) ---------------------------------------------------------

    def set_weights_as(
        self, validator_hotkey: str, uids: Sequence[int], weights: Sequence[float], version_key: int
    ) -> None:
        """Replace `validator_hotkey`'s weight row; weights are normalised to sum 1, zeros dropped."""
        uids, weights = list(uids), list(weights)
        if len(uids) != len(weights):
            raise ChainError(f"set_weights: {len(uids)} uids but {len(weights)} weights; lengths must match")
        if not uids:
            raise ChainError("set_weights: no uids given")
        if any(isinstance(u, bool) or not isinstance(u, int) for u in uids):
            raise ChainError(f"set_weights: uids must be integers, got {uids!r}")
        if len(set(uids)) != len(uids):
            raise ChainError(f"set_weights: duplicate uids in {uids!r}")
        try:
            values = [float(w) for w in weights]
        except (TypeError, ValueError):
            raise ChainError(f"set_weights: weights must be numbers, got {weights!r}") from None
        bad = [(u, w) for u, w in zip(uids, values) if not math.isfinite(w) or w < 0]
        if bad:
            raise ChainError(f"set_weights: weights must be finite and >= 0; bad (uid, weight): {bad[:5]}")
        total = sum(values)
        if total <= 0:
            raise ChainError("set_weights: all weights are zero; nothing to set")
        if isinstance(version_key, bool) or not isinstance(version_key, int):
            raise ChainError(f"set_weights: version_key must be an integer, got {version_key!r}")
        with self._tx(write=True) as conn:
            if self._uid_of(conn, validator_hotkey) is None:
                raise ChainError(
                    f"set_weights: validator hotkey {validator_hotkey} is not registered on netuid {self.netuid}"
                )
            known = {int(r[0]) for r in conn.execute("SELECT uid FROM neurons")}
            unknown = sorted(set(uids) - known)
            if unknown:
                raise ChainError(f"set_weights: uids {unknown} are not registered on netuid {self.netuid}")
            conn.execute("DELETE FROM weights WHERE validator=?", (validator_hotkey,))
            conn.executemany(
                "INSERT INTO weights (validator, uid, weight) VALUES (?, ?, ?)",
                [(validator_hotkey, u, w / total) for u, w in zip(uids, values) if w > 0],
            )
            conn.execute(
                "INSERT OR REPLACE INTO weight_sets (validator, block, version_key) VALUES (?, ?, ?)",
                (validator_hotkey, self._block(conn), version_key),
            )

    def register(self, hotkey: str, coldkey: str = "", stake: float = 0.0, validator: bool = False) -> int:
        """Register `hotkey` at the lowest free uid; an already registered hotkey keeps its uid
        (and its coldkey, stake and flag)."""
        if not isinstance(hotkey, str) or not hotkey.strip():
            raise ChainError(f"register: hotkey must be a non-empty string, got {hotkey!r}")
        stake = float(stake)
        if not math.isfinite(stake) or stake < 0:
            raise ChainError(f"register: stake must be a finite number >= 0, got {stake!r}")
        with self._tx(write=True) as conn:
            existing = self._uid_of(conn, hotkey)
            if existing is not None:
                return existing
            taken = {int(r[0]) for r in conn.execute("SELECT uid FROM neurons")}
            free = next((u for u in range(constants.SUBNET_UIDS) if u not in taken), None)
            if free is None:
                raise ChainError(f"register: netuid {self.netuid} is full ({constants.SUBNET_UIDS} uids)")
            conn.execute(
                "INSERT INTO neurons (uid, hotkey, coldkey, stake, validator, registered_block) VALUES (?,?,?,?,?,?)",
                (free, hotkey, coldkey or "", stake, int(bool(validator)), self._block(conn)),
            )
            return free

    def deregister(self, hotkey: str) -> int:
        """Admin: take `hotkey` off the subnet, as a pruned miner; returns the uid it frees, which
        the next register() reuses. As on chain, the weights other validators gave that uid go
        with it, and the hotkey's commitment stays (stale: sync ignores it)."""
        with self._tx(write=True) as conn:
            uid = self._uid_of(conn, hotkey)
            if uid is None:
                raise ChainError(f"deregister: hotkey {hotkey!r} is not registered")
            conn.execute("DELETE FROM neurons WHERE uid=?", (uid,))
            conn.execute("DELETE FROM weights WHERE uid=?", (uid,))
            return uid

    def advance(self, blocks: int = 1) -> int:
        """Move the chain `blocks` blocks ahead; returns the new current block."""
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
            raise ChainError(f"advance: blocks must be an integer >= 0, got {blocks!r}")
        with self._tx(write=True) as conn:
            conn.execute(
                "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + ? AS TEXT) WHERE key='block_offset'",
                (blocks,),
            )
            return self._block(conn)

    def weights_record(self, validator_hotkey: str) -> Optional[WeightsRecord]:
        """The validator's last set_weights, or None when it never set any."""
        with self._tx(write=False) as conn:
            meta = conn.execute(
                "SELECT block, version_key FROM weight_sets WHERE validator=?", (validator_hotkey,)
            ).fetchone()
            rows = conn.execute(
                "SELECT uid, weight FROM weights WHERE validator=? ORDER BY uid", (validator_hotkey,)
            ).fetchall()
        if meta is None:
            return None
        return WeightsRecord({int(u): float(w) for u, w in rows}, int(meta[0]), int(meta[1]))

    def weights_of(self, validator_hotkey: str) -> dict[int, float]:
        """{uid: normalised weight} as last set by `validator_hotkey` ({} when never set)."""
        record = self.weights_record(validator_hotkey)
        return {} if record is None else record.weights
