"""ZeroMQ's own CURVE encryption and authentication for the bus, with zmq.auth's certificate files.

A binding socket (a daemon's bus, the proxy's two ends) is a CURVE server: it holds its secret
certificate and accepts only clients whose public certificates are in an allowed folder.  A
connecting socket (a station into a proxy, any subscriber) is a CURVE client: it holds its own
secret certificate and the server's public one.  `streamdet keys` makes certificate pairs.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from streamdet.errors import one_line


class SecurityError(Exception):
    pass


@dataclass(frozen=True)
class Curve:
    secret_key: str  # this end's certificate, public and secret key (NAME.key_secret)
    clients: str | None = None  # server: the folder of allowed clients' public certificates
    server_key: str | None = None  # client: the server's public certificate (NAME.key)


def _keys(path: str, what: str, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, private = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{what} {path}: not a readable CURVE certificate ({one_line(exc, 80)}); make one with `streamdet keys`") from None
    if secret and private is None:
        raise SecurityError(f"{what} {path}: holds no secret key (use the .key_secret file)")
    return public, private


KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _certificate(public: bytes, secret: bytes | None) -> bytes:
    """A certificate in zmq.auth's format (what zmq.auth.load_certificate reads)."""
    kind = "Secret" if secret else "Public"
    lines = [f"#   ZeroMQ CURVE {kind} Certificate, made by streamdet keys", "", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return ("\n".join(lines) + "\n").encode()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write `path` with `mode` from its first byte, whatever the umask: a fresh file in the same
    folder, created with that mode (O_EXCL: never an existing file or a planted link), filled,
    then renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask can only have narrowed it; make it exactly `mode`
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def make_keys(folder: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """NAME.key (public: give it to peers) and NAME.key_secret (keep it: mode 600 from its first
    byte) in `folder`.  An existing pair is replaced only with `force`; every problem is a
    SecurityError of one line."""
    if not KEY_NAME.fullmatch(name) or ".." in name:
        raise SecurityError(f"--name {name[:40]!r}: expected a plain file name stem (letters, digits, '.', '_', '-'; no '/' or '..')")
    folder = Path(folder)
    public_path, secret_path = folder / f"{name}.key", folder / f"{name}.key_secret"
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError("not a folder")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in (public_path, secret_path):
            if not force and (path.exists() or path.is_symlink()):
                raise SecurityError(f"{path}: exists already (a new pair cuts off every peer holding the old one); pass --force to replace it")
        public, secret = zmq.curve_keypair()
        _write_new(secret_path, _certificate(public, secret), 0o600)
        _write_new(public_path, _certificate(public, None), 0o644)
    except FileExistsError:
        raise SecurityError(f"{folder}: another `streamdet keys` is writing there") from None
    except OSError as exc:
        raise SecurityError(f"{folder}: cannot write keys there ({one_line(exc, 100)})") from None
    return public_path, secret_path


_authenticators: dict[int, ThreadAuthenticator] = {}


def secure_server(socket: zmq.Socket, curve: Curve) -> None:
    """Make a socket that binds a CURVE server admitting only the allowed clients."""
    if not curve.clients or not Path(curve.clients).is_dir():
        raise SecurityError(f"curve clients {curve.clients}: expected a folder of allowed clients' public certificates (NAME.key)")
    public, private = _keys(curve.secret_key, "curve secret key", secret=True)
    context = socket.context
    auth = _authenticators.get(id(context))
    if auth is None:  # one authenticator per context, started once
        auth = _authenticators[id(context)] = ThreadAuthenticator(context)
        auth.start()
    auth.configure_curve(domain="*", location=str(curve.clients))
    socket.curve_secretkey, socket.curve_publickey, socket.curve_server = private, public, True


def secure_client(socket: zmq.Socket, curve: Curve) -> None:
    """Make a socket that connects a CURVE client of the server whose public key it holds."""
    if not curve.server_key:
        raise SecurityError("curve server key: expected the server's public certificate (NAME.key)")
    public, private = _keys(curve.secret_key, "curve secret key", secret=True)
    server, _ = _keys(curve.server_key, "curve server key", secret=False)
    socket.curve_secretkey, socket.curve_publickey, socket.curve_serverkey = private, public, server


def reload_clients(context: zmq.Context, curve: Curve) -> int:
    """Read the allowed clients' folder again (SIGHUP): a certificate removed from it admits no
    new connection from now on, one added does.  Returns how many are allowed."""
    auth = _authenticators.get(id(context))
    if auth is None:
        raise SecurityError("curve: no authenticator runs for this bus (was it started with CURVE?)")
    if not curve.clients or not Path(curve.clients).is_dir():
        raise SecurityError(f"curve clients {curve.clients}: expected a folder of allowed clients' public certificates (NAME.key)")
    auth.configure_curve(domain="*", location=str(curve.clients))
    return len(auth.certs.get("*", {}))


def stop_authenticators() -> None:
    while _authenticators:
        _authenticators.popitem()[1].stop()
