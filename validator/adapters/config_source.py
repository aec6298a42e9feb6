"""A JSON config document fetched from a file or a URL, refreshed, with a last good copy.

competitions.json and hall_of_fame.json live on GitHub and change under a running
validator. A `ConfigSource` reads one of them from a list of candidate locations (the
first that yields a valid document wins: live tries `competitions-<uid>.json` before
`competitions.json`), re-reads it every `refresh_s` seconds of a monotonic clock, and keeps
the last good copy in memory and on disk (`<state dir>/config/<name>`), so a failed fetch,
a restart without network or `--offline` still has rules to run by. A failed fetch never
replaces the copy in force; `last_error` says why it failed.

Reading is bounded: a file's size is checked before it is read, an HTTP body is refused
past `max_bytes` (by its Content-Length before reading, and while reading), and the JSON
nesting depth and value count are checked before the JSON parser runs (the stdlib parser
recurses: 100,000 nested brackets would raise RecursionError).
"""
from __future__ import annotations

import hashlib
import http.client
import ipaddress
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar

import constants
from validator.core.jsonread import SourceError, decode_json, read_file
from validator.adapters.files import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

T = TypeVar("T")
_LOOPBACK_NAMES = {"localhost"}
_META_MAX_BYTES = 64 * 1024  # the cache's `<name>.source.json` (location, time, sha256)


# --- reading a location ----------------------------------------------------------------------


def is_loopback(host: Optional[str]) -> bool:
    if not host:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _scheme(location: str) -> str:
    return urllib.parse.urlparse(location).scheme.lower() if "://" in location else ""


def describe(location: str, name: str) -> str:
    """'<name> URL <url>' or '<name> file <path>': how messages name a location."""
    return f"{name} URL {location}" if _scheme(location) in ("http", "https") else f"{name} file {location}"


def check_url(url: str, what: str) -> None:
    """Refuse anything but https, and plain http other than on loopback (a man in the middle
    must not be able to rewrite rewards)."""
    parsed = urllib.parse.urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme == "https":
        return
    if scheme == "http":
        if is_loopback(parsed.hostname):
            return
        raise SourceError(f"{what}: plain http is only allowed on loopback (127.0.0.1, localhost); use https")
    raise SourceError(f"{what}: unsupported scheme {scheme!r} (use a path or https://)")


class _CheckedRedirect(urllib.request.HTTPRedirectHandler):
    """github.com/.../raw/... answers with a redirect: follow it only to an allowed URL."""

    def __init__(self, what: str) -> None:
        self.what = what

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        check_url(newurl, f"{self.what} (redirected to {newurl})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_url(url: str, what: str, max_bytes: int, timeout: float) -> bytes:
    check_url(url, what)
    host = urllib.parse.urlparse(url).hostname
    handlers: list[urllib.request.BaseHandler] = [_CheckedRedirect(what)]
    if is_loopback(host):  # a loopback server is never reached through HTTP(S)_PROXY
        handlers.append(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"User-Agent": "coldint-validator"})
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise SourceError(f"{what}: {int(length)} bytes announced, more than the {max_bytes} allowed")
            body = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"{what}: HTTP {exc.code} {exc.reason}", not_found=exc.code == 404) from None
    except urllib.error.URLError as exc:
        raise SourceError(f"{what}: could not fetch ({exc.reason})") from None
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, a truncated body
        raise SourceError(f"{what}: could not fetch ({type(exc).__name__}: {exc})") from None
    if len(body) > max_bytes:
        raise SourceError(f"{what}: more than {max_bytes} bytes")
    return body


def read_location(location: str | Path, name: str, *, max_bytes: int, timeout: float) -> bytes:
    """The bytes at a path, a file:// URL, an https:// URL or (loopback only) an http:// URL."""
    text = str(location)
    scheme = _scheme(text)
    if scheme in ("http", "https"):
        return _fetch_url(text, f"{name} URL {text}", max_bytes, timeout)
    if scheme == "file":
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(text).path))
        return read_file(path, f"{name} file {path}", max_bytes)
    if scheme:
        raise SourceError(f"{name} location {text}: unsupported scheme {scheme!r} (use a path or https://)")
    path = Path(text).expanduser()
    return read_file(path, f"{name} file {path}", max_bytes)


