"""What stands between the network and the page: the names the server answers to (against DNS
rebinding), its token, and a bound on the connections it holds (against a flood of idle ones)."""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import socket
from urllib.parse import unquote, urlsplit

from aiohttp import web

COOKIE = "streamdet_token"
# Connections held at once.  Past this, the oldest connection that never made a request is closed
# for the new one, so a flood of idle connections cannot lock out a real request (nor use up the
# process's open files: the unit sets LimitNOFILE well above it).
MAX_CONNECTIONS = 512
# A connection that sends no complete request for this long is closed (aiohttp's default keeps it an hour).
IDLE_S = 10.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_names(listen_host: str, extra: tuple[str, ...] = ()) -> frozenset[str]:
    """The names a request's Host may carry besides any IP address: loopback's, this machine's,
    the --listen host and the --allow-host names."""
    names = {"localhost", listen_host, socket.gethostname(), socket.getfqdn(), *extra}
    return frozenset(n.lower().rstrip(".") for n in names if n)


def host_of(header: str) -> str:
    """The name in a Host header, without its port (and an IPv6 address without brackets)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0].rstrip(".") if header.count(":") == 1 else header.rstrip(".")


def host_allowed(header: str, names: frozenset[str]) -> bool:
    """An IP address cannot be rebound, and *.localhost is loopback in every browser; any other
    name must be one the server is known by.  A page of another site whose name an attacker points
    at this machine (DNS rebinding) sends its own name and is refused."""
    host = host_of(header)
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host in names or host.endswith(".localhost")


def query_token(request: web.Request) -> str | None:
    """`?token=` as it was pasted: only %-escapes decoded, so a '+' of a base64 token stays a '+'."""
    for part in request.rel_url.raw_query_string.split("&"):
        key, sep, value = part.partition("=")
        if sep and unquote(key) == "token":
            return unquote(value)
    return None


def guard(token: str | None, names: frozenset[str], served: set[int]):
    """Every request: its Host must be one of `names` (or an address); with a token it must carry
    it, an explicit one first (`?token=`, then `Authorization: Bearer`), the cookie last, so that
    a stale cookie never hides a new token; `?token=` sets the cookie."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        served.add(id(request.protocol))
        if not host_allowed(request.headers.get("Host", ""), names):
            return web.Response(status=421, text="streamdet web: this server is not known by that name; start it with --allow-host NAME to add one\n")
        if token is None:
            return await handler(request)
        from_query = query_token(request)
        bearer = request.headers.get("Authorization", "")
        given = from_query or (bearer[7:].strip() if bearer.startswith("Bearer ") else None) or request.cookies.get(COOKIE)
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            return web.Response(status=401, text="streamdet web: this page needs its token: open it as /?token=... (the --token-file's content)\n")
        response = await handler(request)
        if from_query and isinstance(response, web.Response):
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    return middleware


CSRF_HEADER = "X-Streamdet-Csrf"


def change_refused(request: web.Request, csrf: str) -> str | None:
    """Why a request that changes the station (a review) must be refused, or None.  Beyond the
    token (the middleware), it must come from this server's own page: its Origin names the Host it
    was sent to (a page of another site sends its own), and it carries the per-server secret the
    page read from /api/state, which another origin cannot read.  A JSON body with that header
    also makes a browser ask first (CORS preflight), which this server never grants."""
    origin = request.headers.get("Origin")
    if not origin:
        return "a change must come from the station's page (no Origin)"
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        netloc = ""
    if not netloc or netloc != request.headers.get("Host", "").strip().lower():
        return "a page of another site cannot change this station"
    if not hmac.compare_digest(request.headers.get(CSRF_HEADER, "").encode(), csrf.encode()):
        return "the page's session is out of date: reload it"
    if request.content_type != "application/json":
        return "expected a JSON body"
    return None


class CappedSite(web.TCPSite):
    """A TCP site holding at most about `limit` connections: a new one past that closes the oldest
    that never made a request (when every one has, the new one is let in over the limit)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, served: set[int], limit: int = MAX_CONNECTIONS):
        super().__init__(runner, host, port)
        self.served, self.limit, self.evicted = served, limit, 0

    def _protocol(self):
        server = self._runner.server
        # Closed ones leave the list a moment later: count and choose among those still open (a
        # burst of accepts comes before any of them has gone).
        open_now = [c for c in server.connections if c.transport is not None and not c.transport.is_closing()]
        if len(open_now) >= self.limit:
            self.served.intersection_update(id(c) for c in server.connections)  # forget the connections that have gone
            victim = next((c for c in open_now if id(c) not in self.served), None)
            if victim is not None:
                victim.transport.close()
                self.evicted += 1
        return server()

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self._host, self._port, backlog=self._backlog, reuse_address=True)
