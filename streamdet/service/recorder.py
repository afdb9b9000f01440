"""Clips of detected events, with pre-roll and post-roll taken from the ring buffer, kept within
an age and a size limit.  Runs in the processing thread; a failing disk is reported, not fatal."""
from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import soundfile as sf

from streamdet.capture.ringbuffer import RingBuffer
from streamdet.config import RecordingConfig
from streamdet.errors import one_line

log = logging.getLogger(__name__)


@dataclass
class _Job:
    path: Path
    start: int  # ring positions
    end: int
    sidecar: dict


class ClipRecorder:
    def __init__(self, config: RecordingConfig, source: str, ring: RingBuffer, rate: int):
        self.source, self.ring, self.rate = source, ring, rate
        self.configure(config)
        self.leftovers = self._remove_leftovers()
        self.jobs: list[_Job] = []
        self.written = 0  # events' clips
        self.checks = 0  # stretches recorded for a check
        self.failed = 0
        self.deleted = 0
        self.errors: list[str] = []  # taken by the channel for its status reports
        self.writing: Path | None = None

    def configure(self, config: RecordingConfig) -> None:
        """New settings (SIGHUP); clips already planned keep their path."""
        self.config = config
        self.directory = Path(config.directory) / self.source
        self._index = None  # the folder may have changed: scanned again when next needed

    def _clips(self) -> list[list]:
        """[mtime, path, bytes] of every clip this project wrote in the folder, oldest first:
        scanned once, then kept up to date as clips are written and deleted, so retention never
        re-reads the folder.  Anything else there (a user's recordings) is never touched."""
        if self._index is None:
            clips = []
            for clip in self.directory.glob(f"{self.source}_*.flac") if self.directory.is_dir() else []:
                try:
                    st = clip.stat()
                except OSError:
                    continue
                if not written_by_us(clip, self.source):
                    continue
                clips.append([st.st_mtime, clip, st.st_size + _size(clip.with_suffix(".json"))])
            self._index = sorted(clips, key=lambda c: c[0])
            self._total = sum(c[2] for c in self._index)
        return self._index

    def _remove_leftovers(self) -> int:
        """`.part` files a crash left behind: never clips, but they took space; remove them."""
        removed = 0
        for part in sorted(self.directory.glob(f"{self.source}_*.part")) if self.directory.is_dir() else []:
            clip = part.name[: -len(".part")]
            if not CLIP_NAME.fullmatch(clip.removesuffix(".json") + ".flac" if clip.endswith(".json") else clip):
                continue
            part.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.warning("%s: removed %d unfinished clip file(s) left by an earlier run in %s", self.source, removed, self.directory)
        return removed

    def schedule(self, event: dict, onset_pos: int, offset_pos: int, segment_start: int, segment_end: int | None, sidecar: dict, tag: str = "e") -> Path:
        """Plan the clip of an event that has ended (tag "e"), or of a stretch offered for a check
        (tag "c"); it is written once its post-roll has arrived.  The clip never reaches outside
        the event's segment (another file, or across a gap)."""
        start = max(onset_pos - int(self.config.pre_roll_s * self.rate), segment_start)
        end = offset_pos + int(self.config.post_roll_s * self.rate)
        if segment_end is not None:
            end = min(end, segment_end)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        path = self.directory / f"{self.source}_{stamp}_{sidecar['run_id']}_{tag}{event['event_id']}.flac"
        self.jobs.append(_Job(path, start, end, sidecar))
        return path

    def oldest_needed(self) -> int | None:
        """The earliest ring position a planned clip still needs, if any."""
        return min((j.start for j in self.jobs), default=None)

    def poll(self, final: bool = False) -> None:
        """Write every clip whose audio is all in (or whatever is left, when the stream ends)."""
        ready = [j for j in self.jobs if final or self.ring.write_pos >= j.end]
        for job in ready:
            self.jobs.remove(job)
            self._write(job)

    def _write(self, job: _Job) -> None:
        first, audio = self.ring.peek(job.start, job.end)
        sidecar = {
            "writer": WRITER,
            **job.sidecar,
            "clip_start": round(job.sidecar["stream_time_of_pos0"] + first / self.rate, 4),
            "clip_end": round(job.sidecar["stream_time_of_pos0"] + (first + len(audio)) / self.rate, 4),
            "pre_roll_s": self.config.pre_roll_s, "post_roll_s": self.config.post_roll_s,
            "sample_rate": self.rate, "truncated": first > job.start or first + len(audio) < job.end,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        sidecar.pop("stream_time_of_pos0")
        self.writing = job.path
        self._clips()  # scanned (once) before this clip exists, which is then added to the index
        tmp = job.path.with_name(job.path.name + ".part")
        try:
            job.path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(tmp), audio, self.rate, format="FLAC", subtype="PCM_24")
            tmp.replace(job.path)
            # Whole or not at all: the web server reads sidecars while clips are written.
            part = job.path.with_suffix(".json.part")
            part.write_text(json.dumps(sidecar, indent=1))
            part.replace(job.path.with_suffix(".json"))
            if job.sidecar.get("kind") == "check":
                self.checks += 1
            else:
                self.written += 1
            clips = self._clips()
            size = _size(job.path) + _size(job.path.with_suffix(".json"))
            clips.append([time.time(), job.path, size])
            self._total += size
            self._retain()
        except (OSError, RuntimeError) as exc:  # a full disk among them (libsndfile's errors are RuntimeErrors): report it, keep detecting
            self.failed += 1
            try:
                tmp.unlink(missing_ok=True)
                job.path.with_suffix(".json.part").unlink(missing_ok=True)
            except OSError:  # its folder may be what failed (a file where the folder should be)
                pass
            reason = f"could not write {job.path}: {getattr(exc, 'strerror', None) or one_line(exc, 160)}"
            self.errors.append(reason)
            log.error("%s: clip recording failed: %s", self.source, reason)
        finally:
            self.writing = None

    def _retain(self) -> None:
        """Delete the oldest clips beyond max_age_days or max_total_mb; never the one just written."""
        clips, now, limit = self._clips(), time.time(), self.config.max_total_mb * 1e6
        while clips and clips[0][1] != self.writing:
            mtime, clip, size = clips[0]
            if now - mtime <= self.config.max_age_days * 86400 and self._total <= limit:
                break
            clips.pop(0)
            self._total -= size
            clip.unlink(missing_ok=True)
            clip.with_suffix(".json").unlink(missing_ok=True)
            self.deleted += 1

    def describe(self) -> dict:
        return {"directory": str(self.directory), "written": self.written, "checks": self.checks, "failed": self.failed, "deleted": self.deleted, "pending": len(self.jobs)}


