"""The operator's command line: safe defaults, every check before any work, one validator per
state dir, offline without network, Ctrl-C / SIGTERM, logs, help and --version."""
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import constants
from validator import app
from validator.cli import main as cli
from validator.cli import run as runcmd
from validator.adapters.chain.local import LocalChain
from validator.cli.logsetup import RetryOnce, setup_logging
from validator.preflight import SetupError, check_device, check_registration

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "team:m:" + "a" * 40 + ":" + "b" * 43 + "=:c00"


def comps_file(tmp_path: Path) -> Path:
    path = tmp_path / "competitions.json"
    path.write_text(json.dumps({"c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 1000,
                                        "model_size": 10_000, "dataset": str(tmp_path / "eval.jsonl"),
                                        "tokenizer": str(tmp_path)}}))
    return path


def local_chain(tmp_path: Path, miners: int = 2) -> Path:
    chain = LocalChain(tmp_path / "chain.sqlite", hotkey="5Val")
    chain.register("5Val", stake=1000.0, validator=True)
    for i in range(miners):
        chain.register(f"5Miner{i}")
        chain.commit(f"5Miner{i}", COMMIT)
    return tmp_path / "chain.sqlite"


def local_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["run", "--network", "local", "--chain-db", str(local_chain(tmp_path)), "--hotkey", "5Val",
            "--competitions", str(comps_file(tmp_path)), "--state-dir", str(tmp_path / "state"),
            "--device", "cpu", "--hf-endpoint", "http://127.0.0.1:9", "--steps", "0", *extra]


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


# -- 1. finney by default; a local chain says what it holds -------------------------------------

def test_network_defaults_to_finney_and_local_says_its_chain_and_miners(tmp_path, capsys):
    assert cli.build_parser().parse_args(["run"]).network == "finney"
    assert cli.main(local_args(tmp_path)) == 0
    err = capsys.readouterr().err
    assert f"local chain {tmp_path / 'chain.sqlite'}: 2 miner(s)" in err
    assert "setup checked" in err


def test_an_empty_local_chain_says_nothing_is_there_to_score(tmp_path, capsys):
    args = local_args(tmp_path)
    args[args.index("--chain-db") + 1] = str(tmp_path / "new.sqlite")
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "0 miner(s)" in err and "a new, empty file" in err and "chain register" in err


# -- 2. every check before any work: one clear error, status 2, nothing written ------------------

@pytest.mark.parametrize("flags, message", [
    (["--device", "cdua"], "--device 'cdua': expected cpu, cuda or cuda:N"),
    (["--device", "cuda:99"], "--device cuda:99: torch sees"),
    (["--device", "cpu:1"], "expected cpu, cuda or cuda:N"),
])
def test_a_bad_device_stops_before_anything_is_written(tmp_path, capsys, flags, message):
    args = local_args(tmp_path) + flags
    before = tree(tmp_path)
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert tree(tmp_path) == before  # no state dir, no lock, no model dir


def test_device_check_counts_what_torch_sees():
    assert check_device("cpu", cuda_count=0) == "cpu"
    assert check_device("cuda:1", cuda_count=2) == "cuda:1"
    with pytest.raises(SetupError, match=r"torch sees 2 CUDA device\(s\): cuda:0..cuda:1"):
        check_device("cuda:2", cuda_count=2)
    with pytest.raises(SetupError, match="torch sees no CUDA device"):
        check_device("cuda", cuda_count=0)


