"""A hub stand-in on 127.0.0.1 whose failures a test controls.

`FaultHub(upstream)` forwards every request to `upstream` (olah) unchanged, until a test
sets `.mode`:

  "proxy"   forward (the default)
  "404" / "401" / "500"   answer every request with that status
  "hang"    accept the request and never answer (until the hub is stopped)
  "die"     forward metadata, but cut a weight file's body half way and close the socket
  "down"    close every connection at once without an answer

Only the standard library: a ThreadingHTTPServer and http.client.
"""
from __future__ import annotations

import http.client
import http.server
import socket
import itertools
import threading
from urllib.parse import urlsplit

from tests.reliability import tally

_hubs = itertools.count()

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "content-length"}


class FaultHub:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.mode = "proxy"
        self.serial = next(_hubs)
        self.requests: list[tuple[str, str]] = []  # (method, path) seen, any mode
        self._release = threading.Event()  # set on stop: hanging handlers return
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                return

            def _serve(self) -> None:
                hub.requests.append((self.command, self.path))
                mode = hub.mode
                if mode not in ("proxy", "die"):  # "die" fires only where a body is cut (below)
                    hub.fired(mode, self.path)
                if mode == "down":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if mode == "hang":
                    hub._release.wait(120)
                    self.close_connection = True
                    return
                if mode in ("404", "401", "500"):
                    body = b'{"error": "fault injected"}'
                    self.send_response(int(mode))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                    return
                self._forward(cut=(mode == "die"))

            def _forward(self, cut: bool) -> None:
                up = urlsplit(hub.upstream)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() in HOP_BY_HOP:
                        continue
                    if k.lower() == "location":
                        v = v.replace(hub.upstream, hub.endpoint)
                    self.send_header(k, v)
                if self.command == "HEAD":  # no body: pass the size of the file on
                    if resp.getheader("Content-Length") is not None:
                        self.send_header("Content-Length", resp.getheader("Content-Length"))
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                weights = self.path.split("?")[0].endswith(".safetensors")
                if cut and weights and resp.status == 200 and len(data) > 1:
                    hub.fired("die", self.path)
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            do_GET = do_HEAD = do_POST = _serve

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def fired(self, mode: str, path: str) -> None:
        """A request met the fault: one fault per hub, mode and URL (retries of it count once)."""
        tally.fault_fired(f"hub {mode}", (self.serial, mode, path.split("?")[0]))

    def start(self) -> "FaultHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
