"""Scoring on a real local Ray cluster (ray.cluster_utils.Cluster on 127.0.0.1, CPU only): a
head node with no scoring resource and two nodes with one stand-in "GPU" each. Models come
from olah on loopback, as a validator's would from the hub."""
from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (pip install -e '.[ray]')")

from ray.cluster_utils import Cluster  # noqa: E402

from tests.factories import make_model, make_tokenizer  # noqa: E402
from tests.olah_fixture import publish  # noqa: E402
from validator.adapters import hub  # noqa: E402
from validator.adapters.chain.local import LocalChain  # noqa: E402
from validator.adapters.leaderboard import competition_rows  # noqa: E402
from validator.core.competitions import parse_competitions  # noqa: E402
from validator.core.identity import ModelId, secure_hash  # noqa: E402
from validator.scoring.dispatch import make_score_fn  # noqa: E402
from validator.scoring.ray_scorer import RayScorer  # noqa: E402
from validator.step.validator import Settings, Validator  # noqa: E402

RES = "coldint_test_gpu"  # stands in for "GPU" on a CPU-only cluster
VOCAB = 300


class Texts:
    def sample(self, seed: int, n: int):
        return [(f"s{i}", "the model of the chain and its river " * (1 + i % 4)) for i in range(min(n, 10))]


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                           # a busy 2-core box misses beats: too low a threshold marks live nodes dead
                           "health_check_failure_threshold": 10}})
    nodes = [c.add_node(num_cpus=1, resources={RES: 1}) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def field(tmp_path_factory, olah_mirror, olah_hub):
    """Four tiny llamas on the loopback hub (one with a vocabulary too small for the
    competition's tokenizer: it fails), committed on a LocalChain; the driver's store holds them."""
    root = tmp_path_factory.mktemp("rayfield")
    tok = root / "tokenizer"
    make_tokenizer(tok, vocab_size=VOCAB)
    comps = parse_competitions({"c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 10**9,
                                        "model_size": 10**9, "dataset": "x", "tokenizer": str(tok)}})
    chain = LocalChain(root / "chain.sqlite", hotkey="5Val", clock=lambda: 0.0)
    chain.register("5Val", stake=10.0, validator=True)
    ids = {}
    for i in range(4):
        hk = f"5RayMiner{i}"
        model = make_model(root / f"m{i}", "llama", vocab_size=100 if i == 3 else VOCAB, seed=i, layers=1 + i % 2)
        commit = publish(olah_mirror, "ray", f"m{i}", model)
        digest = secure_hash(hub.model_dir_hash(model), hk)
        ids[hk] = ModelId("ray", f"m{i}", commit, digest, "c00")
        chain.register(hk)
        chain.commit(hk, ids[hk].to_commitment())
        chain.advance(10)
    store = root / "driver_store"
    snaps = {hk: hub.ensure_model(mid, hk, comps["c00"], store, endpoint=olah_hub.endpoint, progress=False)
             for hk, mid in ids.items()}
    return {"root": root, "tok": tok, "comps": comps, "chain": chain, "ids": ids, "snaps": snaps,
            "endpoint": olah_hub.endpoint, "store": store}


def _ray_scorer(field, tmp: Path) -> RayScorer:
    local = make_score_fn("cpu", tmp / "local_tok", endpoint=field["endpoint"], warm=False)
    return RayScorer("auto", local, tmp / "nodes", tmp / "node_cache", field["endpoint"], resource=RES)


def _jobs(field, samples):
    comp = field["comps"]["c00"]
    return [(field["snaps"][hk].path, samples, comp, samples) for hk in sorted(field["snaps"])]


def _step(field, state: Path, score) -> dict:
    def fetch(mid, hotkey, comp, deadline=None):
        return hub.ensure_model(mid, hotkey, comp, field["store"], endpoint=field["endpoint"], progress=False)

    v = Validator(field["chain"], lambda: field["comps"], fetch, score, lambda name, **kw: Texts(),
                  Settings(state_dir=state, eval_samples=10, offline=True), hotkey="5Val")
    return v.step()


