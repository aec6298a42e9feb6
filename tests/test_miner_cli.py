"""What a miner runs, through the real command line: `python -m validator.cli.main benchmark ...`
(exit statuses, refusals, bad entries, loud warnings) and `hub serve DIR` (served on
loopback until a signal, nothing left behind).

The models are tiny llamas of known quality: an early snapshot of one training run is the
leader, a later snapshot the clearly better candidate, the leader plus weight noise the
worse one.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.factories import make_model, make_texts, make_tokenizer, train_field

ROOT = Path(__file__).resolve().parent.parent
N_TEXTS = 60
LEADER_BLOCK = 200
SKEW = 1.2


def cli(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m validator.cli.main ...` as a miner runs it; one torch thread (a shared small box)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "validator.cli.main", *argv], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("miner")
    train_texts = make_texts(300, seed=1, max_words=30)
    eval_texts = make_texts(N_TEXTS, seed=2, max_words=30)
    tok = make_tokenizer(root / "tokenizer", train_texts + eval_texts)
    models = train_field(root, tok, train_texts)

    data = root / "eval.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in eval_texts))
    from validator.adapters.hub import count_parameters

    _arch, n_params = count_parameters(json.loads((models["leader"] / "config.json").read_text()))
    base = {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": n_params, "model_size": 100_000_000,
            "dataset": str(data), "max_sequence_len": 512}
    comps = root / "competitions.json"
    comps.write_text(json.dumps({
        "c00": {**base, "tokenizer": str(root / "tokenizer")},
        "c01": base,  # no competition tokenizer: a model must bring a loadable tokenizer.json
        "c02": {**base, "tokenizer": str(root / "tokenizer"), "parameters": 1_000},
    }))
    return {"root": root, "models": models, "competitions": comps, "tokenizer": root / "tokenizer"}


def bench_file(path: Path, entries: dict) -> Path:
    path.write_text(json.dumps(entries))
    return path


def offline(world, bench: Path, state: Path, *extra: str) -> list[str]:
    return ["benchmark", str(bench), "--offline", "--competitions", str(world["competitions"]),
            "--state-dir", str(state), "--device", "cpu", "--no-isolation", "--bootstrap", "1000",
            "--seed", "3", *extra]


def leader_entry(world) -> dict:
    return {"competition": "c00", "path": str(world["models"]["leader"]), "label": "leader", "block": LEADER_BLOCK}


# --- exit status 0 and 1, the weights, the warnings --------------------------------------------------


def test_exit_0_when_the_candidate_beats_the_leader_and_its_weight_is_labelled(world, tmp_path):
    bench = bench_file(tmp_path / "b.json", {"leader": leader_entry(world), "better": {
        "competition": "c00", "path": str(world["models"]["better"]), "label": "better"}})
    res = cli(*offline(world, bench, tmp_path / "state", "--samples", str(N_TEXTS), "--out", str(tmp_path / "out")))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "beats the leader" in res.stdout and "weight if" in res.stdout and "committed now" in res.stdout
    assert "WARNING" not in res.stdout  # every requested sample was there
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (cand,) = report["competitions"]["c00"]["candidates"]
    assert cand["outcome"] == "beats the leader"
    assert cand["head_to_head_wilson"]["low"] > 0.5 and cand["head_to_head"]["low"] > 0.5
    # a field of one: the leader holds all the weight now; with the candidate in, the two
    # share the groups (each has a winner) and the weights are their skewed win rates
    w = cand["win_rate"]["value"]
    assert cand["leader_weight_now"] == pytest.approx(1.0)
    assert cand["leader_weight_with"] == pytest.approx((1 - w) ** SKEW / ((1 - w) ** SKEW + w ** SKEW))
    assert cand["weight"] == pytest.approx(w ** SKEW / ((1 - w) ** SKEW + w ** SKEW))
    assert f"{cand['leader_weight_now']:.3f} → {cand['leader_weight_with']:.3f}" in res.stdout


def test_exit_1_when_it_does_not_and_missing_samples_are_said_loudly(world, tmp_path):
    bench = bench_file(tmp_path / "b.json", {"leader": leader_entry(world), "worse": {
        "competition": "c00", "path": str(world["models"]["worse"]), "label": "worse"}})
    res = cli(*offline(world, bench, tmp_path / "state", "--samples", "100", "--out", str(tmp_path / "out")))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "does not beat the leader" in res.stdout
    warning = f"WARNING: competition c00: {N_TEXTS} samples of the 100 requested"
    assert warning in " ".join(res.stdout.split())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any(f"{N_TEXTS} samples of the 100 requested" in w for w in report["warnings"])
    (cand,) = report["competitions"]["c00"]["candidates"]
    assert "WARNING" in cand["verdict"]  # the report's verdict line carries it too


# --- exit status 2: refused, bad entries, bad flags -------------------------------------------------


def test_what_a_validator_would_refuse_is_reported_and_not_scored(world, tmp_path):
    pickle_only = Path(shutil.copytree(world["models"]["leader"], tmp_path / "pickle_only"))
    (pickle_only / "model.safetensors").rename(pickle_only / "pytorch_model.bin")
    gpt2 = make_model(tmp_path / "gpt2", arch="gpt2", vocab_size=300)
    bench = bench_file(tmp_path / "b.json", {
        "leader": leader_entry(world),
        "pickle": {"competition": "c00", "path": str(pickle_only)},
        "gpt2": {"competition": "c00", "path": str(gpt2)},
        "big": {"competition": "c02", "path": str(world["models"]["better"])},
        "notok": {"competition": "c01", "path": str(world["models"]["better"])}})
    state = tmp_path / "state"
    res = cli(*offline(world, bench, state, "--samples", "20"))
    assert res.returncode == 2, res.stdout + res.stderr
    out = " ".join(res.stdout.split())
    assert "pickle (candidate, c00): would be refused: unsafe_format" in out
    assert "gpt2 (candidate, c00): would be refused: constraint" in out and "GPT2LMHeadModel" in out
    assert "big (candidate, c02): would be refused: constraint" in out and "1000" in out
    assert "notok (candidate, c01): would be refused: tokenizer" in out and "no tokenizer.json" in out
    assert "no candidate can be judged" in out
    from validator.adapters.evalcache import cache_file

    assert not cache_file(state, str(world["root"] / "eval.jsonl")).exists()  # nothing was scored


def test_an_unusable_entry_stops_the_run_with_its_reason_first(world, tmp_path):
    bench = bench_file(tmp_path / "b.json", {
        "leader": leader_entry(world),
        "typo": {"competition": "c00", "pth": str(world["models"]["better"])},
        "gone": {"competition": "c00", "path": str(tmp_path / "no-such-model")},
        "lost": {"competition": "c99", "path": str(world["models"]["better"])}})
    res = cli(*offline(world, bench, tmp_path / "state", "--samples", "20"))
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("error: benchmark entry ")
    out = " ".join(res.stdout.split())
    assert "benchmark entry 'typo'" in out and "pth" in out
    assert "benchmark entry 'gone'" in out and "no-such-model is not a directory" in out
    assert "benchmark entry 'lost': unknown competition 'c99'" in out
    assert "3 unusable entries" in out and "--skip-bad-entries" in out
    # skipped on request: what is left has no candidate, which cannot be judged either
    res = cli(*offline(world, bench, tmp_path / "state", "--samples", "20", "--skip-bad-entries"))
    assert res.returncode == 2 and "no candidate" in res.stdout


def test_bad_hub_endpoint_and_the_documented_statuses(world, tmp_path):
    bench = bench_file(tmp_path / "b.json", {"leader": leader_entry(world), "better": {
        "competition": "c00", "path": str(world["models"]["better"])}})
    res = cli(*offline(world, bench, tmp_path / "state", "--hf-endpoint", f"local:{tmp_path / 'nope'}"))
    assert res.returncode == 2 and "--hf-endpoint: local:" in res.stdout and "is not a directory" in res.stdout
    res = cli(*offline(world, bench, tmp_path / "state", "--hf-endpoint", "ftp://example"))
    assert res.returncode == 2 and "expected an http(s):// URL or local:<mirror dir>" in res.stdout
    res = cli("benchmark", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "exit status: 0 a candidate beats the leader; 1" in text and "2 no candidate could be judged" in text
    assert "--skip-bad-entries" in text and "local:DIR" in text


# --- hub serve ---------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _hub_cli_registered() -> bool:
    from validator.cli.main import build_parser

    try:
        build_parser().parse_args(["hub", "serve", "x"])
    except SystemExit:
        return False
    return True


ENTRY_POINTS = [
    pytest.param(["-m", "validator.cli.hub", "serve"], id="hub_cli"),
    pytest.param(["-m", "validator.cli.main", "hub", "serve"], id="cli",
                 marks=pytest.mark.skipif(not _hub_cli_registered(),
                                          reason="validator/cli/main.py does not register validator.cli.hub yet")),
]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_hub_serve_prints_the_port_serves_and_leaves_nothing_behind(entry, sig, world, tmp_path):
    from validator.adapters.hub import publish_local

    mirror = tmp_path / "mirror"
    sha = publish_local(world["models"]["leader"], mirror, "demo", "leader")
    proc = subprocess.Popen([sys.executable, *entry, str(mirror)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert line.startswith("hub: serving"), line + proc.stderr.read()
        port = int(line.split("(port ")[1].split(")")[0])
        endpoint = f"http://127.0.0.1:{port}"
        assert endpoint in line
        with urllib.request.urlopen(f"{endpoint}/demo/leader/resolve/{sha}/config.json", timeout=10) as r:
            assert json.loads(r.read()) == json.loads((world["models"]["leader"] / "config.json").read_text())
        olah = _children(proc.pid)
        assert olah, "olah runs as the command's child"
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        assert "hub: stopped" in proc.stdout.read()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in olah) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in olah), "olah outlived hub serve"
        with pytest.raises((urllib.error.URLError, OSError)):
            urllib.request.urlopen(f"{endpoint}/demo/leader/resolve/{sha}/config.json", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_hub_serve_refuses_a_missing_dir(tmp_path):
    res = subprocess.run([sys.executable, "-m", "validator.cli.hub", "serve", str(tmp_path / "nope")], cwd=ROOT,
                         text=True, capture_output=True, timeout=60)
    assert res.returncode == 2 and "nope is not a directory" in res.stderr


def test_open_endpoint_starts_and_stops_a_local_hub(world, tmp_path):
    from validator.adapters.hub import publish_local
    from validator.cli.hub import EndpointError, open_endpoint

    mirror = tmp_path / "mirror"
    sha = publish_local(world["models"]["leader"], mirror, "demo", "leader")
    endpoint, close = open_endpoint(f"local:{mirror}")
    try:
        assert endpoint.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{endpoint}/demo/leader/resolve/{sha}/config.json", timeout=10) as r:
            assert r.status == 200
    finally:
        close()
    with pytest.raises((urllib.error.URLError, OSError)):
        urllib.request.urlopen(f"{endpoint}/demo/leader/resolve/{sha}/config.json", timeout=2)
    close()  # twice is safe
    assert open_endpoint("https://huggingface.co/")[0] == "https://huggingface.co"
    assert open_endpoint(None)[0] is None
    with pytest.raises(EndpointError, match="expected an http"):
        open_endpoint("huggingface.co")


def test_run_serves_a_local_mirror_for_its_hf_endpoint(tmp_path):
    """`run --hf-endpoint local:DIR` starts olah over the mirror for the run and stops it after."""
    import json as _json
    import subprocess as _sp
    import sys as _sys

    mirror = tmp_path / "mirror"
    (mirror / "models").mkdir(parents=True)
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("some text to sample from " * 20)
    comps = tmp_path / "competitions.json"
    comps.write_text(_json.dumps({"c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": 10**6,
                                          "model_size": 10**8, "dataset": str(texts)}}))
    proc = _sp.run([_sys.executable, "-m", "validator.cli.main", "run", "--network", "local", "--state-dir",
                    str(tmp_path / "state"), "--competitions", str(comps), "--hf-endpoint", f"local:{mirror}",
                    "--steps", "1", "--step-interval", "0", "--device", "cpu", "--offline"],
                   capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import re
    import socket

    port = int(re.search(r"local hub at http://127\.0\.0\.1:(\d+)", proc.stdout + proc.stderr).group(1))
    with socket.socket() as s, pytest.raises(OSError):  # the run stopped its hub: nothing answers there
        s.settimeout(2)
        s.connect(("127.0.0.1", port))
