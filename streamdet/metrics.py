"""Prometheus metrics of a running daemon (`run --metrics HOST:PORT`), read from its channels at
each scrape and served by prometheus_client, an optional extra."""
from __future__ import annotations

import re
import socket
import threading
import time
from http.server import ThreadingHTTPServer

INSTALL = "pip install 'streamdet[metrics]' (in this checkout: .venv/bin/pip install -e '.[metrics]')"


class MetricsError(Exception):
    pass


def parse_address(address: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[?([^\[\]]*?)\]?:(\d{1,5})", address)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise MetricsError(f"metrics address: expected HOST:PORT such as 127.0.0.1:9108, found {address[:60]!r}")
    return match.group(1) or "127.0.0.1", int(match.group(2))


class DaemonCollector:
    """One scrape: per source windows, events, gaps, dropped samples, files, latency and real-time
    factor; per daemon messages dropped, subscriber overflows, reloads and the model."""

    def __init__(self, daemon):
        self.daemon = daemon

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily

        d = self.daemon
        counters = {
            "windows": ("windows scored", lambda c: c.seq),
            "events": ("bird events ended", lambda c: c.events),
            "gaps": ("gaps in the audio", lambda c: c.reader.gaps),
            "dropped_samples": ("samples lost to a full ring buffer", lambda c: c.ring.overwritten),
            "files_played": ("files played, in whole or in part", lambda c: c.files_played),
            "files_skipped": ("files skipped, with a reason", lambda c: c.files_skipped),
        }
        for name, (text, value) in counters.items():
            family = CounterMetricFamily(f"streamdet_{name}", f"Per source: {text}.", labels=["source"])
            for c in d.channels:
                family.add_metric([c.name], value(c))
            yield family
        rtf = GaugeMetricFamily("streamdet_realtime_factor", "Per source: seconds of audio scored per wall-clock second since it started.", labels=["source"])
        up = GaugeMetricFamily("streamdet_source_up", "Per source: 1 while it delivers audio (a replay until it has finished).", labels=["source"])
        latency = HistogramMetricFamily("streamdet_latency_seconds", "Per source: from the arrival of the audio completing a window to its message being sent.", labels=["source"])
        now = time.monotonic()
        for c in d.channels:  # read without locks: counters, never containers the loop may be changing
            rtf.add_metric([c.name], c.reader.samples_read / c.reader.rate / max(now - c.started_at, 1e-9))
            up.add_metric([c.name], 0.0 if c.finished or getattr(c.source, "state", "up") == "down" else 1.0)
            latency.add_metric([c.name], c.latency_histogram.cumulative(), c.latency_histogram.sum)
        yield from (rtf, up, latency)
        yield CounterMetricFamily("streamdet_dropped_messages", "Replay messages given up at the shutdown deadline.", value=d.publisher.dropped)
        yield CounterMetricFamily("streamdet_subscriber_overflows", "Times a subscriber's queue was found full (live sources).", value=d.publisher.overflows)
        reloads = CounterMetricFamily("streamdet_reloads", "SIGHUP reloads, by outcome.", labels=["outcome"])
        reloads.add_metric(["done"], d.reloads["done"])
        reloads.add_metric(["rejected"], d.reloads["rejected"])
        yield reloads
        model = d.model.describe()
        yield InfoMetricFamily("streamdet_model", "The model in use.", value={k: str(model.get(k)) for k in ("path", "sha256", "mode", "polarity", "device", "trained_at")})


def require() -> None:
    """Before anything starts: one line when the extra is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MetricsError(f"metrics.address: prometheus_client is not installed: {INSTALL}") from None


MAX_CLIENTS = 16  # scrapes served at once; one more connection is closed at once
CLIENT_TIMEOUT_S = 3.0  # a client that has not sent its request (or read the answer) by then is dropped


class BoundedServer(ThreadingHTTPServer):
    """A thread per connection, as prometheus_client's own server, but at most MAX_CLIENTS of them:
    a thousand slow clients cannot raise a thousand threads in the daemon."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of connections waits to be closed, not refused by the kernel

    def __init__(self, *args, **kwargs):
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class BoundedServer6(BoundedServer):
    address_family = socket.AF_INET6


def serve(daemon, address: str):
    """Start the HTTP server in a thread; returns it (shut it down on exit)."""
    host, port = parse_address(address)
    require()
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import MetricsHandler

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    handler = type("Handler", (MetricsHandler.factory(registry),), {"timeout": CLIENT_TIMEOUT_S, "log_message": lambda *_: None})
    try:
        server = (BoundedServer6 if ":" in host else BoundedServer)((host, port), handler)
    except OSError as exc:
        raise MetricsError(f"metrics address {address}: cannot listen there ({exc.strerror})") from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
