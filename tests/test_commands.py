"""The README's main job and the benchmark, run as a user would."""
import json
import subprocess

from audiogen import clip, write
from conftest import REPO, streamdet_command
from streamdet.demo import demo_clips_dir


def test_demo_replays_every_bundled_clip_to_a_subscriber():
    result = subprocess.run(streamdet_command("demo"), capture_output=True, text=True, cwd=REPO, timeout=180)
    assert result.returncode == 0, result.stderr
    for clip_path in demo_clips_dir().iterdir():
        assert clip_path.name[:18] in result.stdout
    assert "0 missed" in result.stdout


def test_bench_prints_its_figures(tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write(data / "a.wav", clip(20.0, 44100, seed=1), 44100)
    write(data / "b.flac", clip(20.0, 16000, [(3, 1)], seed=2), 16000)
    figures = tmp_path / "bench.json"
    result = subprocess.run(streamdet_command("bench", "--data", str(data), "--model", str(tiny_model), "--passes", "2", "--json", str(figures)), capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "end to end, steady state" in result.stdout
    got = json.loads(figures.read_text())
    assert got["audio_s"] == 40.0 and got["end_to_end_missed"] == 0
    assert got["end_to_end_x"] > 1 and got["latency_ms_scripted"]["p99"] > 0
