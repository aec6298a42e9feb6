"""`coldint-validator demo`: a complete local field, then validator steps on it.

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


def run_demo(root: Path, steps: int = 2, eval_samples: int = 200) -> int:
    """Build the local field in `root` (a finished field there is reused) and run `steps`
    validator steps on it from a fresh validator state; weights are not set.

    One demo per dir (its state is wiped at start). Ctrl-C or SIGTERM: the first stops after
    the model in flight, a second at once; olah and any scoring worker are stopped either way
    (the `with` blocks unwind); the status is then 128 + the signal's number."""
    import shutil

    from validator.app import RunConfig, build_validator
    from validator.adapters.leaderboard import make_console, print_report
    from validator.adapters.hub.localhub import LocalHub
    from validator.cli.preflight import SetupError
    from validator.cli.runlock import LockHeld, RunLock
    from validator.cli.stopping import exit_status, graceful_loop_stop

    console = make_console()
    root = Path(root).resolve()
    try:
        lock = RunLock(root).acquire()
    except LockHeld as e:
        raise SetupError(str(e)) from None
    with lock:
        mirror = root / "mirror"
        shutil.rmtree(root / "state", ignore_errors=True)
        with LocalHub(mirror) as hub:
            console.print(f"local hub (olah) at {hub.endpoint}, serving {mirror}")
            built = build_demo(root, console, hub.endpoint, mirror)
            config = RunConfig(network="local", chain_db=built["chain"], hotkey=VALIDATOR_HOTKEY,
                               competitions=str(built["competitions"]), benchmark=built["benchmark"],
                               state_dir=root / "state", endpoint=hub.endpoint, device="cpu",
                               eval_samples=eval_samples, offline=True, step_interval_s=0,
                               save_step_json=root / "last_step.json")
            validator = build_validator(config, console)
            stop = graceful_loop_stop(validator)
            for report in validator.run(steps):
                validator.progress.stop()
                print_report(report, console)
    if stop.first is not None:
        return exit_status(stop.first)
    console.print(f"\nre-render the last step with: coldint-validator leaderboard --state-dir {root / 'state'}")
    return 0
