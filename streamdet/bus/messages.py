"""Every message body of schema v1, built in one place.

`FIELDS` lists each type's fields (beyond the envelope `v`, `type`, `ts`, `run_id`); the README's
schema table is checked against it by a test, and so is every message a real run sends.
"""
from __future__ import annotations

import base64
import json
import math
import time

SCHEMA_VERSION = 1
ENVELOPE = ("v", "type", "ts", "run_id")

FIELDS = {
    "loss": ("source", "seq", "t_start", "t_end", "loss", "score", "anomaly", "silent", "energy_db", "file", "offset"),
    "event": ("source", "event_id", "state", "onset", "peak_score", "band_hz", "offset", "duration", "windows", "clip", "file", "file_onset", "cut", "continues"),
    "gap": ("source", "t", "samples", "duration_s", "reason", "seq_next"),
    "source_down": ("source", "t", "seq_next", "reason"),
    "source_up": ("source", "t", "seq_next"),
    "status": ("daemon", "state", "uptime_s", "status_interval_s", "model", "detector", "reloads", "dropped_messages", "subscriber_overflows", "sources"),
    "spec": ("source", "seq", "t", "frame_s", "n_frames", "n_mels", "band_hz", "lo", "hi", "frames"),
}
# The fields of each source in a status message; a source adds its own `describe()`.
SOURCE_STATUS_FIELDS = (
    "kind", "windows", "audio_s", "rtf", "dropped_samples", "gaps", "files_played", "files_skipped",
    "current_file", "events", "latency_ms", "reports", "finished", "recording",
)


def topic(kind: str, source: str | None = None) -> str:
    """`loss.<source>`, `event.<source>`, `gap.<source>`, `source.<source>`, `spec.<source>`, or `status`."""
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


def spec(run_id: str, source: str, seq: int, t: float, frame_s: float, frames, band_hz: tuple[float, float]) -> dict:
    """The model-input frames [n, n_mels] a window added to the picture, as 8-bit levels between
    this message's own `lo` and `hi` (base64, frame after frame, low band first)."""
    import numpy as np

    frames = np.asarray(frames, dtype=np.float32)
    lo, hi = float(frames.min()), float(frames.max())
    return envelope("spec", run_id, source=source, seq=seq, t=_r(t), frame_s=_r(frame_s, 6), n_frames=int(frames.shape[0]), n_mels=int(frames.shape[1]),
                    band_hz=[_r(band_hz[0], 1), _r(band_hz[1], 1)], lo=_r(lo, 3), hi=_r(hi, 3), frames=levels_base64(frames, lo, hi))


def levels_base64(values, lo: float, hi: float) -> str:
    """`values` (frames x bands) as 8-bit levels from `lo` (0) to `hi` (255), clipped, in base64:
    how a spectrogram travels to the page, live (`spec`) or from a clip."""
    import base64

    import numpy as np

    levels = np.clip(np.round((np.asarray(values) - lo) * (255.0 / max(hi - lo, 1e-6))), 0, 255).astype(np.uint8)
    return base64.b64encode(levels.tobytes()).decode("ascii")


def gap(run_id: str, source: str, seq_next: int, t: float, samples: int | None, rate: int, reason: str) -> dict:
    return envelope("gap", run_id, source=source, t=_r(t), samples=samples, duration_s=None if samples is None else _r(samples / rate), reason=reason, seq_next=seq_next)


def source_down(run_id: str, source: str, seq_next: int, t: float, reason: str) -> dict:
    return envelope("source_down", run_id, source=source, t=_r(t), seq_next=seq_next, reason=reason)


def source_up(run_id: str, source: str, seq_next: int, t: float) -> dict:
    return envelope("source_up", run_id, source=source, t=_r(t), seq_next=seq_next)


def source_status(kind: str, windows: int, audio_s: float, rtf: float, dropped_samples: int, gaps: int, files_played: int, files_skipped: int,
                  current_file: str | None, events: int, latency_ms: dict | None, reports: list, finished: bool, extra: dict) -> dict:
    """One source's entry in a status message; `extra` is its recording and the source's own description."""
    return {
        "kind": kind, "windows": windows, "audio_s": _r(audio_s, 3), "rtf": round(rtf, 2),
        "dropped_samples": dropped_samples, "gaps": gaps, "files_played": files_played, "files_skipped": files_skipped,
        "current_file": current_file, "events": events,
        "latency_ms": None if latency_ms is None else {k: _r(v, 3) for k, v in latency_ms.items()},
        "reports": reports, "finished": finished, **extra,
    }


