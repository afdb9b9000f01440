"""`streamdet proxy`: ZeroMQ's own XSUB/XPUB proxy, so that many daemons publish into one endpoint
and subscribers connect to one.  Subscriptions travel upstream to every daemon, so a daemon's
--wait-subscribers works through it; each source keeps its own contiguous seq."""
from __future__ import annotations

import logging
import signal
import threading

import zmq

from streamdet.bus.sockets import MAX_MESSAGE_BYTES, MAX_SUBSCRIPTION_BYTES, BusError

log = logging.getLogger(__name__)


def run_proxy(frontend: str, backend: str, hwm: int = 1_000_000, curve=None) -> None:
    """With `curve` (streamdet.bus.security.Curve), both ends are CURVE servers admitting only the
    allowed clients: stations publishing and subscribers alike."""
    context = zmq.Context.instance()
    xsub = context.socket(zmq.XSUB)
    xpub = context.socket(zmq.XPUB)
    if curve is not None:
        from streamdet.bus.security import SecurityError, secure_server

        try:
            secure_server(xsub, curve)
            secure_server(xpub, curve)
        except SecurityError as exc:
            raise BusError(f"proxy: {exc}") from None
    for sock in (xsub, xpub):
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.LINGER, 0)
    xsub.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)  # what stations publish
    xpub.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)  # what subscribers send: subscriptions
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # pass every subscription on, so each daemon can count them
    for sock, endpoint, role in ((xsub, frontend, "frontend"), (xpub, backend, "backend")):
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise BusError(f"proxy --{role}: cannot bind {endpoint} ({zmq.strerror(exc.errno)})") from None

    # The proxy runs in its own thread, steered over a control socket: a signal's handler runs only
    # in the main thread between bytecodes, never while it sits in zmq_proxy, and with CURVE the
    # kernel may hand the signal to the authenticator's thread, leaving zmq_proxy uninterrupted.
    control = f"inproc://streamdet-proxy-control-{id(xsub)}"
    steer, steered = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    steered.bind(control)
    steer.connect(control)
    proxy = threading.Thread(target=_proxy, args=(xsub, xpub, steered), name="proxy", daemon=True)
    stop, reload = threading.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    log.info("proxy: daemons publish to %s, subscribers connect to %s", xsub.getsockopt_string(zmq.LAST_ENDPOINT), xpub.getsockopt_string(zmq.LAST_ENDPOINT))
    proxy.start()
    try:
        while proxy.is_alive() and not stop.wait(0.2):
            if reload.is_set():
                reload.clear()
                _reload(context, curve)
    finally:
        from streamdet.bus.security import stop_authenticators

        steer.send(b"TERMINATE")
        proxy.join(5)
        for sock in (steer, steered, xsub, xpub):
            sock.close(0)
        stop_authenticators()
        log.info("proxy stopped")


def _reload(context, curve) -> None:
    """SIGHUP: the allowed clients' folder read again, so that a removed key admits no new connection."""
    if curve is None:
        log.info("proxy: SIGHUP: nothing to reload without CURVE")
        return
    from streamdet.bus.security import SecurityError, reload_clients

    try:
        log.info("proxy: reloaded: %d allowed client key(s) from %s; connections already open stay until they close", reload_clients(context, curve), curve.clients)
    except SecurityError as exc:
        log.error("proxy: reload rejected, still admitting the previous keys: %s", exc)


def _proxy(xsub, xpub, control) -> None:
    try:
        zmq.proxy_steerable(xsub, xpub, None, control)
    except zmq.ContextTerminated:
        pass
