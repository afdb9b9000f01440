"""A private PulseAudio server with a null sink: a virtual microphone that PortAudio can record.

Audio played into the sink (paplay) comes back on the sink's monitor, the server's default
source, which PortAudio reaches through ALSA's pulse plugin as the input device 'pulse'."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

SINK = "streamdet_sink"
CONFIG = """
load-module module-native-protocol-unix auth-anonymous=1 socket={socket}
load-module module-null-sink sink_name={sink} rate=48000 channels=2
set-default-sink {sink}
set-default-source {sink}.monitor
"""


class PulseServer:
    def __init__(self, runtime: Path):
        self.binary = shutil.which("pulseaudio")
        self.runtime = runtime
        runtime.mkdir(parents=True, exist_ok=True)
        runtime.chmod(0o700)
        self.socket = runtime / "native"
        self.config = runtime / "server.pa"
        self.config.write_text(CONFIG.format(socket=self.socket, sink=SINK))
        self.env = {**os.environ, "PULSE_SERVER": f"unix:{self.socket}", "XDG_RUNTIME_DIR": str(runtime), "PULSE_RUNTIME_PATH": str(runtime)}
        self.process = None

    def start(self) -> "PulseServer":
        command = [self.binary, "-n", "-F", str(self.config), "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "--log-target=stderr"]
        self.process = subprocess.Popen(command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError("the private PulseAudio server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def play(self, path: Path) -> subprocess.Popen:
        """Play a file into the sink, in real time, as a sound in the room would arrive."""
        return subprocess.Popen(["paplay", f"--device={SINK}", str(path)], env=self.env)
