"""SubtensorChain without a node: the SDK's own record types built locally, and the real SDK
read path driven through an in-memory Substrate (bittensor's documented injection seam)."""
import subprocess
import sys
from pathlib import Path

import pytest

bt = pytest.importorskip("bittensor")
from bittensor.balance import Balance  # noqa: E402
from bittensor.metagraph import Metagraph as SdkMetagraph  # noqa: E402
from bittensor.metagraph import MetagraphNeuron, NeuronCommitment  # noqa: E402

from validator.core.chain import ChainError, Commitment  # noqa: E402
from validator.ports import Chain
from validator.adapters.chain.subtensor import (  # noqa: E402
    RAW_FIELD_MAX_BYTES,
    SubtensorChain,
    commitment_info,
    commitments_from_sdk,
    first_field_text,
    metagraph_from_sdk,
)

NETUID = 29
RAO = 10**9
U16 = 65535
COMMIT_A = "alice:model-a:" + "a" * 40 + ":" + "A" * 43 + "=:c00"
COMMIT_B = "bob:model-b:" + "b" * 40 + ":" + "B" * 43 + "=:c01"
# longer than one 128-byte Raw field: refused when committing; split by other tools, only
# its first field is read
COMMIT_LONG = "n" * 60 + ":" + "m" * 60 + ":" + "b" * 40 + ":" + "B" * 43 + "=:c01"
TIMELOCK = {"TimelockEncrypted": {"encrypted": "0x00", "reveal_round": 123}}


def raw(text: str) -> dict:
    """One Raw field as the transport decodes it."""
    data = text.encode()
    return {f"Raw{len(data)}": "0x" + data.hex()}


def sdk_commitment(hotkey, uid, block, data="", encrypted=False, revealed=(), fields=None):
    if fields is None:
        fields = ([TIMELOCK] if encrypted else []) + ([raw(data)] if data else [])
    return NeuronCommitment(
        hotkey=hotkey, netuid=NETUID, uid=uid, block=block, queried_block=1000,
        deposit=Balance.from_rao(0), data=data, encrypted=encrypted,
        reveal_round=123 if encrypted else None, revealed=list(revealed), fields=fields,
    )


def sdk_neuron(uid, hotkey, stake, incentive, permit, last_update, commitment=None):
    return MetagraphNeuron(
        uid=uid, hotkey=hotkey, coldkey=f"cold-{hotkey}", active=True, validator_permit=permit,
        last_update=last_update, block_at_registration=10, rank=0.0, trust=0.0, consensus=0.0,
        incentive=incentive, dividends=0.0, pruning_score=0.0, emission=Balance.from_rao(0, NETUID),
        alpha_stake=Balance.from_rao(stake, NETUID), tao_stake=Balance.from_rao(0),
        total_stake=Balance.from_rao(stake, NETUID), axon=None, identity=None, commitment=commitment,
    )


def sdk_metagraph(neurons, unregistered=None):
    return SdkMetagraph(
        netuid=NETUID, mechid=0, name="coldint", symbol="x", block=1000, tempo=360, last_step=900,
        blocks_since_last_step=100, owner_hotkey="owner", owner_coldkey="ownercold",
        network_registered_at=1, num_uids=len(neurons), max_uids=256, price=None, moving_price=None,
        identity=None, neurons=neurons,
        commitments={n.uid: n.commitment for n in neurons if n.commitment is not None},
        unregistered_commitments=unregistered or {}, raw={},
    )


