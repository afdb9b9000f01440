"""Synthetic speech as no-bird clips (data kind `espeak`): many voices, rates and pitches from
Debian's espeak-ng, made the way real recordings differ (sample rate, band limit, level, noise).

Why: the development speech (FSDD's spoken digits) is one speaker, so cross-validation measured
one voice; kept-back speech of other speakers passed the threshold four times as often.  A
clip is `<voice>_<n>.flac`; its group is its voice, so grouped folds keep a voice on one side.
Made once per (clips, seed) into a folder of the feature cache's root, and reused."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf


class SpeechError(RuntimeError):
    pass

# English voices of espeak-ng with its voice variants (men, women, a croak, a whisper, ...).
LANGUAGES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "croak", "klatt", "klatt2", "whisper")
WORDS = ("zero one two three four five six seven eight nine ten yes no hello okay what where "
         "morning evening tomorrow garden window kitchen dinner coffee music listen water weather").split()
RATES = (8000, 16000, 22050, 44100)  # phone lines, ESC-50, the model, a recorder


def espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise SpeechError("data kind espeak: espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    return path


def synthesise(folder: Path, clips: int, seed: int) -> list[tuple[str, str]]:
    """`clips` clips of one to five words in `folder`; returns (file name, voice) pairs."""
    rng, program, out = np.random.default_rng(seed), espeak(), []
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(clips):
            voice = f"{LANGUAGES[rng.integers(len(LANGUAGES))]}+{VARIANTS[rng.integers(len(VARIANTS))]}"
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 6))))
            wav = Path(tmp) / "s.wav"
            subprocess.run([program, "-v", voice, "-p", str(int(rng.integers(10, 90))), "-s", str(int(rng.integers(110, 260))), "-w", str(wav), text],
                           check=True, capture_output=True, timeout=60)
            audio, rate = sf.read(wav, dtype="float32")
            name = f"{voice.replace('+', '_')}_{n:04d}.flac"
            sf.write(folder / name, *recorded(audio, rate, rng), format="FLAC")
            out.append((name, voice))
    return out


def recorded(audio: np.ndarray, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """As a recorder would give it: resampled to one of RATES (band-limited by it), at a level
    from -40 to -6 dBFS, in a little noise, with up to a second of room before and after."""
    import torch
    import torchaudio

    target = int(RATES[rng.integers(len(RATES))])
    x = torchaudio.functional.resample(torch.from_numpy(audio), rate, target).numpy() if target != rate else audio
    x = x / max(float(np.abs(x).max()), 1e-6) * 10 ** (rng.uniform(-40, -6) / 20)
    pad = [np.zeros(int(rng.uniform(0.1, 1.0) * target), np.float32) for _ in range(2)]
    x = np.concatenate([pad[0], x, pad[1]])
    noise = rng.standard_normal(len(x)).astype(np.float32) * 10 ** (rng.uniform(-75, -55) / 20)
    return (x + noise).astype(np.float32), target


def espeak_clips(root: Path, clips: int, seed: int) -> list[tuple[Path, str]]:
    """(path, voice) of the clips of (clips, seed) under `root`, made first when they are not there."""
    key = hashlib.sha256(json.dumps({"clips": clips, "seed": seed, "voices": [LANGUAGES, VARIANTS], "words": WORDS}).encode()).hexdigest()[:12]
    folder = Path(root) / f"espeak-{key}"
    index = folder / "voices.json"
    if not index.is_file():
        made = synthesise(folder / "clips", clips, seed)
        index.write_text(json.dumps(made))  # last: a folder without it is made again
    return [(folder / "clips" / name, voice) for name, voice in json.loads(index.read_text())]