# What schedule() names a clip: SOURCE_YYYYmmddTHHMMSS_RUNID_eN.flac (an event's), _cN (a check's)
CLIP_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}_\d{8}T\d{6}_[0-9a-f]{4,64}_[ec]\d+\.flac")
CHECK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}_\d{8}T\d{6}_[0-9a-f]{4,64}_c\d+\.flac")
WRITER = "streamdet"  # every sidecar says who wrote its clip


def written_by_us(clip: Path, source: str) -> bool:
    """A clip of `source` that this project wrote: its name is one schedule() makes and its sidecar
    says so (sidecars before the `writer` field carry the run id and the time they were written)."""
    if not (CLIP_NAME.fullmatch(clip.name) and clip.name.startswith(source + "_")):
        return False
    sidecar = read_sidecar(clip.with_suffix(".json"))
    return sidecar is not None and sidecar.get("source", source) == source


def read_sidecar(path: Path, max_bytes: int = 1 << 16) -> dict | None:
    """A sidecar this project wrote, as a dict, or None: not a regular file (a symlink is not
    followed), larger than `max_bytes`, not JSON, or not ours."""
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return None
        meta = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, being written, or not text
        return None
    if not isinstance(meta, dict) or not (meta.get("writer") == WRITER or {"run_id", "written_at", "clip_start"} <= meta.keys()):
        return None
    return meta


def review_of(meta: dict | None) -> str | None:
    """The operator's answer stored in a sidecar (the web page's review): bird, not_bird or None."""
    review = meta.get("review") if isinstance(meta, dict) else None
    label = review.get("label") if isinstance(review, dict) else None
    return label if label in ("bird", "not_bird") else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
