"""SubtensorChain: the Chain port on the real network, through bittensor >= 11.

Thin on purpose: the SDK calls live in the adapter, the mapping from SDK records to our
value types lives in pure functions (`metagraph_from_sdk`, `commitments_from_sdk`) that are
tested without a node. `bittensor` is imported lazily (about a second to import).

SDK surface used (bittensor 11.3):
  bittensor.Subtensor(network)                    blocking client (SyncClient), connects lazily
  client.block                                    head block number
  client.at(block=None) -> SyncSnapshot           every read below pinned to one block
  snapshot.subnets.metagraph(netuid)              bittensor.metagraph.Metagraph, commitments included
                                                  (NeuronCommitment.fields: the decoded CommitmentOf fields)
  snapshot.weights.weights(netuid)                {validator uid: {uid: fraction}} in one map query
  snapshot.block_info(block).hash                 the block hash
  client.execute(bittensor.SetWeights(...), wallet)          weights (plain or commit-reveal)
  client.submit_call(bittensor.calls.Commitments.set_commitment(...), wallet, signer="hotkey")

Every SDK call runs under a time box (`timeout_s`, default constants.CHAIN_TIMEOUT_S): a
stalled node must not hang a validator step. Past it the call is left behind on a daemon
thread, ChainError is raised, and a client this adapter built is dropped (the next call
connects again) rather than shared with the stalled call.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence, TypeVar

import constants
from validator.core.chain import ChainError, Commitment, Metagraph

log = logging.getLogger(__name__)

T = TypeVar("T")

# A Raw<N> field of the Commitments pallet holds at most 128 bytes. A commitment is one such
# field, and only the first field of a CommitmentOf is read, as the live validator reads it
# (its timelocked, revealed or further fields are never seen).
RAW_FIELD_MAX_BYTES = constants.COMMITMENT_MAX_BYTES


def metagraph_from_sdk(record: Any, weights: dict[int, dict[int, float]], block_hash: str) -> Metagraph:
    """Our Metagraph from a bittensor.metagraph.Metagraph and the `weights` read's rows."""
    neurons = sorted(record.neurons, key=lambda n: n.uid)
    uids = [int(n.uid) for n in neurons]
    present = set(uids)
    rows = {
        int(v): {int(u): float(w) for u, w in row.items() if int(u) in present}
        for v, row in (weights or {}).items()
        if int(v) in present
    }
    return Metagraph(
        block=int(record.block),
        block_hash=str(block_hash),
        uids=uids,
        hotkeys=[str(n.hotkey) for n in neurons],
        coldkeys=[str(n.coldkey) for n in neurons],
        # total_stake is in the subnet's own units (alpha); `.amount` is that number as a float
        stake=[float(n.total_stake.amount) for n in neurons],
        incentive=[float(n.incentive) for n in neurons],
        validator_permit=[bool(n.validator_permit) for n in neurons],
        last_update=[int(n.last_update) for n in neurons],
        weights={v: row for v, row in sorted(rows.items()) if row},
    )


def commitments_from_sdk(record: Any) -> dict[str, Commitment]:
    """{hotkey: Commitment} for the registered hotkeys whose commitment the live validator
    can read: the text of the first field of their CommitmentOf (first_field_text).

    A sealed (timelocked) commitment, a revealed one (kept by the SDK without its storage
    entry) and fields after the first are not seen; commitments of deregistered hotkeys
    (`record.unregistered_commitments`) are ignored.
    """
    out: dict[str, Commitment] = {}
    for neuron in record.neurons:
        commitment = (record.commitments or {}).get(neuron.uid) or neuron.commitment
        if commitment is None:
            continue
        text = first_field_text(getattr(commitment, "fields", None) or [])
        if not text:
            continue
        out[str(neuron.hotkey)] = Commitment(text=text, block=int(commitment.block))
    return out


def first_field_text(fields: Sequence[Any]) -> str | None:
    """The UTF-8 text of fields[0] when it is a Raw<N> field (the live validator's
    `fields[0][0]`, decoded strictly), else None. A field arrives from the transport as a
    one-key dict ({"Raw64": "0x..."}), possibly wrapped in a 1-tuple by older decoders; the
    bytes as 0x-hex, a list of ints or bytes."""
    if not fields:
        return None
    entry = fields[0]
    if isinstance(entry, (list, tuple)) and len(entry) == 1:
        entry = entry[0]
    if not isinstance(entry, dict) or len(entry) != 1:
        return None
    (variant, value), = entry.items()
    if not isinstance(variant, str) or not variant.startswith("Raw"):
        return None
    if isinstance(value, (list, tuple)) and len(value) == 1 and not isinstance(value[0], int):
        value = value[0]  # ((bytes,),) as the live validator's SDK returned it
    try:
        if isinstance(value, str):
            data = bytes.fromhex(value.removeprefix("0x"))
        elif isinstance(value, (list, tuple)):
            data = bytes(int(b) for b in value)
        elif isinstance(value, (bytes, bytearray)):
            data = bytes(value)
        else:
            return None
        return data.decode("utf-8")
    except (ValueError, TypeError):  # odd hex, ints out of range, not UTF-8 (UnicodeDecodeError)
        return None


