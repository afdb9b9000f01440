"""A channel's clip recording: the recorder when recording is on, and how much audio the ring must
keep behind the reader so that a clip's pre-roll is still there when it is written."""
from __future__ import annotations

import logging

from streamdet.capture.ringbuffer import RingBuffer
from streamdet.config import RecordingConfig
from streamdet.service.checks import CheckPicker
from streamdet.service.reader import file_time
from streamdet.service.recorder import ClipRecorder

log = logging.getLogger(__name__)


class Clips:
    def __init__(self, name: str, ring: RingBuffer, rate: int):
        self.name, self.ring, self.rate = name, ring, rate
        self.recorder: ClipRecorder | None = None
        self.read_chunk = 0
        self.open_from: int | None = None  # the ring position an open event's clip will start at
        self.checks: CheckPicker | None = None  # which stretches without an event are recorded for a check
        self.checks_recorded = 0

    @property
    def enabled(self) -> bool:
        return self.recorder is not None

    def configure(self, recording: RecordingConfig, read_chunk: int) -> int:
        """New settings (start, reload); returns the read size to use (smaller when recording).
        Turning recording off drops the recorder: `finish` it first."""
        if not recording.enabled:
            self.recorder = None
        elif self.recorder is None:
            self.recorder = ClipRecorder(recording, self.name, self.ring, self.rate)
        else:
            self.recorder.configure(recording)  # clips still waiting for their post-roll keep waiting
        if not recording.enabled or recording.checks_per_hour <= 0:
            self.checks = None
        elif self.checks is None or self.checks.period != 3600.0 / recording.checks_per_hour:
            # A stretch chosen at a period's end must still be in the ring with its pre-roll.
            self.checks = CheckPicker(recording.checks_per_hour, max(0.0, self.ring.capacity / self.rate / 2 - recording.pre_roll_s - 2.0))
        # A replay waits for room in its ring; keep half of it behind the reader for clips' pre-roll,
        # and read in small steps, so that what a clip needs is still behind the reader.
        self.ring.keep_behind = self.ring.capacity // 2 if recording.enabled else 0
        if not recording.enabled:
            self.ring.hold_pos = None
        self.read_chunk = min(read_chunk, self.ring.capacity // 8) if recording.enabled else read_chunk
        return self.read_chunk

    def opened(self, onset_pos: int, segment_pos: int) -> None:
        """An event started: from now on its onset (with the pre-roll) is held in the ring, so that
        its clip begins where the event began however long it lasts (up to max_event_s)."""
        if self.recorder is not None:
            self.open_from = max(segment_pos, onset_pos - int(self.recorder.config.pre_roll_s * self.rate))

    def schedule(self, transition: dict, onset_pos: int, offset_pos: int, segment_pos: int, segment_end: int | None, sidecar: dict) -> str:
        path = str(self.recorder.schedule(transition, onset_pos, offset_pos, segment_pos, segment_end, sidecar))
        # The planned clip holds what it needs from here on; an event cut at max_event_s carries on
        # from its offset, and its continuation's clip will need the pre-roll before that.
        self.open_from = max(segment_pos, offset_pos - int(self.recorder.config.pre_roll_s * self.rate)) if transition.get("cut") else None
        return path

    def sidecar(self, t: dict, body: dict, run_id: str, time_of_pos0: float, model: dict, source: dict) -> dict:
        """What a clip's JSON sidecar says: the event, the model, and its wall-clock onset when the
        source knows when its stream started (a microphone)."""
        sidecar = {
            "source": self.name, "run_id": run_id, "stream_time_of_pos0": time_of_pos0,
            **{k: body[k] for k in ("event_id", "onset", "offset", "duration", "peak_score", "band_hz", "file", "file_onset") if k in body},
            "model": model,
        }
        if "stream_start_wall" in source:
            start_wall = source["stream_start_wall"]
            sidecar["onset_wall"] = None if start_wall is None else round(start_wall + t["onset"], 3)
        return sidecar

    def new_segment(self) -> None:
        if self.checks is not None:
            self.checks.reset()

    def offer(self, window: tuple[float, float, float], quiet: bool, off_score: float, reader, seg, describe) -> None:
        """The next window (t_start, t_end, score) to the check picker; a stretch it picks is
        planned like an event's clip, named _cN, its sidecar `kind: check`.  `describe()`: the run
        id, the model's and the source's descriptions (asked only when a stretch is picked)."""
        for t_start, t_end, score in self.checks.offer(*window, off_score, quiet) if self.checks is not None else ():
            about = describe()
            self.checks_recorded += 1
            sidecar = {"source": self.name, "run_id": about["run_id"], "stream_time_of_pos0": reader.stream_time(0), "kind": "check", "event_id": self.checks_recorded,
                       "onset": round(t_start, 3), "offset": round(t_end, 3), "duration": round(t_end - t_start, 3), "peak_score": round(score, 4), "model": about["model"]}
            if about.get("stream_start_wall") is not None:
                sidecar["onset_wall"] = round(about["stream_start_wall"] + t_start, 3)
            if seg.file is not None:
                sidecar.update(file=seg.file, file_onset=file_time(seg, t_start - reader.stream_time(seg.pos)))
            path = self.recorder.schedule({"event_id": self.checks_recorded}, reader.ring_pos(t_start), reader.ring_pos(t_end), seg.pos, None, sidecar, tag="c")
            log.info("%s: the stretch at %.2f s (score %.2f) recorded for a check: %s", self.name, t_start, score, path)

    def poll(self, final: bool = False) -> list[str]:
        """Write the clips whose audio is in; returns the errors to report."""
        if self.recorder is None:
            return []
        self.recorder.poll(final=final)
        errors, self.recorder.errors = self.recorder.errors, []
        if not final:
            self._hold()
        return errors

    def finish(self) -> list[str]:
        return self.poll(final=True)

    def _hold(self) -> None:
        """A waiting writer (replay) must not overwrite audio a planned clip, or the clip of the event
        open now, still needs: held from that position on, as the reader goes on; at most the ring
        less a few reads behind the reader, so the writer can always go on."""
        needed = [p for p in (self.recorder.oldest_needed(), self.open_from) if p is not None]
        self.ring.keep_behind = self.ring.capacity // 2
        self.ring.hold_pos = max(min(needed), self.ring.read_pos - (self.ring.capacity - 2 * self.read_chunk)) if needed else None

    def describe(self) -> dict:
        return {"recording": self.recorder.describe()} if self.recorder is not None else {}
