"""Prometheus metrics of a running daemon (`run --metrics HOST:PORT`), read from one snapshot of
its counters at each scrape (the one `status` publishes) and served by prometheus_client, an
optional extra."""
from __future__ import annotations

import socket
import threading
from http.server import ThreadingHTTPServer

from streamdet.addresses import AddressError, host_port

INSTALL = "pip install 'streamdet[metrics]' (in this checkout: .venv/bin/pip install -e '.[metrics]')"


class MetricsError(Exception):
    pass


class DaemonCollector:
    """One scrape: per source windows, events, gaps, dropped samples, files, latency and real-time
    factor; per daemon messages dropped, subscriber overflows, reloads and the model."""

    def __init__(self, snapshot):
        self.snapshot = snapshot  # () -> DaemonStats, read once per scrape

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily

        d = self.snapshot()
        counters = {
            "windows": "windows scored", "events": "bird events ended", "gaps": "gaps in the audio",
            "dropped_samples": "samples lost to a full ring buffer", "files_played": "files played, in whole or in part",
            "files_skipped": "files skipped, with a reason",
        }
        for name, text in counters.items():
            family = CounterMetricFamily(f"streamdet_{name}", f"Per source: {text}.", labels=["source"])
            for source, s in d.sources.items():
                family.add_metric([source], getattr(s, name))
            yield family
        rtf = GaugeMetricFamily("streamdet_realtime_factor", "Per source: seconds of audio scored per wall-clock second since it started.", labels=["source"])
        up = GaugeMetricFamily("streamdet_source_up", "Per source: 1 while it delivers audio (a replay until it has finished).", labels=["source"])
        latency = HistogramMetricFamily("streamdet_latency_seconds", "Per source: from the arrival of the audio completing a window to its message being sent.", labels=["source"])
        for source, s in d.sources.items():
            rtf.add_metric([source], s.rtf)
            up.add_metric([source], 1.0 if s.up else 0.0)
            latency.add_metric([source], s.latency_buckets, s.latency_sum)
        yield from (rtf, up, latency)
        yield CounterMetricFamily("streamdet_dropped_messages", "Replay messages given up at the shutdown deadline.", value=d.dropped_messages)
        yield CounterMetricFamily("streamdet_subscriber_overflows", "Times a subscriber's queue was found full (live sources).", value=d.subscriber_overflows)
        reloads = CounterMetricFamily("streamdet_reloads", "SIGHUP reloads, by outcome.", labels=["outcome"])
        reloads.add_metric(["done"], d.reloads["done"])
        reloads.add_metric(["rejected"], d.reloads["rejected"])
        yield reloads
        yield InfoMetricFamily("streamdet_model", "The model in use.", value={k: str(d.model.get(k)) for k in ("path", "sha256", "mode", "polarity", "device", "trained_at")})


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


def serve(snapshot, address: str):
    """Start the HTTP server in a thread; returns it (shut it down on exit)."""
    try:
        host, port = host_port(address)
    except AddressError as exc:
        raise MetricsError(f"metrics address: {exc}") from None
    require()
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import MetricsHandler

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(snapshot))
    handler = type("Handler", (MetricsHandler.factory(registry),), {"timeout": CLIENT_TIMEOUT_S, "log_message": lambda *_: None})
    try:
        server = (BoundedServer6 if ":" in host else BoundedServer)((host, port), handler)
    except OSError as exc:
        raise MetricsError(f"metrics address {address}: cannot listen there ({exc.strerror})") from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
