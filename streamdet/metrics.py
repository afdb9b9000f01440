"""Prometheus metrics of a running daemon (`run --metrics HOST:PORT`), read from its channels at
each scrape and served by prometheus_client, an optional extra."""
from __future__ import annotations

import re
import time

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


def serve(daemon, address: str):
    """Start the HTTP server in a thread; returns it (shut it down on exit)."""
    host, port = parse_address(address)
    require()
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsError(f"metrics address {address}: cannot listen there ({exc.strerror})") from None
    return server
