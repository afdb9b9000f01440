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
    return rec.schedule({"event_id": event_id}, RATE, 2 * RATE, 0, None, {"run_id": "r", "stream_time_of_pos0": 0.0})


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
    (folder / "mic_x_e1.flac.part").write_bytes(b"half a clip")
    rec = recorder(tmp_path, RingBuffer(RATE))
    assert rec.leftovers == 1 and not list(folder.glob("*.part"))
