"""Who may use the web app: the access token, the Host check and the cross-site check.

The model: the device is reached over a local network, by people who were given
its token. The server binds to 127.0.0.1 unless told otherwise; binding to any
other address needs a token, generated at first start and kept with mode 0600
beside the class store (``classes.db.token``), or given by the user
(``--token-file``). The token is checked on every API call and on the stream
(``Authorization: Bearer``, or the HttpOnly ``SameSite=Strict`` cookie that
``/?token=...`` or ``POST /api/v1/login`` sets). There is no TLS: put a
reverse proxy with TLS in front to cross an untrusted network.

Three more checks hold with or without a token:

* **Host**: on a loopback bind only ``127.0.0.1``, ``localhost`` and ``[::1]``
  (plus ``--allow-host`` names) are served, so a web page cannot reach the
  device through a DNS name that resolves to 127.0.0.1 (DNS rebinding).
* **Cross-site**: a state-changing request (POST, PUT, DELETE) whose ``Origin``
  is not this server, or whose ``Sec-Fetch-Site`` says another site sent it, is
  refused: another page the user has open cannot drive the device.
* **Constant time**: tokens are compared with :func:`hmac.compare_digest`.

Device side: no torch (DESIGN.md rule 1).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from edgefs.errors import EdgefsError

COOKIE = "edgefs_token"
TOKEN_SUFFIX = ".token"
TOKEN_BYTES = 24
ENV_TOKEN = "EDGEFS_SERVE_TOKEN"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_path(store: str | Path) -> Path:
    """Where the generated token of a store lives: beside it, ``<store>.token``."""
    return Path(f"{store}{TOKEN_SUFFIX}")


def read_token_file(path: Path) -> str:
    """The token in ``path`` (first line, stripped).

    Raises:
        EdgefsError: missing, unreadable, empty, too short, or readable by other users.
    """
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EdgefsError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise EdgefsError(f"the token file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise EdgefsError(f"the token file {path} can be read by other users (mode {st.st_mode & 0o777:o}); "
                          f"run 'chmod 600 {path}'")
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(token) < 16:
        raise EdgefsError(f"the token in {path} is shorter than 16 characters; use a long random one, or delete "
                          "the file to have edgefs generate one")
    return token


def write_token_file(path: Path) -> str:
    """Write a new random token to ``path`` with mode 0600 (replacing the old one atomically); return it."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EdgefsError(f"cannot write the token file {path}: {exc.strerror or exc}; "
                          "choose a store in a folder you can write, or give --token-file") from None
    return token


def resolve_token(host: str, store: str | Path, *, token_file: str | Path | None = None,
                  require: bool = False, rotate: bool = False) -> tuple[str | None, str]:
    """The token the server checks (None: no token), and a line saying where it comes from.

    Order: ``token_file``; the ``EDGEFS_SERVE_TOKEN`` environment variable; the store's own
    token file (generated at first start, or anew with ``rotate``). A loopback bind needs none
    unless ``require``; any other address always needs one.
    """
    if token_file is not None:
        return read_token_file(Path(token_file)), f"token from {token_file}"
    env = os.environ.get(ENV_TOKEN, "").strip()
    if env:
        if len(env) < 16:
            raise EdgefsError(f"{ENV_TOKEN} is shorter than 16 characters; use a long random token")
        return env, f"token from ${ENV_TOKEN}"
    if is_loopback(host) and not require and not rotate:
        return None, "no token: bound to loopback, only this machine can connect"
    path = token_path(store)
    if rotate or not path.exists():
        token = write_token_file(path)
        return token, f"{'new ' if rotate else 'generated '}token written to {path} (mode 0600)"
    return read_token_file(path), f"token from {path}"


@dataclass
class Refusal:
    """Why a request is refused: HTTP status and a message that says what to do."""

    status: int
    message: str


@dataclass
class Guard:
    """The checks every request passes (module docstring).

    Args:
        token: the access token, or None for none.
        allowed_hosts: host names served (without port); None: any (a non-loopback bind with a token).
    """

    token: str | None
    allowed_hosts: frozenset[str] | None = field(default=None)

    @classmethod
    def for_bind(cls, host: str, token: str | None, extra_hosts: tuple[str, ...] = ()) -> Guard:
        allowed = None
        if is_loopback(host):
            allowed = frozenset(LOOPBACK_NAMES | {host.strip("[]")} | {h.lower() for h in extra_hosts})
        return cls(token, allowed)

    def check_host(self, host_header: str | None) -> Refusal | None:
        if self.allowed_hosts is None:
            return None
        name = _host_name(host_header or "")
        if name not in self.allowed_hosts:
            return Refusal(403, f"this device does not answer to the host name {name!r}; open it as "
                                "http://127.0.0.1:PORT/ (or start it with --allow-host NAME)")
        return None

    def check_token(self, bearer: str | None, cookie: str | None, query: str | None) -> Refusal | None:
        if self.token is None:
            return None
        for given in (bearer, cookie, query):
            if given and hmac.compare_digest(given.encode(), self.token.encode()):
                return None
        what = "a wrong access token" if (bearer or cookie or query) else "no access token"
        return Refusal(401, f"{what}: open the page as /?token=TOKEN, or send 'Authorization: Bearer TOKEN'; "
                            "the token is in the file printed when edgefs serve started")

    def matches(self, given: str) -> bool:
        return self.token is None or hmac.compare_digest(given.encode(), self.token.encode())

    @staticmethod
    def check_same_origin(method: str, origin: str | None, fetch_site: str | None, scheme: str,
                          host_header: str | None) -> Refusal | None:
        """A state-changing request must come from this server's own pages (or from a non-browser client)."""
        if method in SAFE_METHODS:
            return None
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return Refusal(403, f"cross-site request refused (Sec-Fetch-Site: {fetch_site}); use the device's "
                                "own pages or a non-browser client")
        if origin is not None:
            parts = urlsplit(origin)
            if origin == "null" or parts.netloc.lower() != (host_header or "").lower() or parts.scheme != scheme:
                return Refusal(403, f"cross-site request refused (Origin {origin!r} is not this device)")
        return None


def _host_name(host_header: str) -> str:
    """``example:8080`` -> ``example``; ``[::1]:8080`` -> ``::1``; lower case."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h