def status(run_id: str, daemon: str, state: str, uptime_s: float, status_interval_s: float, model: dict, detector: dict, reloads: dict, dropped_messages: int, subscriber_overflows: int, sources: dict) -> dict:
    return envelope("status", run_id, daemon=daemon, state=state, uptime_s=_r(uptime_s, 3), status_interval_s=status_interval_s, model=model, detector=detector,
                    reloads=reloads, dropped_messages=dropped_messages, subscriber_overflows=subscriber_overflows, sources=sources)


# What a subscriber relies on, checked once where a message comes in (`read`), so that nothing a
# peer sends can reach a renderer, a table or a broker with a type it does not expect.  Each field:
# a type, or a tuple of types; `NUMBER` is a finite int or float, never a bool.
NUMBER, OPTIONAL_NUMBER = "number", "number or null"
_LIST_OF_2 = "two numbers or null"
TYPES = {
    "loss": {"source": str, "seq": int, "t_start": NUMBER, "t_end": NUMBER, "loss": NUMBER, "score": NUMBER, "anomaly": bool, "silent": bool, "energy_db": NUMBER, "file": str, "offset": NUMBER},
    "event": {"source": str, "event_id": int, "state": str, "onset": NUMBER, "peak_score": NUMBER, "band_hz": _LIST_OF_2, "offset": NUMBER, "duration": NUMBER, "windows": int, "clip": (str, type(None)), "file": str, "file_onset": NUMBER,
              "cut": bool, "continues": int},
    "gap": {"source": str, "t": NUMBER, "samples": (int, type(None)), "duration_s": OPTIONAL_NUMBER, "reason": str, "seq_next": int},
    "source_down": {"source": str, "t": NUMBER, "seq_next": int, "reason": str},
    "source_up": {"source": str, "t": NUMBER, "seq_next": int},
    "status": {"daemon": str, "state": str, "uptime_s": NUMBER, "status_interval_s": NUMBER, "model": dict, "detector": dict, "reloads": dict, "dropped_messages": int, "subscriber_overflows": int, "sources": dict},
    "spec": {"source": str, "seq": int, "t": NUMBER, "frame_s": NUMBER, "n_frames": int, "n_mels": int, "band_hz": _LIST_OF_2, "lo": NUMBER, "hi": NUMBER, "frames": str},
}
REQUIRED = {
    "loss": ("source", "seq", "t_start", "t_end", "loss", "score", "anomaly"),
    "event": ("source", "event_id", "state", "onset", "peak_score"),
    "gap": ("source", "seq_next"),
    "source_down": ("source", "seq_next"),
    "source_up": ("source", "seq_next"),
    "status": ("daemon", "state", "sources"),
    "spec": ("source", "seq", "t", "frame_s", "n_frames", "n_mels", "lo", "hi", "frames"),
}
REQUIRED_AT_END = ("offset", "duration")  # an event's end carries its span
# Inside a status: each source's entry, and the model's and detector's fields that subscribers show.
SOURCE_TYPES = {"state": str, "kind": str, "windows": int, "audio_s": NUMBER, "rtf": NUMBER, "dropped_samples": int, "gaps": int, "files_played": int, "files_skipped": int,
                "current_file": (str, type(None)), "events": int, "latency_ms": (dict, type(None)), "reports": list, "finished": bool, "stream_start_wall": OPTIONAL_NUMBER}
MODEL_TYPES = {"sha256": str, "threshold": NUMBER, "path": str}
DETECTOR_TYPES = {"on_score": NUMBER, "off_score": NUMBER}
MAX_DEPTH = 16  # a status is 4 levels deep; anything far deeper is an attack on a parser or renderer
MAX_TS = 1e10  # seconds since 1970: the year 2286; beyond it (or before 1970) a clock or a peer is broken
# A spec message carries the frames one window adds (25 at the bundled model's hop), of at most
# this many bands: what a page can draw, and a bound on what a subscriber keeps of each.
MAX_SPEC_FRAMES, MAX_SPEC_MELS = 200, 512


class UnreadableMessage(ValueError):
    """A message a subscriber cannot use; the text says what was expected."""


