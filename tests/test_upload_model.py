"""scripts/upload_model.py end to end: local mirror + olah on loopback + LocalChain."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scripts import upload_model
from tests.factories import make_model, make_tokenizer
from tests.test_hub import DOWNLOADED, as_a_hub_repo
from validator.core.chain import Commitment
from validator.adapters.chain.local import LocalChain
from validator.adapters.hub import ensure_model
from validator.core.identity import ModelId, dir_hash, files_hash, secure_hash

HOTKEY = "5MinerHotkeyUpload"


@pytest.fixture(scope="module")
def model_src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("upload_src")
    make_tokenizer(root / "tok")
    return as_a_hub_repo(make_model(root / "model", tokenizer_dir=root / "tok"))


@pytest.fixture(scope="module")
def competitions_file(tmp_path_factory, model_src) -> Path:
    from validator.adapters.hub import count_parameters

    _arch, n = count_parameters(json.loads((model_src / "config.json").read_text()))
    path = tmp_path_factory.mktemp("comps") / "competitions.json"
    path.write_text(json.dumps({
        "default": {"dataset": "local", "model_size": 10_000_000},
        "c00": {"reward": 1.0, "model_types": ["LlamaForCausalLM"], "parameters": n},
        "c01": {"reward": 1.0, "model_types": ["GPT2LMHeadModel"], "parameters": n},
    }))
    return path


@pytest.fixture
def chain(tmp_path) -> LocalChain:
    c = LocalChain(tmp_path / "chain.sqlite")
    c.register(HOTKEY)
    return c


def base_args(model_dir, competitions_file, mirror, chain, repo="carol/tiny", competition="c00"):
    return [str(model_dir), "--competition", competition, "--competitions", str(competitions_file),
            "--hub", f"local:{mirror}", "--repo", repo, "--hotkey", HOTKEY, "--network", "local",
            "--chain-db", str(chain.path), "--readback-wait", "0"]


def test_publish_commit_and_validator_download_reproduce_the_hash(model_src, competitions_file, olah_mirror,
                                                                  olah_hub, chain, tmp_path, capsys):
    rc = upload_model.main(base_args(model_src, competitions_file, olah_mirror, chain)
                           + ["--endpoint", olah_hub.endpoint])
    assert rc == 0, capsys.readouterr().err
    _mg, commitments = chain.sync()
    text = commitments[HOTKEY].text
    assert capsys.readouterr().out.strip().splitlines()[-1] == text
    mid = ModelId.from_commitment(text)
    assert (mid.namespace, mid.name, mid.competition) == ("carol", "tiny", "c00")
    repo = olah_mirror / "models" / "carol" / "tiny"
    assert (repo / ".git").is_dir()
    # the hash committed is that of the published files validators download, bound to the hotkey
    assert mid.hash == secure_hash(files_hash(model_src, DOWNLOADED), HOTKEY)
    assert (repo / "README.md").is_file() and (repo / ".gitattributes").is_file()  # published, not hashed
    # a validator's fresh download at that commit verifies
    from validator.adapters.competitions_source import load_competitions

    comp = load_competitions(str(competitions_file))["c00"]
    path = ensure_model(mid, HOTKEY, comp, tmp_path / "validator", endpoint=olah_hub.endpoint, progress=False).path
    assert secure_hash(dir_hash(path), HOTKEY) == mid.hash
    assert (path / "tokenizer.json").read_bytes() == (model_src / "tokenizer.json").read_bytes()


def test_commit_existing_upload_through_a_temporary_olah(model_src, competitions_file, olah_mirror, chain,
                                                         tmp_path, capsys):
    from validator.adapters.hub import publish_local

    sha = publish_local(model_src, olah_mirror, "carol", "existing")
    chain.register("5SecondHotkey")
    args = ["--competition", "c00", "--competitions", str(competitions_file), "--hub", f"local:{olah_mirror}",
            "--model-id", f"carol:existing:{sha}", "--hotkey", "5SecondHotkey", "--network", "local",
            "--chain-db", str(chain.path), "--readback-wait", "0"]
    assert upload_model.main(args) == 0, capsys.readouterr().err
    text = chain.sync()[1]["5SecondHotkey"].text
    assert text == f"carol:existing:{sha}:{secure_hash(files_hash(model_src, DOWNLOADED), '5SecondHotkey')}:c00"
    # no new commit was made
    from validator.adapters.hub.publish import _git

    assert _git(["rev-parse", "HEAD"], olah_mirror / "models" / "carol" / "existing") == sha


def test_model_outside_the_competition_is_not_uploaded(model_src, competitions_file, olah_mirror, chain, capsys):
    rc = upload_model.main(base_args(model_src, competitions_file, olah_mirror, chain, repo="carol/wrongarch",
                                     competition="c01"))
    assert rc == 1
    err = capsys.readouterr().err
    assert "constraint" in err and "LlamaForCausalLM" in err and "c01" in err
    assert not (olah_mirror / "models" / "carol" / "wrongarch").exists()
    assert chain.sync()[1] == {}


def test_pickle_only_weights_are_not_uploaded(model_src, competitions_file, olah_mirror, chain, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(model_src, bad)
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    assert upload_model.main(base_args(bad, competitions_file, olah_mirror, chain, repo="carol/pickled")) == 1
    assert "unsafe_format" in capsys.readouterr().err
    assert not (olah_mirror / "models" / "carol" / "pickled").exists()


def test_a_pickle_beside_safetensors_is_uploaded_and_not_hashed(model_src, competitions_file, olah_mirror,
                                                                olah_hub, chain, tmp_path, capsys):
    """Validators never download pytorch_model.bin when model.safetensors is there: no
    reason to refuse the upload, and the hash is that of the files they do download."""
    extra = tmp_path / "extra"
    shutil.copytree(model_src, extra)
    (extra / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    rc = upload_model.main(base_args(extra, competitions_file, olah_mirror, chain, repo="carol/withbin")
                           + ["--endpoint", olah_hub.endpoint])
    assert rc == 0, capsys.readouterr().err
    mid = ModelId.from_commitment(chain.sync()[1][HOTKEY].text)
    assert mid.hash == secure_hash(files_hash(model_src, DOWNLOADED), HOTKEY)
    assert (olah_mirror / "models" / "carol" / "withbin" / "pytorch_model.bin").is_file()


def test_commitment_over_128_bytes_is_refused_before_uploading(model_src, competitions_file, olah_mirror, chain,
                                                              capsys):
    name = "a-model-name-long-enough-to-overflow-the-chain-field"  # 6 + 51 + 88 + 3 = 148 bytes
    rc = upload_model.main(base_args(model_src, competitions_file, olah_mirror, chain, repo=f"carol/{name}"))
    assert rc == 1
    err = capsys.readouterr().err
    assert "148 bytes" in err and "128" in err
    assert not (olah_mirror / "models" / "carol" / name).exists()
    assert chain.sync()[1] == {}


@pytest.mark.parametrize("change, message", [
    (lambda a: a.__setitem__(a.index("c00"), "c99"), "c99"),
    (lambda a: a.__setitem__(a.index(HOTKEY), "5NotRegistered"), "5NotRegistered is not registered"),
    (lambda a: a.__setitem__(a.index("carol/badinput"), "no-slash"), "--repo"),
    (lambda a: a.__setitem__(a.index("--chain-db") + 1, "/nonexistent/chain.sqlite"), "no local chain"),
])
def test_bad_input_fails_with_a_clear_message(change, message, model_src, competitions_file, olah_mirror, chain,
                                              capsys):
    args = base_args(model_src, competitions_file, olah_mirror, chain, repo="carol/badinput")
    change(args)
    assert upload_model.main(args) == 1
    assert message in capsys.readouterr().err
    assert chain.sync()[1] == {}
    assert not (olah_mirror / "models" / "carol" / "badinput").exists()  # failed before uploading


def test_commitment_not_read_back_is_a_failure(model_src, competitions_file, olah_mirror, olah_hub, tmp_path):
    class LostChain:  # accepts the commit, never shows it
        netuid = 29

        def commit(self, signer, text):
            self.text = text

        def sync(self):
            return None, {HOTKEY: Commitment("someone:else:" + "0" * 40 + ":x:c00", 1)}

    from validator.adapters.competitions_source import load_competitions

    comp = load_competitions(str(competitions_file))["c00"]
    with pytest.raises(upload_model.UploadError) as err:
        upload_model.publish_and_commit(model_src, comp, hub_spec=f"local:{olah_mirror}", chain=LostChain(),
                                        signer=HOTKEY, hotkey=HOTKEY, repo="carol/lost",
                                        endpoint=olah_hub.endpoint, readback_tries=3, readback_wait_s=0,
                                        log=lambda _m: None)
    assert "read back" in str(err.value) and "3 reads" in str(err.value)


def test_hf_token_sources(monkeypatch, tmp_path):
    for key in ("HF_TOKEN", "HF_ACCESS_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no cached login
    monkeypatch.chdir(tmp_path)
    assert upload_model.load_token() is None
    (tmp_path / ".env").write_text("HF_ACCESS_TOKEN=hf_from_dotenv\n")
    assert upload_model.load_token() == "hf_from_dotenv"
    monkeypatch.setenv("HF_ACCESS_TOKEN", "hf_from_env")
    assert upload_model.load_token() == "hf_from_env"
    monkeypatch.setenv("HF_TOKEN", "hf_token_wins")
    assert upload_model.load_token() == "hf_token_wins"


def test_hf_upload_without_token_is_refused_before_anything(model_src, competitions_file, chain, capsys,
                                                            monkeypatch, tmp_path):
    monkeypatch.setattr(upload_model, "load_token", lambda: None)
    args = base_args(model_src, competitions_file, tmp_path, chain)
    args[args.index(f"local:{tmp_path}")] = "hf"
    assert upload_model.main(args) == 1
    err = capsys.readouterr().err
    assert "token" in err and "`hf auth login`" in err  # the login command of huggingface_hub >= 1.0


def test_register_creates_the_local_chain_and_commits(model_src, competitions_file, olah_mirror, olah_hub, tmp_path):
    db = tmp_path / "fresh" / "chain.sqlite"
    args = [str(model_src), "--competition", "c00", "--competitions", str(competitions_file),
            "--hub", f"local:{olah_mirror}", "--endpoint", olah_hub.endpoint, "--repo", "carol/registered",
            "--hotkey", "5NewMiner", "--network", "local", "--chain-db", str(db), "--register",
            "--readback-wait", "0"]
    assert upload_model.main(args) == 0
    metagraph, commitments = LocalChain(db).sync()
    assert metagraph.uid_of("5NewMiner") is not None
    assert ModelId.from_commitment(commitments["5NewMiner"].text).name == "registered"


def test_recommitting_the_same_content_is_refused_unless_forced(model_src, competitions_file, olah_mirror,
                                                               olah_hub, chain, capsys):
    """Committing content again moves its block forward: the age advantage it holds is lost."""
    from validator.adapters.hub.publish import _git

    args = base_args(model_src, competitions_file, olah_mirror, chain, repo="carol/again") + [
        "--endpoint", olah_hub.endpoint]
    assert upload_model.main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"repo: {olah_hub.endpoint}/carol/again" in out  # where to look at it
    first = chain.sync()[1][HOTKEY]
    head = _git(["rev-parse", "HEAD"], olah_mirror / "models" / "carol" / "again")
    chain.advance(20)
    assert upload_model.main(args) == 1
    err = capsys.readouterr().err
    assert f"hotkey {HOTKEY} has already committed this content as carol/again@{head[:12]} (c00)" in err
    assert "--force" in err and "restart its age" in err
    assert chain.sync()[1][HOTKEY] == first  # the commitment and its block stay
    assert _git(["rev-parse", "HEAD"], olah_mirror / "models" / "carol" / "again") == head  # nothing uploaded
    assert upload_model.main(args + ["--force"]) == 0, capsys.readouterr().err
    again = chain.sync()[1][HOTKEY]
    same_hash = ModelId.from_commitment(again.text).hash == ModelId.from_commitment(first.text).hash
    assert same_hash and again.block > first.block  # a new git commit of the same content, a later block


def test_register_happens_only_after_the_checks_pass(model_src, competitions_file, olah_mirror, olah_hub,
                                                      tmp_path, capsys):
    db = tmp_path / "fresh" / "chain.sqlite"
    args = [str(model_src), "--competition", "c01", "--competitions", str(competitions_file),
            "--hub", f"local:{olah_mirror}", "--endpoint", olah_hub.endpoint, "--repo", "carol/unregistered",
            "--hotkey", "5RefusedMiner", "--network", "local", "--chain-db", str(db), "--register",
            "--readback-wait", "0"]
    assert upload_model.main(args) == 1
    assert "check against competition c01" in capsys.readouterr().err
    assert not db.exists()  # no chain created, no hotkey registered for a model that is refused
    db.parent.mkdir()
    existing = LocalChain(db)
    assert upload_model.main(args) == 1
    assert existing.sync()[0].uid_of("5RefusedMiner") is None
    args[args.index("c01")] = "c00"
    assert upload_model.main(args) == 0, capsys.readouterr().err
    assert "registered 5RefusedMiner as uid" in capsys.readouterr().out
    assert existing.sync()[0].uid_of("5RefusedMiner") is not None


# --- huggingface.co: a fake HfApi records what publish_hf and set_visibility ask of the hub ----

HF_SHA = "c" * 40


class FakeHub:
    """One repo on a pretend huggingface.co; `events` is the order of every call, the
    chain's included, each with the repo's visibility at that moment."""

    def __init__(self, exists: bool, private: bool, refuse_private: bool = False) -> None:
        self.exists, self.private, self.refuse_private = exists, private, refuse_private
        self.events: list[tuple] = []

    def record(self, name: str, **details) -> None:
        self.events.append((name, details, "private" if self.private else "public"))

    def api_class(self):
        hub = self

        class FakeHfApi:
            def __init__(self, endpoint=None, token=None):
                assert token == "hf_test_token"

            def create_repo(self, repo_id, repo_type=None, private=False, exist_ok=False):
                assert exist_ok and repo_type == "model"
                if not hub.exists:  # exist_ok leaves an existing repo's visibility alone
                    hub.exists, hub.private = True, private
                hub.record("create_repo", private=private)

            def repo_info(self, repo_id, repo_type=None):
                hub.record("repo_info")
                return type("Info", (), {"private": hub.private})()

            def update_repo_settings(self, repo_id, *, private=None, repo_type=None):
                if private and hub.refuse_private:
                    raise RuntimeError("403: private repository storage limit reached")
                hub.private = private
                hub.record("update_repo_settings", private=private)

            def upload_folder(self, **kwargs):
                hub.record("upload_folder", **kwargs)
                return type("CommitInfo", (), {"oid": HF_SHA})()

        return FakeHfApi


class RecordingChain:
    netuid = 29

    def __init__(self, hub: FakeHub) -> None:
        self.hub, self.text = hub, None

    def commit(self, signer, text):
        self.text = text
        self.hub.record("chain.commit")

    def sync(self):
        self.hub.record("chain.sync")
        return None, ({HOTKEY: Commitment(self.text, 7)} if self.text else {})


def publish_to_fake_hf(fake: FakeHub, model_src, competitions_file, monkeypatch):
    import huggingface_hub

    from validator.adapters import hub
    from validator.adapters.competitions_source import load_competitions

    monkeypatch.setattr(huggingface_hub, "HfApi", fake.api_class())
    def download_snapshot(repo_id, commit, *_args, **_kwargs) -> Path:
        fake.record("download", commit=commit)
        return Path(model_src)  # stands in for the snapshot at HF_SHA, downloaded as a validator would

    monkeypatch.setattr(hub, "download_snapshot", download_snapshot)
    comp = load_competitions(str(competitions_file))["c00"]
    return upload_model.publish_and_commit(model_src, comp, hub_spec="hf", chain=RecordingChain(fake),
                                           signer=HOTKEY, hotkey=HOTKEY, repo="carol/hf-model",
                                           token="hf_test_token", readback_wait_s=0, log=lambda _m: None)


def first(events: list[tuple], name: str, **details) -> int:
    return next(i for i, (n, d, _v) in enumerate(events)
                if n == name and all(d.get(k) == v for k, v in details.items()))


@pytest.mark.parametrize("exists, private", [(False, True), (True, False), (True, True)],
                         ids=["new", "existing-public", "existing-private"])
def test_hf_publish_keeps_weights_private_until_committed(exists, private, model_src, competitions_file,
                                                         monkeypatch):
    fake = FakeHub(exists, private)
    mid = publish_to_fake_hf(fake, model_src, competitions_file, monkeypatch)
    assert mid.commit == HF_SHA
    events = fake.events
    upload = first(events, "upload_folder")
    _name, kwargs, visibility = events[upload]
    assert visibility == "private"  # the new weights were never public before the commitment
    assert kwargs["delete_patterns"] == "*"  # stale remote files (an old model.safetensors) go
    assert kwargs["folder_path"] == str(model_src) and ".*" in kwargs["ignore_patterns"]
    made_private = [i for i, (n, d, _v) in enumerate(events) if n == "update_repo_settings" and d["private"]]
    assert made_private == ([first(events, "repo_info") + 1] if exists and not private else [])
    commit = first(events, "chain.commit")
    made_public = first(events, "update_repo_settings", private=False)
    assert upload < first(events, "download") < commit < made_public == len(events) - 1
    assert events[made_public - 1][0] == "chain.sync"  # only once the chain shows the commitment
    assert all(v == "private" for _n, _d, v in events[upload:made_public])


def test_hf_publish_refuses_to_upload_when_the_repo_cannot_be_made_private(model_src, competitions_file,
                                                                            monkeypatch):
    fake = FakeHub(exists=True, private=False, refuse_private=True)
    with pytest.raises(upload_model.UploadError) as err:
        publish_to_fake_hf(fake, model_src, competitions_file, monkeypatch)
    assert "carol/hf-model" in str(err.value) and "storage limit" in str(err.value)
    assert [n for n, _d, _v in fake.events] == ["chain.sync", "create_repo", "repo_info"]  # nothing uploaded
