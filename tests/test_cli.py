"""The command line: parsing, and the optional wandb logging with a stand-in module."""
import logging
import sys
import types

import pytest

from validator import app
from validator.cli import main as cli
from validator.cli import run as runcmd


def test_run_flags_parse_with_defaults():
    args = cli.build_parser().parse_args(["run", "--offline", "--steps", "2", "--model-store-gb", "-20"])
    # finney by default, as btcli and `benchmark`: a validator never silently runs on an empty local chain
    assert args.network == "finney" and args.netuid == 29 and args.steps == 2
    assert args.offline and not args.dont_set_weights and args.model_store_gb == -20.0
    assert str(args.state_dir) == ".coldint"


def test_run_flags_map_onto_one_run_config():
    args = cli.build_parser().parse_args(["run", "--network", "local", "--devices", "cpu, cpu", "--no-isolation",
                                          "--state-dir", "s", "--hf-endpoint", "http://127.0.0.1:9", "--steps", "3"])
    config = runcmd.config_from_args(args)
    assert isinstance(config, app.RunConfig)
    assert config.devices == ("cpu", "cpu") and not config.isolate and config.steps == 3
    assert str(config.store_dir) == "s/models" and str(config.chain_file) == "s/chain.sqlite"
    assert config.hub_endpoint == "http://127.0.0.1:9" and config.store_budget_gb < 0


class FakeWandb(types.ModuleType):
    def __init__(self, fail: bool = False):
        super().__init__("wandb")
        self.inits, self.logs, self.fail = [], [], fail

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    def init(self, **kwargs):
        self.inits.append(kwargs)
        parent = self

        class Run:
            def log(self, data, step):
                if parent.fail:
                    raise ConnectionError("wandb.ai unreachable")
                parent.logs.append((step, data))
        return Run()


REPORT = {"step": 3, "block": 1234, "competitions": {"c00": {"models": [
    {"label": "uid 4", "uid": 4, "win_rate": 0.75, "loss_per_token": 2.5, "weight": 1.0, "status": "scored"},
    {"label": "cand", "uid": None, "win_rate": 0.25, "loss_per_token": 2.9, "weight": None, "status": "scored"}]}}}


def test_wandb_one_run_per_validator_and_each_step_table(monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    args = cli.build_parser().parse_args(["run", "--wandb", "--hotkey", "5Val"])
    run = runcmd._wandb_init(runcmd.config_from_args(args))
    assert len(fake.inits) == 1 and fake.inits[0]["name"] == "validator-5Val"
    runcmd._wandb_log(run, REPORT)
    (step, data), = fake.logs
    assert step == 3 and data["block"] == 1234
    table = data["c00/leaderboard"]
    assert table.columns == runcmd.WANDB_COLUMNS
    assert table.data == [["uid 4", 4, 0.75, 2.5, 1.0, "scored"], ["cand", None, 0.25, 2.9, None, "scored"]]


def test_wandb_failure_is_logged_not_raised(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(fail=True))
    run = runcmd._wandb_init(runcmd.config_from_args(cli.build_parser().parse_args(["run", "--wandb"])))
    with caplog.at_level(logging.WARNING):
        runcmd._wandb_log(run, REPORT)
    assert "wandb.ai unreachable" in caplog.text


def test_wandb_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(SystemExit, match=r"coldint-validator\[wandb\]"):
        runcmd._wandb_init(runcmd.config_from_args(cli.build_parser().parse_args(["run", "--wandb"])))


def test_a_failed_competitions_reload_is_in_the_step_report_and_the_last_good_config_stays(tmp_path, monkeypatch):
    import json

    import constants
    from validator.adapters.chain.local import LocalChain

    monkeypatch.setattr(constants, "COMPETITIONS_REFRESH_S", 0)  # reload before every step
    comps = tmp_path / "competitions.json"
    comps.write_text(json.dumps({"c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 1000,
                                         "model_size": 10_000,
                                         "dataset": str(tmp_path / "eval.jsonl"), "tokenizer": str(tmp_path)}}))
    chain = LocalChain(tmp_path / "chain.sqlite", hotkey="5Val")
    chain.register("5Val", stake=1000.0, validator=True)
    chain.register("5Miner")
    chain.commit("5Miner", "team:m:" + "a" * 40 + ":" + "b" * 43 + "=:c00")
    args = cli.build_parser().parse_args([
        "run", "--network", "local", "--chain-db", str(tmp_path / "chain.sqlite"), "--hotkey", "5Val",
        "--competitions", str(comps), "--state-dir", str(tmp_path / "state"), "--device", "cpu",
        "--hf-endpoint", "http://127.0.0.1:9", "--no-isolation", "--dont-set-weights"])
    v = app.build_validator(runcmd.config_from_args(args))
    v.progress = None
    v.fetch = lambda model_id, hotkey, competition, deadline=None: (_ for _ in ()).throw(
        RuntimeError("no hub in this test"))
    first = v.step()
    assert not any(p.startswith("competitions") for p in first["problems"]), first["problems"]
    comps.write_text('{"c00": {"reward": "lots"')  # someone pushed a typo
    second = v.step()
    [msg] = [p for p in second["problems"] if p.startswith("competitions")]
    assert str(comps) in msg and "last good config stays in force" in msg
    # the miner's commitment still names a known competition: c00 is still in force
    assert not any("unknown competition" in p for p in second["problems"])
    assert "c00" in second["competitions"]
