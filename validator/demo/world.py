"""The demo's world: a complete local field, published and committed (`coldint-validator demo`
builds it, then runs validator steps on it: validator.cli.demo).

Nothing comes from the network: text from the standard library's docstrings, a tokenizer
trained on it, tiny Llama models trained for different numbers of steps (so their losses
really differ), published to a local git mirror that olah serves on 127.0.0.1, committed on
a LocalChain at different blocks, one more candidate in a generated benchmark.json.
"""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console


VALIDATOR_HOTKEY = "5DemoValidatorHotkey000000000000000000000000000v"
MINER_STEPS = (0, 20, 60, 150)  # one miner per training length, committed oldest first
CANDIDATE_STEPS = 100  # the benchmark.json candidate
BLOCKS_BETWEEN_COMMITS = 40


def miner_hotkey(i: int) -> str:
    # distinct in the first characters: the leaderboard shows 8
    return f"5M{i:02d}DemoMinerHotkey".ljust(48, "0")


def demo_competitions(corpus: Path, tokenizer: Path) -> dict:
    return {
        "_comment": "the demo's only competition: tiny Llama models on held-out stdlib docstrings",
        "c00": {
            "reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 5_000_000,
            "model_size": 100 * 1024**2, "dataset": str(corpus / "eval.jsonl"), "tokenizer": str(tokenizer),
            "free_tokenizer": False, "max_sequence_len": 1024,
        },
    }


def build_demo(root: Path, console: Console, endpoint: str, mirror: Path) -> dict:
    """Field, competitions.json, chain with commitments, benchmark.json under `root`."""
    from validator.adapters.chain.local import LocalChain
    from validator.adapters.competitions_source import load_competitions
    from validator.demo.field import build_field
    from validator.publish import publish_and_commit

    console.print("[bold]building the field[/bold]: corpus, tokenizer, models "
                  f"(steps {', '.join(map(str, MINER_STEPS + (CANDIDATE_STEPS,)))})")
    field = build_field(root / "field", steps=MINER_STEPS + (CANDIDATE_STEPS,))
    comps_path = root / "competitions.json"
    comps_path.write_text(json.dumps(demo_competitions(field["corpus"], field["tokenizer"]), indent=1))
    comp = load_competitions(str(comps_path))["c00"]

    chain_path = root / "chain.sqlite"
    chain_path.unlink(missing_ok=True)  # a fresh ledger each build: commitments are re-made below
    chain = LocalChain(chain_path, hotkey=VALIDATOR_HOTKEY)
    chain.register(VALIDATOR_HOTKEY, coldkey="demo-owner", stake=10_000.0, validator=True)
    for i, steps in enumerate(MINER_STEPS):
        hk = miner_hotkey(i)
        chain.register(hk, coldkey=f"demo-miner-{i}", stake=1.0)
        mid = publish_and_commit(field["models"][steps], comp, hub_spec=f"local:{mirror}", chain=chain, signer=hk,
                                 hotkey=hk, repo=f"demo/llama-{steps}-steps", endpoint=endpoint,
                                 readback_tries=5, readback_wait_s=0.2, log=lambda m: None)
        console.print(f"  miner {i}: {steps:>3} training steps -> committed {mid.to_commitment()[:60]}... "
                      f"at block {chain.block}")
        chain.advance(BLOCKS_BETWEEN_COMMITS)
    bench_path = root / "benchmark.json"
    bench_path.write_text(json.dumps({"candidate": {
        "competition": "c00", "path": str(field["models"][CANDIDATE_STEPS]),
        "label": f"candidate ({CANDIDATE_STEPS} steps)"}}, indent=1))
    return {"competitions": comps_path, "chain": chain_path, "benchmark": bench_path, "field": field}