def read(frames: list[bytes]) -> tuple[str, dict]:
    """(topic, body) of a bus message as a list of frames, or UnreadableMessage saying why not."""
    if len(frames) != 2:
        raise UnreadableMessage(f"expected 2 frames (topic, JSON body), found {len(frames)}")
    try:
        topic = frames[0].decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableMessage("topic: expected UTF-8 text") from None
    try:
        body = json.loads(frames[1])
    except RecursionError:
        raise UnreadableMessage("body: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnreadableMessage(f"body: expected JSON ({str(exc)[:60]})") from None
    problem = body_problem(body)
    if problem:
        raise UnreadableMessage(problem)
    return topic, body


def body_problem(body) -> str | None:
    """Why `body` is not a usable schema-v1 message, or None.  A type this version does not know
    passes (the schema grows additively); its fields are the subscriber's to ignore."""
    if not isinstance(body, dict):
        return f"body: expected a JSON object, found {_kind(body)}"
    if _depth(body) > MAX_DEPTH:
        return f"body: nested deeper than {MAX_DEPTH} levels"
    if body.get("v") != SCHEMA_VERSION:
        return f"v: expected schema version {SCHEMA_VERSION}, found {str(body.get('v'))[:20]}"
    kind = body.get("type")
    if not isinstance(kind, str):
        return f"type: expected text, found {_kind(kind)}"
    if not isinstance(body.get("run_id", ""), str):
        return f"run_id: expected text, found {_kind(body['run_id'])}"
    required = REQUIRED.get(kind, ()) + (REQUIRED_AT_END if kind == "event" and body.get("state") == "end" else ())
    for key in required:
        if key not in body:
            return f"{kind}.{key}: missing"
    ts = body.get("ts", 0)
    if not (_is(ts, NUMBER) and 0 <= ts <= MAX_TS):
        return f"ts: expected seconds since 1970 (0 to {MAX_TS:g}), found {_kind(ts) if not _is(ts, NUMBER) else f'{ts:.6g}'}"
    problem = _fields_problem(kind, body, TYPES.get(kind, {}))
    if problem or kind not in ("status", "spec"):
        return problem
    return _spec_problem(body) if kind == "spec" else _status_problem(body)


def _spec_problem(body: dict) -> str | None:
    """The frames must be what n_frames and n_mels say, within what a page can draw."""
    n, mels = body["n_frames"], body["n_mels"]
    if not (1 <= n <= MAX_SPEC_FRAMES and 1 <= mels <= MAX_SPEC_MELS):
        return f"spec.n_frames, n_mels: expected 1-{MAX_SPEC_FRAMES} frames of 1-{MAX_SPEC_MELS} bands, found {n} x {mels}"
    if len(body["frames"]) != 4 * ((n * mels + 2) // 3):
        return f"spec.frames: expected {n * mels} levels in base64 ({4 * ((n * mels + 2) // 3)} characters), found {len(body['frames'])} characters"
    try:
        base64.b64decode(body["frames"], validate=True)
    except ValueError:
        return "spec.frames: expected base64"
    return None


def _status_problem(body: dict) -> str | None:
    for part, types in (("model", MODEL_TYPES), ("detector", DETECTOR_TYPES)):
        problem = _fields_problem(f"status.{part}", body.get(part, {}), types)
        if problem:
            return problem
    for name, entry in body["sources"].items():
        if not isinstance(entry, dict):
            return f"status.sources.{name[:40]}: expected an object, found {_kind(entry)}"
        problem = _fields_problem(f"status.sources.{name[:40]}", entry, SOURCE_TYPES)
        if problem:
            return problem
        latency = entry.get("latency_ms") or {}
        if any(not _is(v, NUMBER) for v in latency.values()):
            return f"status.sources.{name[:40]}.latency_ms: expected numbers"
        if any(not isinstance(r, dict) or not isinstance(r.get("file", ""), str) or not isinstance(r.get("reason", ""), str) for r in entry.get("reports") or []):
            return f"status.sources.{name[:40]}.reports: expected objects with text 'file' and 'reason'"
    return None


def _fields_problem(where: str, body: dict, types: dict) -> str | None:
    for key, expected in types.items():
        if key in body and not _is(body[key], expected):
            return f"{where}.{key}: expected {_name(expected)}, found {_kind(body[key])}"
    return None


def _is(value, expected) -> bool:
    if expected == NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if expected == OPTIONAL_NUMBER:
        return value is None or _is(value, NUMBER)
    if expected == _LIST_OF_2:
        return value is None or (isinstance(value, list) and len(value) == 2 and all(_is(v, NUMBER) for v in value))
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _name(expected) -> str:
    if isinstance(expected, str):
        return expected
    names = {str: "text", int: "a whole number", bool: "true or false", dict: "an object", list: "a list", type(None): "null"}
    return " or ".join(names[t] for t in (expected if isinstance(expected, tuple) else (expected,)))


def _kind(value) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return {dict: "an object", list: "a list", str: "text", bool: "true or false", type(None): "null"}.get(type(value), type(value).__name__)


def _depth(value) -> int:
    """How deeply lists and objects nest in `value`, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest
