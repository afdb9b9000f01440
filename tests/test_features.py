"""Feature front end: streaming equals offline, resampling equals whole-file resampling, decoding of every format."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from streamdet.capture.audio import AudioError, FileDecoder, StreamingResampler, load_resampled, probe
from streamdet.detect.features import FeatureParams, StreamingWindows, offline_windows, window_starts

from audiogen import clip, write

P = FeatureParams()


def feed_in_random_chunks(framer, x, seed=0, max_chunk=5000):
    rng = np.random.default_rng(seed)
    starts, windows, i = [], [], 0
    while i < len(x):
        k = int(rng.integers(1, max_chunk))
        s, w = framer.push(x[i : i + k])
        starts += s
        windows.append(w.clone())
        i += k
    s, w = framer.finish()
    return starts + s, torch.cat(windows + [w])


@pytest.mark.parametrize("kind", ["logmel_db", "bgnorm"])
@pytest.mark.parametrize("seconds", [0.3, 0.99, 1.0, 3.3, 7.77, 13.1])
def test_streaming_windows_equal_offline(seconds, kind):
    params = FeatureParams(kind=kind, bg_seconds=2.0)  # a short context, so that 13 s slides it well past the start
    x = clip(seconds, P.sample_rate, calls=[(0.2, 0.5)], seed=3)
    off_starts, off = offline_windows(x, params)
    starts, got = feed_in_random_chunks(StreamingWindows(params), x)
    assert starts == off_starts
    assert got.shape == off.shape
    # Same frames, computed in different chunkings: equal to float32 rounding (dB values around -100..0).
    assert torch.allclose(got, off, atol=1e-3), (got - off).abs().max()


def test_background_normalisation_ignores_gain_colour_and_stationary_noise():
    """bgnorm shows each band relative to its recent floor: a recorder's gain and a microphone's
    colour (a per-band gain) change log-mel dB windows, and do not change bgnorm windows."""
    from audiogen import noise

    params = FeatureParams(kind="bgnorm")
    x = clip(6.0, P.sample_rate, calls=[(3.0, 1.0)], seed=5)
    _, plain = offline_windows(x, params)
    _, louder = offline_windows(x * 10 ** (-12 / 20), params)  # 12 dB quieter recorder
    assert torch.allclose(plain, louder, atol=1e-2)
    # Colour: a first-order high-pass tilts the spectrum by up to ~20 dB across the bands.
    tilted = np.append(x[0], x[1:] - 0.9 * x[:-1]).astype(np.float32)
    _, tilt = offline_windows(tilted, params)
    _, db_plain = offline_windows(x, P)
    _, db_tilt = offline_windows(tilted, P)
    assert (db_tilt - db_plain).abs().mean() > 5 * (tilt - plain).abs().mean()
    # Stationary noise 10 dB louder than the recording's own: windows without the call (0-2.5 s) stay
    # where they were against their floor, while in plain dB they rise with the noise.
    from streamdet.detect.features import mel_band_edges

    centres = mel_band_edges(params)[:, 1]
    bands = torch.from_numpy((centres > 2500) & (centres < 5500))

    def level(windows):  # the call's bands, each band's loudest frame, averaged
        return windows[:, :, bands].amax(dim=1).mean().item()

    noisy = x + noise(6.0, P.sample_rate, level_db=-20, seed=9)
    _, bg_noisy = offline_windows(noisy, params)
    _, db_noisy = offline_windows(noisy, P)
    assert abs(level(bg_noisy[:4]) - level(plain[:4])) < 1.0
    assert level(db_noisy[:4]) - level(db_plain[:4]) > 5.0
    assert level(bg_noisy[6:8]) > level(bg_noisy[:4]) + 10  # and the call (windows at 3.0-3.5 s) still stands out


def test_windows_cover_the_tail_of_a_segment():
    assert window_starts(49, P, final=True) == [0]
    assert window_starts(48, P, final=False) == []
    assert window_starts(0, P, final=True) == []
    # 120 frames: grid windows at 0, 25, 50 (ending at 99), and one aligned to the end.
    assert window_starts(120, P, final=True) == [0, 25, 50, 71]
    assert window_starts(120, P, final=False) == [0, 25, 50]
    assert window_starts(99, P, final=True) == [0, 25, 50]


def test_stream_keeps_few_frames_in_memory():
    framer = StreamingWindows(P)
    x = clip(30.0, P.sample_rate, seed=1)
    for i in range(0, len(x), 4410):
        framer.push(x[i : i + 4410])
        assert len(framer._frames) <= P.window_frames + P.hop_frames


@pytest.mark.parametrize("orig", [8000, 16000, 32000, 44100, 48000, 22050])
def test_streaming_resampler_equals_whole_signal(orig):
    rng = np.random.default_rng(orig)
    x = rng.standard_normal(orig * 2 + 123).astype(np.float32)
    resampler = StreamingResampler(orig, P.sample_rate)
    parts, i = [], 0
    while i < len(x):
        k = int(rng.integers(1, 7000))
        parts.append(resampler.process(x[i : i + k]))
        i += k
    parts.append(resampler.flush())
    got = np.concatenate(parts)
    want = AF.resample(torch.from_numpy(x), orig, P.sample_rate).numpy()
    assert len(got) == len(want)
    np.testing.assert_allclose(got, want, atol=2e-4)


@pytest.mark.parametrize("suffix,sr,channels,subtype", [(".wav", 44100, 2, "PCM_16"), (".wav", 48000, 1, "FLOAT"), (".flac", 16000, 1, None), (".ogg", 32000, 2, None), (".mp3", 44100, 1, None), (".wav", 8000, 1, "PCM_16")])
def test_every_format_decodes_to_model_rate_mono(tmp_path, suffix, sr, channels, subtype):
    x = clip(2.0, sr, seed=5, level_db=-20)
    path = write(tmp_path / f"a{suffix}", x, sr, channels=channels, subtype=subtype)
    y = load_resampled(path, P.sample_rate)
    assert y.dtype == np.float32 and y.ndim == 1
    # MP3 adds encoder delay and padding; the others are exact.
    assert abs(len(y) - 2.0 * P.sample_rate) <= (0.1 * P.sample_rate if suffix == ".mp3" else 1)
    level = 20 * np.log10(np.sqrt(np.mean(y**2)))
    assert -24 < level < -16


def test_truncated_wav_is_noticed(tmp_path):
    path = write(tmp_path / "t.wav", clip(3.0, 44100, seed=2), 44100, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    decoder = FileDecoder(path, P.sample_rate)
    audio = np.concatenate(list(decoder.blocks()))
    assert 1.4 * P.sample_rate < len(audio) < 1.6 * P.sample_rate
    assert "truncated" in decoder.truncation() and "3.00 s" in decoder.truncation()


def test_whole_wav_is_not_called_truncated(tmp_path):
    decoder = FileDecoder(write(tmp_path / "w.wav", clip(1.5, 16000), 16000), P.sample_rate)
    list(decoder.blocks())
    assert decoder.truncation() is None


@pytest.mark.parametrize("name,content,expected", [("e.wav", b"", "empty file"), ("n.txt", b"hello", "not an audio file"), ("x.wav", b"RIFF\x00\x00\x00\x00WAVEjunkjunk", "cannot decode")])
def test_unusable_files_say_why(tmp_path, name, content, expected):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(AudioError, match=expected):
        probe(tmp_path / name)


def test_a_fifo_is_reported_and_a_name_that_is_not_utf8_still_plays(tmp_path):
    import os

    from streamdet.capture.audio import list_audio_candidates

    os.mkfifo(tmp_path / "pipe.wav")
    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9.wav")  # Latin-1 bytes, as old recorders name files
    os.rename(write(tmp_path / "plain.wav", clip(1.0, 22050, seed=4), 22050), os.fsencode(odd))
    assert [p.name for p in list_audio_candidates(tmp_path)] == sorted([Path(odd).name, "pipe.wav"])
    with pytest.raises(AudioError, match="not a regular file"):
        probe(tmp_path / "pipe.wav")
    assert len(load_resampled(Path(odd), 22050)) == 22050


@pytest.mark.parametrize("rate", [44056, 11127, 22049])
def test_odd_sample_rates_resample_in_bounded_memory(tmp_path, rate):
    """The exact kernel for 44,056 -> 22,050 Hz has 22,028 phases (8 GB); it is approximated."""
    import resource

    from audiogen import chirps, noise

    path = write(tmp_path / "odd.wav", chirps(noise(3.0, rate, seed=8), rate, 1.0, 1.0), rate)  # made at the odd rate itself
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = load_resampled(path, 22050)
    assert abs(len(out) - 3.0 * 22050) < 3.0 * 22050 * 0.003  # the length within 0.3%
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 200  # MiB


def test_feature_params_reject_impossible_values():
    problems = dict(FeatureParams(hop_frames=60).problems())
    assert "hop_frames" in problems and "at most window_frames" in problems["hop_frames"]
    assert "hop_length" in dict(FeatureParams(hop_length=-3).problems())
    assert "f_max" in dict(FeatureParams(f_max=20000.0).problems())
    assert not list(FeatureParams().problems())


def test_a_segment_shorter_than_a_window_is_scored_with_its_frames_repeated():
    x = clip(0.4, P.sample_rate, seed=8)
    starts, windows = offline_windows(x, P)
    n = 1 + (len(x) - P.n_fft) // P.hop_length
    assert starts == [0] and windows.shape == (1, P.window_frames, P.n_mels)
    assert torch.equal(windows[0, :n], windows[0, n : 2 * n])


def test_background_floors_are_the_stated_percentile_of_each_bands_recent_frames():
    """The floor of a window is the k-th smallest of its band's frames over [end - bg_frames, end):
    checked against a plain sort, for windows with a full context and near the segment's start."""
    from streamdet.detect.features import background_floors

    params = FeatureParams(kind="bgnorm", bg_seconds=2.0)
    frames = torch.from_numpy(np.random.default_rng(0).normal(-40, 10, size=(700, params.n_mels)).astype(np.float32))
    starts = window_starts(len(frames), params, final=True)
    got = background_floors(frames, 0, len(frames), starts, params).numpy()
    for i, s in enumerate(starts):
        end = min(s + params.window_frames, len(frames))
        context = np.sort(frames.numpy()[max(0, end - params.bg_frames) : end], axis=0)
        k = int(params.bg_percentile / 100.0 * (len(context) - 1))
        np.testing.assert_array_equal(got[i], context[k])
    later = background_floors(frames[100:], 100, len(frames), starts[8:], params).numpy()  # frames held from index 100 on
    np.testing.assert_array_equal(later, got[8:])


def test_folders_vanishing_while_they_are_listed_are_skipped_and_named(tmp_path):
    """An archiver rotating day folders under a replayed folder: the walk must not fail."""
    import shutil
    import threading

    from streamdet.capture.audio import list_audio_candidates

    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "a.wav").write_bytes(b"x")
    (tmp_path / "keep" / ".hidden").mkdir()
    (tmp_path / "keep" / ".hidden" / "b.wav").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "keep")  # reported as a file, not descended
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            for day in range(20):
                folder = tmp_path / f"day{day:02d}" / "sub"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "c.wav").write_bytes(b"x")
            for day in range(20):
                shutil.rmtree(tmp_path / f"day{day:02d}", ignore_errors=True)

    worker = threading.Thread(target=churn)
    worker.start()
    vanished: list[str] = []
    try:
        for _ in range(300):
            found = list_audio_candidates(tmp_path, vanished)
            assert tmp_path / "keep" / "a.wav" in found and tmp_path / "link" in found
            assert not any(".hidden" in p.parts for p in found)
    finally:
        stop.set()
        worker.join()
    assert vanished and all(v.startswith(str(tmp_path / "day")) for v in vanished)