def test_a_step_on_the_cluster_gives_the_single_machine_losses_and_weights(cluster, field, tmp_path):
    local = make_score_fn("cpu", tmp_path / "one_tok", endpoint=field["endpoint"])  # forked workers, on this machine
    try:
        one = _step(field, tmp_path / "one", local)
    finally:
        local.close()
    scorer = _ray_scorer(field, tmp_path)
    try:
        two = _step(field, tmp_path / "two", scorer)
    finally:
        scorer.close()
    rows_one = {m["uid"]: m for m in one["competitions"]["c00"]["models"]}
    rows_two = {m["uid"]: m for m in two["competitions"]["c00"]["models"]}
    assert set(rows_one) == set(rows_two) and len(rows_one) == 4
    for uid, r in rows_one.items():
        assert rows_two[uid]["status"] == r["status"], (r, rows_two[uid])
        assert rows_two[uid].get("losses_per_token") == r.get("losses_per_token")
        assert rows_two[uid]["scored_on"] and rows_one[uid]["scored_on"] is None  # where, on the cluster
    table = "\n".join(" ".join(row) for row in competition_rows(two["competitions"]["c00"], two["weights"]))
    assert " on " in table and "scored on" in table  # the leaderboard says where each model was scored
    failed = [r for r in rows_two.values() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["reason"].startswith("vocab")  # the bad model fails alone
    assert one["weights"] == two["weights"]


def test_placement_reuse_and_no_torch_in_actors(cluster, field, tmp_path):
    scorer = _ray_scorer(field, tmp_path)
    samples = Texts().sample(0, 6)
    try:
        first = scorer.score_many(_jobs(field, samples))
        where = {r.placement for r in first}
        assert all(r.placement for r in first) and len(where) == 2  # both nodes worked
        failed = [r for r in first if r.failure]
        assert len(failed) == 1 and failed[0].failure.startswith("vocab")
        infos = ray.get([a.info.remote() for a in scorer.actors])
        jobs_before = sum(a["jobs"] for a in infos)
        assert jobs_before == 4  # the failing model ran once, never again elsewhere
        # the step's ids were made once on the driver and shipped: each node merged all 6 samples' entries
        assert [d["tokens_in"] for d in infos] == [6, 6]
        second = scorer.score_many(_jobs(field, samples))
        assert [r.placement for r in second] == [r.placement for r in first]  # each on the node holding it
        assert all(scorer.reused.values()) and len(scorer.reused) == 4  # no second download
        assert [r.losses for r in second] == [r.losses for r in first]
        assert [d["tokens_in"] for d in ray.get([a.info.remote() for a in scorer.actors])] == [6, 6]  # nothing new
        assert not any(ray.get([a.imported.remote("torch") for a in scorer.actors]))
    finally:
        scorer.close()


def test_a_node_lost_mid_step_loses_no_model(cluster, field, tmp_path):
    c, nodes = cluster
    reference = make_score_fn("cpu", tmp_path / "ref_tok", endpoint=field["endpoint"])  # forked workers, no Ray
    samples = Texts().sample(0, 8)
    try:
        want = [r.losses for r in reference.score_many(_jobs(field, samples))]
    finally:
        reference.close()
    scorer = _ray_scorer(field, tmp_path)
    killed = []

    def on_result(i, res):
        if not killed:  # one model is done: the other node is still scoring one, take it away
            busy = next(n for n in nodes if n.node_id[:8] != res.placement.split()[0])
            c.remove_node(busy)
            killed.append(busy)

    try:
        got = scorer.score_many(_jobs(field, samples), on_result=on_result)
    finally:
        scorer.close()
        if killed:
            nodes.remove(killed[0])
            nodes.append(c.add_node(num_cpus=1, resources={RES: 1}))
            c.wait_for_nodes()
    assert killed and all(r is not None for r in got)
    assert [r.losses for r in got] == want  # the lost node's job ran again on the other one
    lost = killed[0].node_id[:8]
    assert sum(r.placement.split()[0] != lost for r in got) >= 3  # the survivor did the rest
