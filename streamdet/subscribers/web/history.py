"""The station's past, from the clips' sidecars: the events of any kept day (newest first), the
stretches offered for a check ("missed a bird?"), and the operator's review of each, written back
into its sidecar.

A review is the only thing the web server writes.  It writes only a sidecar of a clip this project
recorded (the name the recorder gives, `writer: streamdet`), never through a symlink, and replaces
the file whole (a temporary file beside it, then a rename), so a reader never sees half of one."""
from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

from streamdet.service.recorder import CHECK_NAME, CLIP_NAME, read_sidecar, review_of
from streamdet.subscribers.web.clips import ClipsFolder, well_formed

LABELS = ("bird", "not_bird")  # what an operator can say a clip holds (recorder.review_of); None clears a review
MAX_LISTED = 500  # events of one day sent to a page; a busier day shows its newest


class ReviewError(ValueError):
    """A review that cannot be stored; its text is the one line the page shows."""


def wall_of(meta: dict) -> float | None:
    """When the clip's sound happened: its onset's wall time (a microphone), else when it was written."""
    wall = meta.get("onset_wall")
    if isinstance(wall, (int, float)) and not isinstance(wall, bool):
        return float(wall)
    try:
        return datetime.fromisoformat(meta.get("written_at")).timestamp()
    except (TypeError, ValueError):
        return None


def local_day(wall: float) -> str:
    return datetime.fromtimestamp(wall).astimezone().date().isoformat()


class History:
    """The clips folder's sidecars, read on request (a station keeps thousands at most)."""

    def __init__(self, clips: ClipsFolder):
        self.clips = clips

    def _entries(self):
        for sidecar in self.clips.root.glob("*/*.json"):
            clip = sidecar.with_suffix(".flac")
            if not (CLIP_NAME.fullmatch(clip.name) or CHECK_NAME.fullmatch(clip.name)) or not clip.is_file():
                continue
            meta = read_sidecar(sidecar)
            wall = wall_of(meta) if meta else None
            if wall is not None:
                yield wall, clip, meta

    def days(self) -> dict:
        """{day: {"events": n, "checks": n}} over every kept day, and the reviews given so far."""
        days: dict[str, dict] = {}
        reviews = {label: 0 for label in LABELS}
        for wall, clip, meta in self._entries():
            kind = "checks" if CHECK_NAME.fullmatch(clip.name) else "events"
            days.setdefault(local_day(wall), {"events": 0, "checks": 0})[kind] += 1
            if (label := review_of(meta)) is not None:
                reviews[label] += 1
        return {"days": dict(sorted(days.items(), reverse=True)), "reviews": reviews}

    def day(self, day: str) -> list[dict]:
        """The events and checks of one local day, newest first, as the page lists them."""
        try:
            datetime.strptime(day, "%Y-%m-%d")
        except (TypeError, ValueError):
            raise ReviewError(f"day: expected YYYY-MM-DD, found {str(day)[:20]!r}") from None
        found = [(wall, clip, meta) for wall, clip, meta in self._entries() if local_day(wall) == day]
        found.sort(key=lambda e: e[0], reverse=True)
        return [row(wall, clip, meta) for wall, clip, meta in found[:MAX_LISTED]]

    def review(self, relative, label) -> dict:
        """Store `label` (or clear it, None) in the sidecar of the clip `relative` names; the row as
        the page lists it."""
        if label is not None and label not in LABELS:
            raise ReviewError(f"label: expected one of {', '.join(LABELS)} or null, found {str(label)[:20]!r}")
        if not (isinstance(relative, str) and well_formed(relative) and relative.endswith(".flac")):
            raise ReviewError("clip: expected <source>/<name>.flac")
        clip = self.clips.file(relative)
        if clip is None or not (CLIP_NAME.fullmatch(clip.name) or CHECK_NAME.fullmatch(clip.name)):
            raise ReviewError(f"clip: no clip {relative} that this station recorded")
        sidecar = clip.with_suffix(".json")
        meta = read_sidecar(sidecar)
        if meta is None:
            raise ReviewError(f"clip: {relative} has no sidecar this station wrote")
        if label is None:
            meta.pop("review", None)
        else:
            meta["review"] = {"label": label, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        replace_json(sidecar, meta)
        return row(wall_of(meta) or 0.0, clip, meta)


def row(wall: float, clip: Path, meta: dict) -> dict:
    return {"ts": wall, "source": clip.parent.name, "kind": "check" if CHECK_NAME.fullmatch(clip.name) else "event",
            "event_id": meta.get("event_id"), "duration": meta.get("duration"), "peak_score": meta.get("peak_score"), "band_hz": meta.get("band_hz"),
            "clip_url": f"{clip.parent.name}/{clip.name}", "review": review_of(meta)}


def replace_json(path: Path, meta: dict) -> None:
    """`path` replaced whole by `meta`: a new file beside it (created exclusively, with the old
    one's permissions), flushed, then renamed over it."""
    mode = stat.S_IMODE(os.lstat(path).st_mode)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.review")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(meta, indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
