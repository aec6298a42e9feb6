"""The command line: parsing, and the optional wandb logging with a stand-in module."""
import logging
import sys
import types

import pytest

from validator import cli


def test_run_flags_parse_with_defaults():
    args = cli.build_parser().parse_args(["run", "--offline", "--steps", "2", "--model-store-gb", "-20"])
    assert args.network == "local" and args.netuid == 29 and args.steps == 2
    assert args.offline and not args.dont_set_weights and args.model_store_gb == -20.0
    assert str(args.state_dir) == ".coldint"


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
    run = cli._wandb_init(args)
    assert len(fake.inits) == 1 and fake.inits[0]["name"] == "validator-5Val"
    cli._wandb_log(run, REPORT)
    (step, data), = fake.logs
    assert step == 3 and data["block"] == 1234
    table = data["c00/leaderboard"]
    assert table.columns == cli.WANDB_COLUMNS
    assert table.data == [["uid 4", 4, 0.75, 2.5, 1.0, "scored"], ["cand", None, 0.25, 2.9, None, "scored"]]


def test_wandb_failure_is_logged_not_raised(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(fail=True))
    run = cli._wandb_init(cli.build_parser().parse_args(["run", "--wandb"]))
    with caplog.at_level(logging.WARNING):
        cli._wandb_log(run, REPORT)
    assert "wandb.ai unreachable" in caplog.text


def test_wandb_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(SystemExit, match=r"coldint-validator\[wandb\]"):
        cli._wandb_init(cli.build_parser().parse_args(["run", "--wandb"]))
