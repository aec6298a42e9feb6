"""A local model hub: olah serving git mirrors on 127.0.0.1.

The validator talks to it with the same huggingface_hub client code it uses for
huggingface.co; only the endpoint differs. Used by tests, demos and offline setups.

    with LocalHub(mirror_dir) as hub:
        ensure_model(..., endpoint=hub.endpoint)

`mirror_dir` holds git repos at `<mirror_dir>/models/<org>/<name>` (and `datasets/...`),
each with a `main` branch (see `validator.adapters.hub.publish.publish_local`).

olah quirks seen with olah 0.5 (mirrored repos, offline mode); code that talks to it
must respect them:
- `/api/models/<repo>` without a revision answers 401: always pass a revision.
- `model_info(..., files_metadata=True)` leaves sizes None; `list_repo_tree` at a
  revision and the HEAD of a file (`get_hf_file_metadata`) give sizes.
- `model_info` at an unknown commit answers 500 (and the connection it closes breaks the
  next pooled request with a reset); `list_repo_tree` at that commit answers 404.
- HTTP Range is ignored on mirrored files (the whole file comes back).
- a git symlink is served as a plain file holding the link text.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import constants


class LocalHubError(RuntimeError):
    """olah could not be started (the message carries the tail of its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (a small race remains; start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _olah_command(config_path: Path, log_dir: Path) -> list[str]:
    # The console script is a thin wrapper around olah.server:cli; calling it through this
    # interpreter avoids depending on PATH or pyenv shims (which would add a process layer).
    return [sys.executable, "-c", "import sys; from olah.server import cli; sys.exit(cli())",
            "-c", str(config_path), "--log-path", str(log_dir)]


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class LocalHub:
    """olah on 127.0.0.1 serving the git mirrors under `mirror_dir`, as a context manager."""

    def __init__(self, mirror_dir: str | os.PathLike, port: int | None = None,
                 startup_timeout_s: float = constants.LOCAL_HUB_STARTUP_S) -> None:
        self.mirror_dir = Path(mirror_dir).resolve()
        self.host = "127.0.0.1"
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen | None = None
        self._workdir: Path | None = None

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise LocalHubError("LocalHub is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self, port: int) -> Path:
        assert self._workdir is not None
        cfg = self._workdir / "olah.toml"
        cfg.write_text(
            "[basic]\n"
            f"host = {_toml_str(self.host)}\n"
            f"port = {port}\n"
            f"repos-path = {_toml_str(str(self._workdir / 'repos'))}\n"
            f"mirrors-path = [{_toml_str(str(self.mirror_dir))}]\n"
            # mirrors change under a running server in tests: never serve stale metadata
            "metadata-cache-ttl = 0\n"
            "\n[accessibility]\n"
            "offline = true\n"
        )
        return cfg

    def _answers(self) -> bool:
        """Any HTTP answer means the server is up (a missing repo answers 401/404)."""
        url = f"{self.endpoint}/api/models/localhub-probe/none/revision/main"
        try:
            urllib.request.urlopen(url, timeout=1.0).close()
            return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> "LocalHub":
        if self.running:
            return self
        (self.mirror_dir / "models").mkdir(parents=True, exist_ok=True)
        (self.mirror_dir / "datasets").mkdir(parents=True, exist_ok=True)
        self._workdir = Path(tempfile.mkdtemp(prefix="localhub-"))
        fixed_port = self.port
        last_log = ""
        for _attempt in range(3):  # a port picked free may be taken before olah binds it
            port = fixed_port or free_port(self.host)
            self.port = port
            cfg = self._write_config(port)
            log_path = self._workdir / "olah.out"
            with open(log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    _olah_command(cfg, self._workdir / "logs"), cwd=self._workdir,
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own process group: stop() ends it and only it
                )
            deadline = time.monotonic() + self.startup_timeout_s
            while time.monotonic() < deadline and self._proc.poll() is None:
                if self._answers():
                    return self
                time.sleep(0.1)
            last_log = log_path.read_text(errors="replace")[-2000:]
            self._terminate()
            if fixed_port:
                break
        workdir, self._workdir = self._workdir, None
        shutil.rmtree(workdir, ignore_errors=True)
        self.port = fixed_port
        raise LocalHubError(f"olah did not start on {self.host} (mirrors {self.mirror_dir}); log:\n{last_log}")

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL olah at once, like a crash (open transfers are cut, not finished); the
        working dir stays until stop()."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def stop(self) -> None:
        """Stop olah (SIGTERM: uvicorn finishes open responses) and remove its working dir;
        the mirrors stay. Safe to call twice."""
        self._terminate()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def log_tail(self, chars: int = 4000) -> str:
        if self._workdir is None or not (self._workdir / "olah.out").exists():
            return ""
        return (self._workdir / "olah.out").read_text(errors="replace")[-chars:]

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort: never leave a server behind
        try:
            self._terminate()
        except Exception:  # noqa: BLE001 - interpreter shutdown; nothing useful to report
            return
