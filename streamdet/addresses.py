"""How the addresses a config or a command line names are written: ZeroMQ endpoints, the metrics
HOST:PORT and MQTT broker URLs. Plain text rules, no imports, so that checking a config never
loads a network library."""
from __future__ import annotations

import re


class AddressError(ValueError):
    """An address as written cannot be used; the message says what was expected."""


def endpoint_problem(endpoint: str) -> str | None:
    """What is wrong with a ZeroMQ endpoint as written, or None."""
    if not re.match(r"^(tcp|ipc|inproc)://.+", endpoint):
        return f"expected a ZeroMQ endpoint such as tcp://127.0.0.1:5556, found {endpoint[:60]!r}"
    if (port := re.match(r"^tcp://.*:(\d+)$", endpoint)) and not 1 <= int(port.group(1)) <= 65535:
        return f"expected a TCP port from 1 to 65535, found {port.group(1)[:12]}"
    return None


def host_port(address: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT or [IPv6]:PORT; an empty host is loopback."""
    match = re.fullmatch(r"\[?([^\[\]]*?)\]?:(\d{1,5})", address)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise AddressError(f"expected HOST:PORT such as 127.0.0.1:9108, found {address[:60]!r}")
    return match.group(1) or "127.0.0.1", int(match.group(2))


def broker_address(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of mqtt://HOST[:PORT] or mqtts://HOST[:PORT]."""
    match = re.fullmatch(r"(mqtts?)://([^:/\s]+)(?::(\d{1,5}))?/?", url)
    if not match:
        raise AddressError(f"expected mqtt://HOST:PORT or mqtts://HOST:PORT, found {url[:60]!r}")
    tls = match.group(1) == "mqtts"
    return match.group(2), int(match.group(3) or (8883 if tls else 1883)), tls
