"""Every message body of schema v1, built in one place.

`FIELDS` lists each type's fields (beyond the envelope `v`, `type`, `ts`, `run_id`); the README's
schema table is checked against it by a test, and so is every message a real run sends.
"""
from __future__ import annotations

import time

SCHEMA_VERSION = 1
ENVELOPE = ("v", "type", "ts", "run_id")

FIELDS = {
    "loss": ("source", "seq", "t_start", "t_end", "loss", "score", "anomaly", "silent", "energy_db", "file", "offset"),
    "event": ("source", "event_id", "state", "onset", "peak_score", "band_hz", "offset", "duration", "windows", "clip", "file", "file_onset"),
    "gap": ("source", "t", "samples", "duration_s", "reason", "seq_next"),
    "source_down": ("source", "t", "seq_next", "reason"),
    "source_up": ("source", "t", "seq_next"),
    "status": ("daemon", "state", "uptime_s", "status_interval_s", "model", "detector", "reloads", "dropped_messages", "subscriber_overflows", "sources"),
}
# The fields of each source in a status message; a source adds its own `describe()`.
SOURCE_STATUS_FIELDS = (
    "kind", "windows", "audio_s", "rtf", "dropped_samples", "gaps", "files_played", "files_skipped",
    "current_file", "events", "latency_ms", "reports", "finished", "recording",
)


def topic(kind: str, source: str | None = None) -> str:
    """`loss.<source>`, `event.<source>`, `gap.<source>`, `source.<source>`, or `status`."""
    if kind == "status":
        return "status"
    return f"{'source' if kind.startswith('source_') else kind}.{source}"


def envelope(kind: str, run_id: str, **fields) -> dict:
    return {"v": SCHEMA_VERSION, "type": kind, "ts": round(time.time(), 6), "run_id": run_id, **fields}


def _r(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


def loss(run_id: str, source: str, seq: int, t_start: float, t_end: float, value: float, score: float,
         silent: bool = False, energy_db: float | None = None, file: str | None = None, offset: float | None = None) -> dict:
    body = envelope("loss", run_id, source=source, seq=seq, t_start=_r(t_start), t_end=_r(t_end), loss=_r(value, 6), score=_r(score, 6), anomaly=score >= 0.5)
    if silent:
        body["silent"] = True  # digital silence: a muted or dead input, scored 0
    elif energy_db is not None:
        body["energy_db"] = _r(energy_db, 3)
    if file is not None:
        body["file"], body["offset"] = file, _r(offset)
    return body


def event(run_id: str, source: str, transition: dict, file: str | None = None, file_onset: float | None = None) -> dict:
    """A tracker transition (`state` start or end) as a message; `clip` is added when one is recorded."""
    body = envelope("event", run_id, source=source, **{k: _r(v) if isinstance(v, float) else v for k, v in transition.items()})
    if file is not None:
        body["file"], body["file_onset"] = file, _r(file_onset)
    return body


def gap(run_id: str, source: str, seq_next: int, t: float, samples: int | None, rate: int, reason: str) -> dict:
    return envelope("gap", run_id, source=source, t=_r(t), samples=samples, duration_s=None if samples is None else _r(samples / rate), reason=reason, seq_next=seq_next)


def source_down(run_id: str, source: str, seq_next: int, t: float, reason: str) -> dict:
    return envelope("source_down", run_id, source=source, t=_r(t), seq_next=seq_next, reason=reason)


def source_up(run_id: str, source: str, seq_next: int, t: float) -> dict:
    return envelope("source_up", run_id, source=source, t=_r(t), seq_next=seq_next)


def source_status(kind: str, windows: int, audio_s: float, wall_s: float, dropped_samples: int, gaps: int, files_played: int, files_skipped: int,
                  current_file: str | None, events: int, latency_ms: dict | None, reports: list, finished: bool, extra: dict) -> dict:
    """One source's entry in a status message; `extra` is its recording and the source's own description."""
    return {
        "kind": kind, "windows": windows, "audio_s": _r(audio_s, 3), "rtf": round(audio_s / max(wall_s, 1e-9), 2),
        "dropped_samples": dropped_samples, "gaps": gaps, "files_played": files_played, "files_skipped": files_skipped,
        "current_file": current_file, "events": events,
        "latency_ms": None if latency_ms is None else {k: _r(v, 3) for k, v in latency_ms.items()},
        "reports": reports, "finished": finished, **extra,
    }


def status(run_id: str, daemon: str, state: str, uptime_s: float, status_interval_s: float, model: dict, detector: dict, reloads: dict, dropped_messages: int, subscriber_overflows: int, sources: dict) -> dict:
    return envelope("status", run_id, daemon=daemon, state=state, uptime_s=_r(uptime_s, 3), status_interval_s=status_interval_s, model=model, detector=detector,
                    reloads=reloads, dropped_messages=dropped_messages, subscriber_overflows=subscriber_overflows, sources=sources)
