"""A channel's clip recording: the recorder when recording is on, and how much audio the ring must
keep behind the reader so that a clip's pre-roll is still there when it is written."""
from __future__ import annotations

from streamdet.capture.ringbuffer import RingBuffer
from streamdet.config import RecordingConfig
from streamdet.service.recorder import ClipRecorder


class Clips:
    def __init__(self, name: str, ring: RingBuffer, rate: int):
        self.name, self.ring, self.rate = name, ring, rate
        self.recorder: ClipRecorder | None = None
        self.read_chunk = 0
        self.open_from: int | None = None  # the ring position an open event's clip will start at

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
