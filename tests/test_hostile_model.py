"""A model artifact is code: one that passes every load check and then spins, raises or asks for
32 TiB must end the daemon with one logged line, a final status and a non-zero exit (so systemd
restarts it), within the budget the load-time probe sets; never a hang or a traceback."""
import os
import signal
import threading
import time

import pytest
import torch
from helpers import start_daemon
from test_artifact import make_detector, make_meta

from streamdet.bus.sockets import Subscriber
from streamdet.detect import artifact
from streamdet.service.watchdog import MIN_CALL_BUDGET_S, Watchdog

from audiogen import clip, write

pytestmark = pytest.mark.slow  # starts processes (see the README's contributing notes)

EXIT_MODEL_FAILED = 4


class Hostile(torch.nn.Module):
    """A working detector that turns hostile in `where` (features or band_errors) after `after` calls."""

    def __init__(self, where: str, how: str, after: int):
        super().__init__()
        self.inner = make_detector(kind="conv")  # conv: the daemon runs it as saved (no freezing, which would fold the spin)
        self.in_features = where == "features"
        self.how, self.after = how, after
        self.register_buffer("calls", torch.zeros(1))

    def _turn(self):
        self.calls.add_(1.0)
        if float(self.calls[0]) > self.after:
            if self.how == "spin":
                x = torch.zeros(1)
                while bool(x[0] > -1.0):  # forever: float32 stops growing at 2**24
                    x = x + 1.0
            elif self.how == "raise":
                raise RuntimeError("the model broke")
            else:
                self.calls.add_(torch.empty(1 << 43)[:1])  # 32 TiB, used, so that it is not optimised away

    @torch.jit.export
    def features(self, samples: torch.Tensor) -> torch.Tensor:
        if self.in_features:
            self._turn()
        return self.inner.features(samples)

    @torch.jit.export
    def band_errors(self, windows: torch.Tensor) -> torch.Tensor:
        if not self.in_features:
            self._turn()
        return self.inner.band_errors(windows)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.band_errors(windows).mean(dim=1)


def hostile_model(path, where="band_errors", how="spin", after=2):
    """Hostile after the calls a daemon's load makes (its checks and warm-up) and `after` more."""
    module = Hostile(where, how, 10**9)
    artifact.save(module, make_meta(module.inner), path)
    loading = int(artifact.load(path, "cpu", optimise=True).module.calls[0])
    module = Hostile(where, how, loading + after)
    artifact.save(module, make_meta(module.inner), path)  # loads back: every load check passes
    return path


def replay_dir(tmp_path, seconds=30.0):
    d = tmp_path / "replay"
    d.mkdir()
    write(d / "a.wav", clip(seconds, 22050, [(2.0, 1.0)], seed=1), 22050)
    return d


def run_to_the_end(daemon, endpoint, timeout_s):
    """The states of every status a subscriber received, until the daemon exits."""
    sub = Subscriber(endpoint)
    states = []
    deadline = time.monotonic() + timeout_s
    try:
        while daemon.poll() is None and time.monotonic() < deadline:
            got = sub.receive(0.2)
            if got and got[1]["type"] == "status":
                states.append(got[1]["state"])
        while (got := sub.receive(0.5)) is not None:
            states += [got[1]["state"]] if got[1]["type"] == "status" else []
    finally:
        sub.close()
        if daemon.poll() is None:
            daemon.kill()
    return states


@pytest.mark.parametrize("where,how", [("band_errors", "spin"), ("band_errors", "raise"), ("band_errors", "alloc"), ("features", "spin")])
def test_a_hostile_model_ends_the_daemon_with_one_line_and_a_final_status(tmp_path, endpoint, where, how):
    model = hostile_model(tmp_path / "m.pt", where, how)
    daemon = start_daemon("--replay", str(replay_dir(tmp_path)), "--pace", "4x", "--model", str(model), "--endpoint", endpoint, "--wait-subscribers", "1")
    started = time.monotonic()
    states = run_to_the_end(daemon, endpoint, MIN_CALL_BUDGET_S + 30)
    took = time.monotonic() - started
    err = daemon.stderr.read()
    assert daemon.returncode == EXIT_MODEL_FAILED, err
    assert "Traceback" not in err
    assert "past its budget" in err if how == "spin" else ("the model broke" in err if how == "raise" else "can't allocate memory" in err), err
    assert states[-1] == "failed", states
    assert took < MIN_CALL_BUDGET_S + 25


def test_a_model_that_spins_after_a_reload_ends_the_daemon(tmp_path, endpoint):
    good = tmp_path / "good.pt"
    detector = make_detector()
    artifact.save(detector, make_meta(detector), good)
    live = tmp_path / "m.pt"
    live.write_bytes(good.read_bytes())
    config = tmp_path / "c.yaml"
    config.write_text(f"sources: [{{kind: replay, path: {replay_dir(tmp_path, 120.0)}, pace: realtime}}]\nmodel: {{path: m.pt}}\nbus: {{endpoint: '{endpoint}', wait_subscribers: 1}}\n")
    daemon = start_daemon("--config", str(config))
    sub = Subscriber(endpoint)
    try:
        assert sub.receive(30) is not None, "the daemon never published"
        hostile_model(live, "features", "spin", after=2)
        daemon.send_signal(signal.SIGHUP)
        daemon.wait(MIN_CALL_BUDGET_S + 30)
    finally:
        sub.close()
        if daemon.poll() is None:
            daemon.kill()
    err = daemon.stderr.read()
    assert daemon.returncode == EXIT_MODEL_FAILED and "past its budget" in err and "Traceback" not in err, err


def test_the_watchdog_ends_a_stop_that_a_stuck_call_holds_up():
    """SIGTERM reaches the watchdog's thread even while the main thread cannot run its handler."""
    reasons = []
    done = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    watchdog = Watchdog(lambda reason: (reasons.append(reason), done.set()), stop_deadline_s=0.5, poll_s=0.05)
    try:
        with watchdog.timed("a long call", budget_s=60):
            os.kill(os.getpid(), signal.SIGTERM)
            assert done.wait(5), "the watchdog did not act on SIGTERM"
    finally:
        watchdog.close()
        signal.signal(signal.SIGTERM, previous)
    assert reasons and "after the stop was asked for" in reasons[0] and "a long call" in reasons[0]


def test_a_call_within_its_budget_is_left_alone():
    reasons = []
    watchdog = Watchdog(reasons.append, stop_deadline_s=60, poll_s=0.02)
    try:
        with watchdog.timed("a quick call", budget_s=0.5):
            time.sleep(0.2)
        time.sleep(0.6)
        with watchdog.timed("a slow call", budget_s=0.2):
            time.sleep(0.6)
    finally:
        watchdog.close()
    assert len(reasons) == 1 and "a slow call" in reasons[0]


def test_a_real_model_is_timed_and_its_errors_are_one_line(tmp_path):
    detector = make_detector()
    model = artifact.load(artifact.save(detector, make_meta(detector), tmp_path / "m.pt"), "cpu")
    assert model.seconds_per_window > 0
    reasons = []
    model.watchdog = Watchdog(reasons.append, stop_deadline_s=60)
    try:
        from streamdet.service.watchdog import ModelFailure

        with pytest.raises(ModelFailure, match="band_errors\\(\\) failed"):
            model.errors(torch.zeros(2, 3, 4))  # the wrong shape
    finally:
        model.watchdog.close()
    assert not reasons