@pytest.mark.parametrize("flags, message", [
    (["--steps", "-1"], "argument --steps: '-1' must be >= 0"),
    (["--eval-samples", "-5"], "argument --eval-samples: '-5' must be >= 1"),
    (["--step-interval", "-1"], "argument --step-interval: '-1' must be a finite number >= 0"),
    (["--log-level", "LOUD"], "'LOUD' is not a log level; valid: DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    (["--benchmark", "nowhere/benchmark.json"], "argument --benchmark: nowhere/benchmark.json: no such file"),
    (["--hall-of-fame", "nowhere/hof.json"], "argument --hall-of-fame: nowhere/hof.json: no such file"),
])
def test_flags_out_of_range_fail_at_parse_time(tmp_path, capsys, flags, message):
    before = tree(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "validator.cli.main", "run", "--state-dir", str(tmp_path / "s"), *flags],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert tree(tmp_path) == before


def test_a_hall_of_fame_url_is_accepted_as_is():
    args = cli.build_parser().parse_args(["run", "--hall-of-fame", "https://example.org/hall_of_fame.json"])
    assert args.hall_of_fame == "https://example.org/hall_of_fame.json"


def test_a_state_dir_that_cannot_be_a_directory_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    args = local_args(tmp_path)
    args[args.index("--state-dir") + 1] = str(blocker / "state")
    assert cli.main(args) == 2
    assert f"--state-dir {blocker / 'state'}: {blocker} (above it) is not a directory" in capsys.readouterr().err
    assert blocker.read_text() == "x"
    assert cli.main(local_args(tmp_path, "--model-dir", str(blocker))) == 2
    assert f"--model-dir {blocker}: {blocker} is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_leaderboard_out_dir_not_writable_fails_before_rendering(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert cli.main(["leaderboard", "--state-dir", str(tmp_path), "--out", str(blocker / "out")]) == 2
    assert "--out" in capsys.readouterr().err


def test_a_missing_wallet_is_an_error_before_any_connection(tmp_path, capsys, monkeypatch):
    from validator.adapters.chain import subtensor

    monkeypatch.setattr(subtensor.SubtensorChain, "client",
                        property(lambda self: pytest.fail("connected to subtensor")))
    rc = cli.main(["run", "--wallet.path", str(tmp_path / "wallets"), "--wallet.name", "val",
                   "--state-dir", str(tmp_path / "state"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "wallet 'val' hotkey 'default'" in err and "cannot read the hotkey" in err


def test_registration_check_takes_the_chain(tmp_path):
    chain = LocalChain(local_chain(tmp_path), hotkey="5Val")
    assert check_registration(chain, "5Miner1", 29, "finney") == chain.sync()[0].uid_of("5Miner1")
    with pytest.raises(SetupError, match="hotkey 5Nobody is not registered on netuid 29 of finney"):
        check_registration(chain, "5Nobody", 29, "finney")


# -- 3. one validator per state dir ----------------------------------------------------------------

HOLDER = "import sys, time; from validator.cli.runlock import RunLock; RunLock(sys.argv[1]).acquire(); " \
         "print('held', flush=True); time.sleep(120)"


def test_a_second_validator_on_a_state_dir_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, capsys):
    state = tmp_path / "state"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(state)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli.main(local_args(tmp_path)) == 2
        assert f"another validator (pid {holder.pid}) uses {state}" in capsys.readouterr().err
        assert not (state / "validator_state.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert cli.main(local_args(tmp_path)) == 0  # its pid is still in the file; the lock is free
    assert f"took over the stale lock of pid {holder.pid}" in capsys.readouterr().err
    assert (state / "validator.lock").read_text() == ""  # a clean exit leaves nothing to take over


# -- 4. offline: no network at all -----------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--chain-db", "chain.sqlite"], ["--dont-set-weights"]])
def test_offline_on_finney_is_refused_before_work_in_one_line(tmp_path, capsys, monkeypatch, extra):
    from validator.adapters.chain import subtensor

    monkeypatch.setattr(subtensor.SubtensorChain, "__init__", lambda *a, **k: pytest.fail("SubtensorChain built"))
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    assert cli.main(["run", "--offline", "--network", "finney", "--state-dir", str(tmp_path / "state"),
                     "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: --offline --network finney: offline reads no network") and "--network local" in err
    assert tree(tmp_path) == before  # no state dir, no lock, no chain file


def test_offline_refuses_config_urls_before_work(tmp_path, capsys):
    args = local_args(tmp_path, "--offline")
    args[args.index("--competitions") + 1] = "https://example.org/competitions.json"
    assert cli.main(args) == 2
    assert "--offline --competitions https://example.org/competitions.json: a URL" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_offline_refuses_a_hub_on_another_machine(tmp_path, capsys):
    assert cli.main(local_args(tmp_path, "--offline", "--hf-endpoint", "https://huggingface.co")) == 2
    assert "hub endpoint https://huggingface.co is not on this machine" in capsys.readouterr().err


def test_offline_says_which_config_copy_is_in_force(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    args = local_args(tmp_path, "--offline")
    del args[args.index("--competitions"):args.index("--competitions") + 2]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "competitions: the copy shipped with the validator" in err and "(offline)" in err
    assert "hall of fame: nothing loaded (offline)" in err
    # a copy kept by an earlier online run wins over the shipped one
    cache = tmp_path / "state" / constants.CONFIG_CACHE_DIR
    cache.mkdir(parents=True, exist_ok=True)
    comps_file(tmp_path)
    (cache / "competitions.json").write_text((tmp_path / "competitions.json").read_text())
    (cache / "competitions.json.source.json").write_text(json.dumps({"location": constants.COMPETITIONS_URL}))
    assert cli.main(args) == 0
    assert f"competitions: the last good copy kept in {cache / 'competitions.json'}" in capsys.readouterr().err


# -- 5. Ctrl-C and SIGTERM -------------------------------------------------------------------------

class SilentServer:
    """Accepts connections and never answers: a download stays in flight."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.connected = threading.Event()
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.connected.set()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()


def test_ctrl_c_once_says_it_stops_after_the_model_twice_stops_now_and_saves(tmp_path):
    server = SilentServer()
    args = local_args(tmp_path, "--steps", "1", "--dont-set-weights", "--log-level", "WARNING")
    args[args.index("--hf-endpoint") + 1] = server.endpoint
    proc = subprocess.Popen([sys.executable, "-m", "validator.cli.main", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert server.connected.wait(90), "the validator never started a download"
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None  # the download in flight goes on
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
    assert proc.returncode == 130, err
    assert "stopping after the model in flight (Ctrl-C again to stop now)" in err
    assert (tmp_path / "state" / "validator_state.json").exists()  # saved on the way out
    assert (tmp_path / "state" / "validator.lock").read_text() == ""


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_sigterm_of_the_demo_leaves_no_olah_behind(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "validator.cli.main", "demo", "--dir", str(tmp_path / "demo"),
                             "--steps", "1", "--eval-samples", "20"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            for c in _children(proc.pid):
                seen[c.pid] = c
            if any("olah" in " ".join(c.cmdline()) for c in seen.values() if c.is_running()):
                break
            time.sleep(0.2)
        assert seen, "the demo started no olah"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    left = [c for c in seen.values() if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, [c.cmdline() for c in left]


# -- 6. logs for an unattended box ---------------------------------------------------------------

def test_logs_default_to_warning_off_a_terminal_and_quiet_http_and_hf_bars(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    root = logging.getLogger()
    old = root.level
    try:
        assert setup_logging(None, stream=io.StringIO()) == "WARNING"
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        assert logging.getLogger("httpx").level == logging.WARNING
        assert setup_logging("info", stream=io.StringIO()) == "INFO"
        assert logging.getLogger("urllib3").level == logging.WARNING  # no per-request lines at INFO
        assert setup_logging("DEBUG", stream=io.StringIO()) == "DEBUG"
        assert logging.getLogger("huggingface_hub").level == logging.DEBUG
    finally:
        setup_logging("WARNING", stream=io.StringIO())
        root.setLevel(old)


def test_each_retry_warning_is_shown_once():
    now = [0.0]
    f = RetryOnce(window_s=600, clock=lambda: now[0])

    def rec(msg, *args):
        return logging.LogRecord("validator.adapters.fineweb", logging.WARNING, __file__, 1, msg, args, None)

    assert f.filter(rec("%s: attempt %d failed (%s); retrying in %.1f s", "fineweb", 1, "reset", 2.0))
    assert not f.filter(rec("%s: attempt %d failed (%s); retrying in %.1f s", "fineweb", 2, "reset", 4.0))
    assert f.filter(rec("model %s failed", "x")) and f.filter(rec("model %s failed", "x"))  # not a retry
    now[0] = 601
    assert f.filter(rec("%s: attempt %d failed (%s); retrying in %.1f s", "fineweb", 3, "reset", 8.0))


# -- 7. --version and help on every command ------------------------------------------------------

MINE = {"run", "demo", "leaderboard", "chain", "register", "commit", "advance", "show", "weights"}


def test_every_command_has_version_and_every_flag_help_with_its_default(capsys):
    parser = cli.build_parser()
    missing = []
    for p in [parser] + cli.subparsers_of(parser):
        assert "--version" in p._option_string_actions, p.prog
        name = p.prog.split()[-1]
        help_text = p.format_help()
        for action in p._actions:
            if isinstance(action, (argparse_help_types())) or action.dest in ("help", "version"):
                continue
            if not action.help:
                missing.append(f"{p.prog}: {action.dest}")
            elif action.option_strings and action.default not in (None, False) and name in MINE:
                assert str(action.default) in help_text, f"{p.prog} {action.dest}: default not shown"
    mine = [m for m in missing if m.split(":")[0].split()[-1] in MINE]
    assert not mine
    others = [m for m in missing if m not in mine]
    assert all(m.split(":")[0].split()[1] in OTHERS_PENDING for m in others), others
    print("flags without help (other owners):", others)
    with pytest.raises(SystemExit) as e:
        cli.main(["chain", "show", "--version"])
    assert e.value.code == 0 and "coldint-validator" in capsys.readouterr().out


def test_benchmark_is_a_plugin_found_through_its_entry_point(capsys):
    from importlib.metadata import entry_points

    [ep] = [e for e in entry_points(group=cli.COMMANDS_GROUP) if e.name == "benchmark"]
    assert ep.value == "benchmark.compare:register_benchmark_command"
    with pytest.raises(SystemExit) as e:
        cli.main(["benchmark", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage: coldint-validator benchmark" in out and "--offline" in out
    proc = subprocess.run(["coldint-validator", "benchmark", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "candidates of benchmark.json" in proc.stdout, proc.stderr


def test_validator_has_no_static_import_of_benchmark_or_scripts():
    import ast

    found = []
    for path in sorted((ROOT / "validator").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("benchmark", "scripts")]
    assert found == []


def argparse_help_types():
    import argparse

    return (argparse._SubParsersAction,)


# `benchmark` and `consensus` belong to benchmark/compare.py and validator/cli/consensus.py: what
# they lack is listed (pytest -s), not failed here
OTHERS_PENDING = ("benchmark", "consensus")


# -- 8. a default disk budget for the model store ------------------------------------------------

def test_without_model_store_gb_the_store_keeps_the_default_free_space(tmp_path):
    v = app.build_validator(runcmd.config_from_args(cli.build_parser().parse_args(local_args(tmp_path))))
    assert v.cleanup.__self__.budget_gb == -constants.MODEL_STORE_DEFAULT_FREE_GB
    v = app.build_validator(runcmd.config_from_args(cli.build_parser().parse_args(local_args(tmp_path, "--model-store-gb", "30"))))
    assert v.cleanup.__self__.budget_gb == 30