def test_mapping_from_sdk_dataclasses():
    plain = sdk_commitment("hk1", 1, 500, data=COMMIT_A)
    sealed = sdk_commitment("hk2", 2, 600, encrypted=True)
    revealed = sdk_commitment("hk3", 3, 700, encrypted=True, revealed=[(710, COMMIT_B)])
    record = sdk_metagraph(
        [
            sdk_neuron(0, "val", 250 * RAO, 0.0, True, 990),
            sdk_neuron(1, "hk1", 0, 0.6, False, 10, plain),
            sdk_neuron(2, "hk2", 0, 0.4, False, 10, sealed),
            sdk_neuron(3, "hk3", 3 * RAO // 2, 0.0, False, 12, revealed),
        ],
        unregistered={"gone": sdk_commitment("gone", None, 400, data="old")},
    )
    weights = {0: {1: 0.6, 2: 0.4, 9: 0.0}, 7: {1: 1.0}}  # uid 9 / validator 7 not in the metagraph
    mg = metagraph_from_sdk(record, weights, "0xhash")
    assert (mg.block, mg.block_hash) == (1000, "0xhash")
    assert mg.uids == [0, 1, 2, 3]
    assert mg.hotkeys == ["val", "hk1", "hk2", "hk3"]
    assert mg.coldkeys == ["cold-val", "cold-hk1", "cold-hk2", "cold-hk3"]
    assert mg.stake == [250.0, 0.0, 0.0, 1.5]
    assert mg.incentive == [0.0, 0.6, 0.4, 0.0]
    assert mg.validator_permit == [True, False, False, False]
    assert mg.last_update == [990, 10, 10, 12]
    assert mg.weights == {0: {1: 0.6, 2: 0.4}}

    commitments = commitments_from_sdk(record)
    # only the first field is read, as live: a sealed or a revealed (timelocked) commitment is
    # not seen; deregistered hotkeys are not part of the subnet
    assert commitments == {"hk1": Commitment(COMMIT_A, 500)}


def test_only_the_first_field_of_a_commitment_is_read():
    halves = [COMMIT_LONG.encode()[:128], COMMIT_LONG.encode()[128:]]
    split = [{f"Raw{len(h)}": "0x" + h.hex()} for h in halves]
    assert first_field_text(split) == halves[0].decode()  # the rest is not seen
    assert first_field_text([raw(COMMIT_A), raw(COMMIT_B)]) == COMMIT_A
    assert first_field_text([TIMELOCK, raw(COMMIT_A)]) is None  # first field sealed: nothing readable
    assert first_field_text([{"Sha256": "0x" + "00" * 32}]) is None
    assert first_field_text(["ResetBondsFlag"]) is None
    assert first_field_text([]) is None
    assert first_field_text([{"Raw2": "0xc328"}]) is None  # not UTF-8: the live decode fails
    # other encodings of the same bytes: a list of ints, bytes, the older ((bytes,),) wrapping
    data = COMMIT_A.encode()
    assert first_field_text([{f"Raw{len(data)}": list(data)}]) == COMMIT_A
    assert first_field_text([({f"Raw{len(data)}": (data,)},)]) == COMMIT_A


def test_commitment_info_is_one_raw_field_of_at_most_128_bytes():
    assert RAW_FIELD_MAX_BYTES == 128
    assert commitment_info(COMMIT_A) == {"fields": [{f"Raw{len(COMMIT_A)}": COMMIT_A.encode()}]}
    fits = "x" * 126 + "é"  # 127 characters, 128 bytes
    assert commitment_info(fits) == {"fields": [{"Raw128": fits.encode()}]}
    with pytest.raises(ChainError, match="129 bytes"):
        commitment_info(fits + "x")
    with pytest.raises(ChainError, match="more than the 128"):
        commitment_info(COMMIT_LONG)
    with pytest.raises(ChainError, match="empty"):
        commitment_info("")


# --- the real SDK read path over an in-memory Substrate -----------------------------------------


class FakeSubstrate:
    """In-memory bittensor Substrate: answers the reads SubtensorChain.sync makes."""

    def __init__(self, block=1000, graph=None, commitments=(), weights=(), fail=None):
        self.token_symbols = {}
        self.block = block
        self.graph = graph
        self.commitments = list(commitments)
        self.weights = list(weights)
        self.fail = fail
        self.calls = []

    def balance(self, rao, netuid=0):
        return Balance.from_rao(rao, netuid)

    async def connect(self):
        pass

    async def close(self):
        pass

    async def block_number(self):
        return self.block

    async def block_hash(self, block=None):
        return f"0xhash{self.block if block is None else block}"

    async def get_block(self, block_number=None, block_hash=None):
        number = self.block if block_number is None else block_number
        timestamp = {"call": {"call_module": "Timestamp", "call_args": [{"value": 1_700_000_000_000}]}}
        return {"header": {"number": number, "hash": f"0xhash{number}"}, "extrinsics": [timestamp]}

    async def runtime_call(self, api, method, params, block_hash=None):
        self.calls.append(("runtime", api, method, tuple(params), block_hash))
        if self.fail:
            raise self.fail
        return self.graph

    async def query_map(self, module, storage_function, params=None, block_hash=None):
        self.calls.append(("query_map", module, storage_function, tuple(params or ()), block_hash))
        if (module, storage_function) == ("Commitments", "CommitmentOf"):
            return self.commitments
        if (module, storage_function) == ("SubtensorModule", "Weights"):
            return self.weights
        return []

    async def query(self, module, storage_function, params=None, block_hash=None):
        self.calls.append(("query", module, storage_function, tuple(params or ()), block_hash))
        return None


def chain_record(block, *fields):
    """A CommitmentOf value as the transport decodes it (Raw fields as 0x-hex)."""
    return {"block": block, "deposit": 0, "info": {"fields": list(fields)}}


def runtime_graph(block):
    return {
        "block": block, "tempo": 360, "last_step": 900, "blocks_since_last_step": 100,
        "owner_hotkey": "owner", "owner_coldkey": "ownercold", "network_registered_at": 1,
        "name": list(b"coldint"), "symbol": list(b"x"),
        "hotkeys": ["val", "hk1", "hk2"], "coldkeys": ["cv", "c1", "c2"],
        "active": [True] * 3, "validator_permit": [True, False, False],
        "last_update": [995, 20, 30], "block_at_registration": [1, 2, 3],
        "incentives": [0, U16 // 4 * 3, U16 // 4],
        "total_stake": [1000 * RAO, 0, 2 * RAO], "alpha_stake": [1000 * RAO, 0, 2 * RAO],
        "tao_stake": [0, 0, 0], "emission": [0, 0, 0],
    }


@pytest.fixture
def sdk_client(tmp_path, monkeypatch):
    # keep the SDK's token-symbol cache out of the home directory
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "symbols.json"))
    made = []

    def make(substrate):
        client = bt.Subtensor("finney", substrate=substrate)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def test_sync_through_the_sdk(sdk_client):
    substrate = FakeSubstrate(
        block=1000,
        graph=runtime_graph(1000),
        commitments=[("hk1", chain_record(500, raw(COMMIT_A))), ("hk2", chain_record(600, raw(COMMIT_B), raw("more"))),
                     ("deregistered", chain_record(100, raw("old:stuff")))],
        weights=[(0, [(1, U16), (2, U16 // 3)])],
    )
    chain = SubtensorChain(netuid=NETUID, client=sdk_client(substrate))
    assert isinstance(chain, Chain)
    assert chain.block == 1000  # connects (the SDK reads token symbols on connect)
    substrate.calls.clear()
    mg, commitments = chain.sync()
    assert (mg.block, mg.block_hash) == (1000, "0xhash1000")
    assert mg.hotkeys == ["val", "hk1", "hk2"] and mg.uids == [0, 1, 2]
    assert mg.stake == [1000.0, 0.0, 2.0]
    assert mg.incentive == pytest.approx([0.0, (U16 // 4 * 3) / U16, (U16 // 4) / U16])
    assert mg.validator_permit == [True, False, False]
    assert mg.last_update == [995, 20, 30]
    total = U16 + U16 // 3
    assert mg.weights == {0: pytest.approx({1: U16 / total, 2: (U16 // 3) / total})}
    assert commitments == {"hk1": Commitment(COMMIT_A, 500), "hk2": Commitment(COMMIT_B, 600)}  # first fields
    # one metagraph runtime call and whole-map reads, all pinned to one block; no per-hotkey query
    kinds = [(c[0], c[2]) for c in substrate.calls]
    assert kinds.count(("runtime", "get_metagraph")) == 1
    assert not [c for c in substrate.calls if c[0] == "query"]
    assert {c[-1] for c in substrate.calls} == {"0xhash1000"}
    assert chain.block_hash(990) == "0xhash990"


def test_sync_missing_subnet_and_sdk_failure_are_chain_errors(sdk_client):
    chain = SubtensorChain(netuid=NETUID, client=sdk_client(FakeSubstrate(graph=None)))
    with pytest.raises(ChainError, match="subnet 29 does not exist"):
        chain.sync()
    failing = FakeSubstrate(graph=runtime_graph(1000), fail=bt.ChainError("runtime api exploded"))
    chain = SubtensorChain(netuid=NETUID, client=sdk_client(failing))
    with pytest.raises(ChainError, match="runtime api exploded"):
        chain.sync()


# --- writes: the intent / call handed to the SDK -------------------------------------------------


class RecordingClient:
    def __init__(self, result=None, raises=None):
        self.result = result if result is not None else bt.ExtrinsicResult(success=True)
        self.raises = raises
        self.executed = []
        self.submitted = []

    def execute(self, intent, wallet, **kwargs):
        self.executed.append((intent, wallet, kwargs))
        if self.raises:
            raise self.raises
        return self.result

    def submit_call(self, call, wallet, **kwargs):
        self.submitted.append((call, wallet, kwargs))
        if self.raises:
            raise self.raises
        return self.result


def test_set_weights_uses_set_weights_intent_with_version_key():
    client = RecordingClient()
    wallet = object()
    SubtensorChain(netuid=NETUID, wallet=wallet, client=client).set_weights([3, 1], [0.25, 0.75], 4000)
    (intent, used_wallet, _), = client.executed
    assert isinstance(intent, bt.SetWeights)
    assert used_wallet is wallet
    assert (intent.netuid, intent.version_key) == (NETUID, 4000)
    assert dict(zip(intent.uids, intent.weights)) == {3: 0.25, 1: 0.75}


def test_set_weights_failures_become_chain_errors():
    failed = bt.ExtrinsicResult(success=False, message="rate limited", error=bt.ChainError("SettingWeightsTooFast"))
    with pytest.raises(ChainError, match="SettingWeightsTooFast"):
        SubtensorChain(wallet=object(), client=RecordingClient(result=failed)).set_weights([1], [1.0], 1)
    with pytest.raises(ChainError, match="not registered"):
        SubtensorChain(wallet=object(), client=RecordingClient(raises=bt.ChainError("hotkey not registered"))).set_weights([1], [1.0], 1)
    with pytest.raises(ChainError, match="without a wallet"):
        SubtensorChain(client=RecordingClient()).set_weights([1], [1.0], 1)
    with pytest.raises(ChainError, match="lengths must match"):
        SubtensorChain(wallet=object(), client=RecordingClient()).set_weights([1, 2], [1.0], 1)


def test_commit_submits_set_commitment_signed_by_hotkey():
    client = RecordingClient()
    wallet = object()
    SubtensorChain(netuid=NETUID, client=client).commit(wallet, COMMIT_A)
    (call, used_wallet, kwargs), = client.submitted
    assert (call.module, call.function) == ("Commitments", "set_commitment")
    assert call.params["netuid"] == NETUID
    assert call.params["info"] == {"fields": [{f"Raw{len(COMMIT_A)}": COMMIT_A.encode()}]}
    assert used_wallet is wallet and kwargs == {"signer": "hotkey"}
    with pytest.raises(ChainError, match="more than the 128"):  # refused before anything is sent
        SubtensorChain(netuid=NETUID, client=client).commit(wallet, COMMIT_LONG)
    assert len(client.submitted) == 1

    failed = bt.ExtrinsicResult(success=False, error=bt.ChainError("SpaceLimitExceeded"))
    with pytest.raises(ChainError, match="SpaceLimitExceeded"):
        SubtensorChain(client=RecordingClient(result=failed)).commit(wallet, COMMIT_A)
    with pytest.raises(ChainError, match="Wallet"):
        SubtensorChain(client=RecordingClient()).commit(None, COMMIT_A)


def test_importing_the_adapter_does_not_import_bittensor():
    root = Path(__file__).resolve().parent.parent
    code = "import sys, validator.adapters.chain.subtensor; assert 'bittensor' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_the_validator_hotkey_is_read_from_the_wallets_public_key(tmp_path, caplog):
    wallet = bt.Wallet(name="val", hotkey="hk", path=str(tmp_path))
    wallet.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    assert SubtensorChain(netuid=NETUID, wallet=wallet).hotkey == wallet.hotkey.ss58_address
    assert SubtensorChain(netuid=NETUID).hotkey is None  # read-only use, no wallet
    missing = bt.Wallet(name="nobody", hotkey="none", path=str(tmp_path))
    assert SubtensorChain(netuid=NETUID, wallet=missing).hotkey is None
    assert "cannot read the wallet's hotkey" in caplog.text


class StallingClient:
    """A node that accepts the connection and never answers."""

    def __init__(self):
        import threading

        self.release = threading.Event()
        self.calls = []

    def _stall(self, what):
        self.calls.append(what)
        self.release.wait(30)
        raise AssertionError("a stalled call was not left behind")

    @property
    def block(self):
        return self._stall("block")

    def at(self, block=None):
        return self._stall("at")

    def block_info(self, block):
        return self._stall("block_info")

    def execute(self, intent, wallet):
        return self._stall("execute")

    def submit_call(self, call, wallet, signer=None):
        return self._stall("submit_call")


def test_a_stalled_node_is_a_chain_error_after_the_timeout_not_a_hang():
    import time

    import constants

    assert SubtensorChain().timeout_s == constants.CHAIN_TIMEOUT_S  # the constant is what applies by default
    client = StallingClient()
    chain = SubtensorChain(netuid=NETUID, wallet=object(), client=client, timeout_s=0.2)
    try:
        for call, what in ((chain.sync, "sync of netuid"), (lambda: chain.block, "block timed out"),
                           (lambda: chain.block_hash(5), "block 5 timed out"),
                           (lambda: chain.set_weights([1], [1.0], 1), "set_weights timed out"),
                           (lambda: chain.commit(object(), COMMIT_A), "commit timed out")):
            start = time.monotonic()
            with pytest.raises(ChainError, match=f"{what}.* after 0.2 s"):
                call()
            assert time.monotonic() - start < 5
        assert client.calls == ["at", "block", "block_info", "execute", "submit_call"]
        assert chain._client is client  # an injected client is kept (its owner closes it)
    finally:
        client.release.set()
