"""Feature front end: streaming equals offline, resampling equals whole-file resampling, decoding of every format."""
import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from audiogen import clip, write
from streamdet.audio import AudioError, FileDecoder, StreamingResampler, load_resampled, probe
from streamdet.features import FeatureParams, StreamingWindows, offline_windows, window_starts

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


@pytest.mark.parametrize("seconds", [0.3, 0.99, 1.0, 3.3, 7.77])
def test_streaming_windows_equal_offline(seconds):
    x = clip(seconds, P.sample_rate, calls=[(0.2, 0.5)], seed=3)
    off_starts, off = offline_windows(x, P)
    starts, got = feed_in_random_chunks(StreamingWindows(P), x)
    assert starts == off_starts
    assert got.shape == off.shape
    # Same frames, computed in different chunkings: equal to float32 rounding (dB values around -100..0).
    assert torch.allclose(got, off, atol=1e-3), (got - off).abs().max()


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