# --- the refreshed source ----------------------------------------------------------------------


@dataclass(frozen=True)
class Document(Generic[T]):
    """A good copy of the document: where it came from and what it parsed to."""

    location: str
    raw: bytes
    value: T
    origin: str  # "fetched" | "disk cache" | "fallback"
    fetched_at: Optional[float]  # wall-clock time of the fetch (display only), None if unknown

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


class ConfigSource(Generic[T]):
    """One config document, refreshed from its candidate locations, never lost once read.

    `parse(data)` turns decoded JSON into the value callers use; a ValueError from it makes
    the document bad (the copy in force stays). Candidates are tried in order; one that is
    simply absent (404, no file) before the last is skipped quietly, as live does with
    `competitions-<uid>.json`. With `offline`, http(s) candidates are not fetched."""

    def __init__(self, name: str, candidates: Sequence[str | Path], parse: Callable[[Any], T], *,
                 state_dir: Optional[Path] = None, cache_name: Optional[str] = None,
                 fallback: Optional[Path] = None, offline: bool = False,
                 refresh_s: float, timeout: float, max_bytes: int,
                 max_depth: int = constants.CONFIG_MAX_DEPTH, max_elements: int = constants.CONFIG_MAX_ELEMENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not candidates:
            raise ValueError(f"{name}: no location to read from")
        self.name = name
        self.candidates = [str(c) for c in candidates]
        self.parse = parse
        self.offline = offline
        self.refresh_s = refresh_s
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.max_elements = max_elements
        self.clock = clock
        self.fallback = fallback
        self.cache_path = None if state_dir is None else \
            Path(state_dir) / constants.CONFIG_CACHE_DIR / (cache_name or f"{name}.json")
        self.document: Optional[Document[T]] = None
        self.last_error: Optional[str] = None  # why the last refresh failed; None after a good one
        self.notes: list[str] = []  # what the last refresh wants the operator to know
        self.cache_notes: list[str] = []  # why a cached copy was not used (until a fetch succeeds)
        self.attempted_at: Optional[float] = None  # clock() at the last refresh
        self._load_cache()

    # -- reading ---------------------------------------------------------------------------

    def _read(self, location: str, origin: str) -> Document[T]:
        raw = read_location(location, self.name, max_bytes=self.max_bytes, timeout=self.timeout)
        return self._document(location, raw, origin, time.time())

    def _document(self, location: str, raw: bytes, origin: str, fetched_at: Optional[float]) -> Document[T]:
        what = describe(location, self.name)
        data = decode_json(raw, what, max_depth=self.max_depth, max_elements=self.max_elements)
        try:
            value = self.parse(data)
        except ValueError as exc:
            raise SourceError(f"{what}: {exc}") from None
        return Document(location, raw, value, origin, fetched_at)

    def _load_cache(self) -> None:
        """The copy a previous run kept, if it came from one of today's candidates."""
        if self.cache_path is None or not self.cache_path.exists():
            return
        meta_path = self._meta_path()
        try:
            meta = decode_json(read_location(meta_path, self.name, max_bytes=_META_MAX_BYTES, timeout=self.timeout),
                               str(meta_path)) if meta_path.exists() else {}
            location = meta.get("location") if isinstance(meta, dict) else None
            if location not in self.candidates:
                self.cache_notes.append(f"{self.name}: cached copy {self.cache_path} came from {location!r}, "
                                        f"not from {' or '.join(self.candidates)}; ignored")
                return
            fetched_at = meta.get("fetched_at")
            raw = read_location(self.cache_path, self.name, max_bytes=self.max_bytes, timeout=self.timeout)
            self.document = self._document(location, raw, "disk cache",
                                           fetched_at if isinstance(fetched_at, (int, float)) else None)
        except (SourceError, OSError, ValueError) as exc:
            self.cache_notes.append(f"{self.name}: cached copy {self.cache_path} unusable ({exc}); ignored")

    def _meta_path(self) -> Path:
        assert self.cache_path is not None
        return self.cache_path.with_name(self.cache_path.name + ".source.json")

    def _save_cache(self, doc: Document[T]) -> None:
        if self.cache_path is None:
            return
        try:
            atomic_write_bytes(self.cache_path, doc.raw, crash_points=False)
            atomic_write_json(self._meta_path(), {"location": doc.location, "fetched_at": doc.fetched_at,
                                                  "sha256": doc.sha256}, crash_points=False)
        except OSError as exc:  # the copy in memory is still good; only a restart loses it
            self.notes.append(f"{self.name}: cannot keep a copy in {self.cache_path} ({exc})")

    # -- refreshing ------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Read the candidates now; True when a new good copy is in force, False when the
        previous one (if any) stays and `last_error` says why."""
        self.attempted_at = self.clock()
        self.notes = []
        errors: list[str] = []
        for n, location in enumerate(self.candidates):
            last = n == len(self.candidates) - 1
            if self.offline and _scheme(location) in ("http", "https"):
                errors.append(f"{describe(location, self.name)}: not fetched (offline)")
                continue
            try:
                doc = self._read(location, "fetched")
            except SourceError as exc:
                if exc.not_found and not last:
                    log.debug("%s; trying the next location", exc)  # live: silent for competitions-<uid>.json
                else:
                    errors.append(str(exc))
                continue
            if errors:  # an earlier candidate was there but bad
                self.notes.append("; ".join(errors) + f"; using {location}")
            self.document = doc
            self.last_error = None
            self.cache_notes = []
            self._save_cache(doc)
            return True
        if self.offline and all(e.endswith("(offline)") for e in errors) and self.document is not None:
            self.last_error = None  # offline with a copy: nothing went wrong
            self.notes.append(f"{self.name}: offline, using the {self._in_force()}")
            return False
        self.last_error = "; ".join(errors) or f"{self.name}: nothing could be read"
        if self.document is None and self.fallback is not None:
            try:
                self.document = self._document(str(self.fallback), read_location(
                    self.fallback, self.name, max_bytes=self.max_bytes, timeout=self.timeout), "fallback", None)
            except SourceError as exc:
                self.notes.append(f"{self.name}: fallback {self.fallback} unusable ({exc})")
        return False

    def maybe_refresh(self, now: Optional[float] = None) -> bool:
        """Refresh when `refresh_s` has passed on the monotonic clock since the last attempt
        (or none was made); True if a new good copy is in force."""
        now = self.clock() if now is None else now
        if self.attempted_at is not None and now - self.attempted_at < self.refresh_s:
            return False
        return self.refresh()

    # -- what callers read -----------------------------------------------------------------

    @property
    def value(self) -> Optional[T]:
        return None if self.document is None else self.document.value

    @property
    def location(self) -> str:
        """Where the copy in force came from, else the first candidate."""
        return self.document.location if self.document is not None else self.candidates[0]

    def _in_force(self) -> str:
        doc = self.document
        if doc is None:
            return "nothing"
        if doc.origin == "fallback":
            return f"copy shipped with the validator ({doc.location})"
        if doc.origin == "disk cache":
            when = "" if doc.fetched_at is None else \
                time.strftime(" fetched %Y-%m-%d %H:%M:%S UTC", time.gmtime(doc.fetched_at))
            return f"cached copy of {doc.location}{when}"
        return f"copy of {doc.location}"

    def problems(self) -> list[str]:
        """Lines a step report can show: the last failure and what stays in force, and notes."""
        out = self.cache_notes + self.notes
        if self.last_error is not None:
            keep = f"the last good config stays in force (the {self._in_force()})" if self.document is not None \
                else "nothing loaded"
            out.append(f"{self.last_error}; {keep}")
        return out


class SourceBacked:
    """What a config held by a ConfigSource offers its callers (competitions, hall of fame):
    reload now or on its interval, and say where it comes from and what went wrong."""

    source: ConfigSource

    def reload(self) -> bool:
        """Read again now; True when the new copy is in force, False when the old one is kept."""
        return self.source.refresh()

    def maybe_reload(self, now: Optional[float] = None) -> bool:
        """Reload when `refresh_s` has passed on the monotonic clock since the last attempt."""
        return self.source.maybe_refresh(now)

    @property
    def last_error(self) -> Optional[str]:
        return self.source.last_error

    @property
    def location(self) -> str:
        return self.source.location