def commitment_info(text: str) -> dict:
    """The pallet's CommitmentInfo for a commitment: exactly one Raw<len> field, at most
    RAW_FIELD_MAX_BYTES bytes of UTF-8 (a longer text is refused: live validators read only
    the first field)."""
    data = text.encode("utf-8")
    if not data:
        raise ChainError("commit: empty commitment text")
    if len(data) > RAW_FIELD_MAX_BYTES:
        raise ChainError(f"commit: commitment is {len(data)} bytes of UTF-8, more than the {RAW_FIELD_MAX_BYTES} "
                         "of one Raw field (validators read only the first field)")
    return {"fields": [{f"Raw{len(data)}": data}]}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class SubtensorChain:
    """The subnet on a subtensor network ("finney", "test", "local" or a ws(s):// URL).

    `wallet` (a bittensor.Wallet) is the validator identity used by set_weights. `client`
    lets a caller inject an already built bittensor client (or a test double).
    """

    def __init__(
        self,
        network: str = "finney",
        netuid: int = constants.NETUID,
        wallet: Any = None,
        *,
        client: Any = None,
        timeout_s: float = constants.CHAIN_TIMEOUT_S,
    ) -> None:
        self.network = network
        self.netuid = int(netuid)
        self.wallet = wallet
        self.timeout_s = float(timeout_s)
        self._client = client
        self._owns_client = client is None

    def _timed(self, what: str, call: Callable[[], T]) -> T:
        """call() within timeout_s; its own exception re-raised, ChainError when it stalls."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = call()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name=f"subtensor {what}", daemon=True).start()
        if not done.wait(self.timeout_s):
            if self._owns_client:
                self._client = None  # a connection with a call stuck in it is not reused
            raise ChainError(f"subtensor {self.network}: {what} timed out after {self.timeout_s:g} s "
                             "(the node does not answer)")
        if "error" in box:
            raise box["error"]
        return box["value"]

    @property
    def hotkey(self) -> str | None:
        """The validator's own hotkey (ss58), read from the wallet's public key file (no
        password); None without a wallet or when the file cannot be read."""
        if self.wallet is None:
            return None
        try:
            return str(self.wallet.hotkeypub.ss58_address)
        except Exception as e:  # noqa: BLE001 - bittensor-wallet raises its own KeyFileError types
            log.warning("cannot read the wallet's hotkey: %s", e)
            return None

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import bittensor  # lazy: slow to import, and only needed on the real network

                self._client = bittensor.Subtensor(self.network)
            except Exception as exc:  # bad network name, missing SDK pieces, ...
                raise ChainError(f"subtensor {self.network}: cannot create a client ({_describe(exc)})") from exc
        return self._client

    @property
    def block(self) -> int:
        try:
            return int(self._timed("block", lambda: self.client.block))
        except ChainError:
            raise
        except Exception as exc:
            raise ChainError(f"subtensor {self.network}: cannot read the current block ({_describe(exc)})") from exc

    def block_hash(self, block: int) -> str:
        try:
            info = self._timed(f"block {block}", lambda: self.client.block_info(block))
        except ChainError:
            raise
        except Exception as exc:
            raise ChainError(f"subtensor {self.network}: cannot read block {block} ({_describe(exc)})") from exc
        if info is None or not info.hash:
            raise ChainError(f"subtensor {self.network}: no block {block}")
        return str(info.hash)

    def sync(self) -> tuple[Metagraph, dict[str, Commitment]]:
        # Three reads pinned to one block: the metagraph (with every commitment, one runtime
        # call plus two map reads), the weight matrix (one map read), the block hash.
        def read() -> tuple[Any, Any, Any]:
            view = self.client.at()
            record = view.subnets.metagraph(self.netuid)
            if record is None:
                raise ChainError(f"subtensor {self.network}: subnet {self.netuid} does not exist")
            return record, view.weights.weights(self.netuid), view.block_info(view.block)

        try:
            record, weights, info = self._timed(f"sync of netuid {self.netuid}", read)
        except ChainError:
            raise
        except Exception as exc:
            raise ChainError(f"subtensor {self.network}: sync of netuid {self.netuid} failed ({_describe(exc)})") from exc
        block_hash = info.hash if info is not None and info.hash else ""
        return metagraph_from_sdk(record, weights, block_hash), commitments_from_sdk(record)

    def commit(self, signer: Any, text: str) -> None:
        """Publish `text` as the commitment of the wallet `signer`'s hotkey."""
        if signer is None:
            raise ChainError("commit: a bittensor Wallet is needed to sign the commitment")
        info = commitment_info(text)
        try:
            import bittensor

            call = bittensor.calls.Commitments.set_commitment(netuid=self.netuid, info=info)
            result = self._timed("commit", lambda: self.client.submit_call(call, signer, signer="hotkey"))
            result.raise_for_failure()
        except ChainError:
            raise
        except Exception as exc:
            raise ChainError(f"subtensor {self.network}: commit on netuid {self.netuid} failed ({_describe(exc)})") from exc

    def set_weights(self, uids: Sequence[int], weights: Sequence[float], version_key: int) -> None:
        if self.wallet is None:
            raise ChainError("set_weights: SubtensorChain was opened without a wallet")
        uids, weights = [int(u) for u in uids], [float(w) for w in weights]
        if len(uids) != len(weights):
            raise ChainError(f"set_weights: {len(uids)} uids but {len(weights)} weights; lengths must match")
        try:
            import bittensor

            intent = bittensor.SetWeights(
                netuid=self.netuid, uids=uids, weights=weights, version_key=int(version_key)
            )
            result = self._timed("set_weights", lambda: self.client.execute(intent, self.wallet))
            result.raise_for_failure()
        except ChainError:
            raise
        except Exception as exc:
            raise ChainError(
                f"subtensor {self.network}: set_weights on netuid {self.netuid} failed ({_describe(exc)})"
            ) from exc

    def close(self) -> None:
        """Close the connection (optional; the SDK also cleans up at exit)."""
        if self._client is not None and hasattr(self._client, "close"):
            try:
                self._timed("close", self._client.close)
            except ChainError:
                raise
            except Exception as exc:
                raise ChainError(f"subtensor {self.network}: close failed ({_describe(exc)})") from exc

