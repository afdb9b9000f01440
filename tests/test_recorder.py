"""The clip recorder on its own: a failing disk is reported, never fatal, and leaves nothing behind."""
import numpy as np
import soundfile as sf

from streamdet.capture.ringbuffer import RingBuffer
from streamdet.config import RecordingConfig
from streamdet.service.recorder import ClipRecorder

RATE = 22050


def recorder(tmp_path, ring):
    config = RecordingConfig(enabled=True, directory=str(tmp_path / "clips"), pre_roll_s=0.5, post_roll_s=0.5)
    return ClipRecorder(config, "mic", ring, RATE)


def schedule_one(rec, event_id=1):
    return rec.schedule({"event_id": event_id}, RATE, 2 * RATE, 0, None, {"run_id": "0a0b0c0d", "source": "mic", "stream_time_of_pos0": 0.0})


def test_a_full_disk_is_reported_and_detection_goes_on(tmp_path, monkeypatch):
    ring = RingBuffer(10 * RATE)
    ring.write(np.zeros(4 * RATE, dtype=np.float32) + 0.01)
    rec = recorder(tmp_path, ring)

    def disk_full(path, *args, **kwargs):
        open(path, "wb").write(b"fLaC partial")  # libsndfile had begun writing when the disk filled
        raise sf.LibsndfileError(1, prefix="Error writing: ")  # what soundfile raises: not an OSError

    monkeypatch.setattr(sf, "write", disk_full)
    path = schedule_one(rec)
    rec.poll()  # must not raise
    assert rec.failed == 1 and rec.written == 0 and rec.errors and str(path) in rec.errors[0]
    assert not list((tmp_path / "clips" / "mic").glob("*.part"))  # nothing half-written is left
    monkeypatch.undo()
    schedule_one(rec, 2)
    rec.poll()
    assert rec.written == 1


def test_leftover_part_files_of_a_crashed_run_are_removed(tmp_path):
    folder = tmp_path / "clips" / "mic"
    folder.mkdir(parents=True)
    (folder / "mic_20261201T101010_0a0b0c0d_e1.flac.part").write_bytes(b"half a clip")
    (folder / "mic_take2.flac.part").write_bytes(b"a user's upload in progress")  # not a name this project makes
    rec = recorder(tmp_path, RingBuffer(RATE))
    assert rec.leftovers == 1 and [p.name for p in folder.glob("*.part")] == ["mic_take2.flac.part"]


def test_retention_deletes_only_clips_this_project_wrote(tmp_path):
    """A recording directory shared with the user's own files (or a replayed archive): retention
    finds its clips by their names and sidecars, and nothing else is ever deleted."""
    import json
    import os
    import time

    folder = tmp_path / "clips" / "mic"
    folder.mkdir(parents=True)
    old = time.time() - 400 * 86400
    ours = folder / "mic_20251101T101010_0a0b0c0d_e1.flac"
    theirs = [folder / "mic_dawn.flac", folder / "mic_20251101T101010_0a0b0c0d_e2.flac", folder / "mic_20251101T101010_0a0b0c0d_e3.flac", folder / "other_20251101T101010_0a0b0c0d_e1.flac"]
    for path in [ours, *theirs]:
        path.write_bytes(b"\0" * 1000)
        os.utime(path, (old, old))
    ours.with_suffix(".json").write_text(json.dumps({"writer": "streamdet", "source": "mic"}))
    theirs[2].with_suffix(".json").write_text("not json")  # named like a clip, but no sidecar of ours
    ring = RingBuffer(10 * RATE)
    ring.write(np.zeros(4 * RATE, dtype=np.float32) + 0.01)
    rec = recorder(tmp_path, ring)
    new = schedule_one(rec)
    rec.poll()
    assert rec.written == 1 and rec.deleted == 1 and not ours.exists() and new.exists()
    assert all(p.exists() for p in theirs)
    assert json.loads(new.with_suffix(".json").read_text())["writer"] == "streamdet"


# -- stretches offered for a check ("missed a bird?") ----------------------------------------------
def test_checks_take_a_borderline_window_at_once_else_the_best_within_reach_at_the_period_end():
    from streamdet.service.checks import CheckPicker

    picker = CheckPicker(per_hour=60.0, reach_s=10.0)  # one stretch a minute
    offered = []
    for i in range(600):  # five minutes of windows, every 0.5 s
        t = i * 0.5
        minute = int(t // 60)
        # minute 0: a borderline window at 20 s (score 0.4) among quiet ones, then a louder one inside an event;
        # minute 1: nothing borderline, the best (0.3) at 65 s, out of reach by the minute's end, then 0.2 at 115 s;
        # minute 2: silence (quiet) throughout; minutes 3-4: an event all along.
        score = {0: 0.4 if t == 20.0 else 0.9 if t == 30.0 else 0.05, 1: 0.3 if t == 65.0 else 0.2 if t == 115.0 else 0.1}.get(minute, 0.0)
        quiet = (minute == 0 and t == 30.0) or minute >= 2
        offered += picker.offer(t, t + 1.0, score, 0.35, quiet)
    assert offered == [(20.0, 21.0, 0.4), (115.0, 116.0, 0.2)]
    picker.reset()  # a new segment: what was within reach is not any more
    picker.offer(300.0, 301.0, 0.1, 0.35, False)
    picker.reset()
    assert picker.offer(361.0, 362.0, 0.0, 0.35, True) == []
