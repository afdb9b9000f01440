"""SIGHUP: the config file and its model read again. What a reload applies takes effect at once;
every other changed key keeps its running value until a restart, and both lists are logged and
published in `status.reloads.last`. A config or model that cannot be used is refused in one line,
and the daemon goes on with what it had."""
from __future__ import annotations

import logging
from dataclasses import asdict

from streamdet.config import Config
from streamdet.errors import one_line

log = logging.getLogger(__name__)

RELOAD_BUDGET_S = 120.0  # loading and probing a new model on SIGHUP

# What a reload applies; every other key of the config is kept at its running value until a
# restart, and reported so.
APPLIED_ON_RELOAD = ("model.", "detector.", "recording.", "log.", "bus.status_interval_s", "bus.curve_clients")


def config_keys(config: Config) -> dict:
    """Every setting as dotted key -> value (a list, such as `sources`, is one key)."""
    out = {}

    def walk(value, prefix):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = value

    walk(asdict(config), "")
    return out


def reload_plan(running: Config, new: Config) -> tuple[list[str], list[str]]:
    """(keys changed that a reload applies, keys changed that need a restart)."""
    a, b = config_keys(running), config_keys(new)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [k for k in changed if k.startswith(APPLIED_ON_RELOAD)], [k for k in changed if not k.startswith(APPLIED_ON_RELOAD)]


def get_key(config: Config, key: str):
    obj = config
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def set_key(config: Config, key: str, value) -> None:
    """A value already of the key's type (a running one); `typedconfig.set_path` parses text."""
    *path, last = key.split(".")
    setattr(get_key(config, ".".join(path)) if path else config, last, value)


def reload_daemon(daemon) -> None:
    """SIGHUP: a new config and model, or a clear refusal and the old ones kept."""
    if daemon.reload_fn is None:
        log.warning("reload requested, but this daemon was not started from a config it can re-read")
        return
    daemon.notifier.reloading()
    try:
        if daemon.watchdog is None:
            config, model = daemon.reload_fn()
        else:
            with daemon.watchdog.timed("reloading the config and model", RELOAD_BUDGET_S):
                config, model = daemon.reload_fn()
            model.watchdog = daemon.watchdog
        if model.features.sample_rate != daemon.model.features.sample_rate:
            raise ValueError(f"the new model runs at {model.features.sample_rate} Hz, the running sources at {daemon.model.features.sample_rate} Hz; restart the daemon to change rate")
    except Exception as exc:
        daemon.reloads["rejected"] += 1
        daemon.reloads["last"] = {"ok": False, "reason": one_line(exc, limit=None)}
        log.error("reload rejected, still running the previous config and model: %s", daemon.reloads["last"]["reason"])
        daemon.notifier.ready()
        return
    applied, kept = reload_plan(daemon.config, config)
    for key in kept:  # the running value stays, and the config says so
        set_key(config, key, get_key(daemon.config, key))
    clients = _reload_curve_clients(daemon, config)
    import torch

    torch.set_num_threads(config.model.threads or torch.get_num_threads())
    for channel in daemon.channels:
        channel.batch_windows = config.model.batch_windows
        channel.replace_model(model, config.detector, config.recording)
    daemon.config, daemon.model = config, model
    logging.getLogger().setLevel(config.log.level.upper())
    daemon.reloads["done"] += 1
    daemon.reloads["last"] = {"ok": True, "model": model.describe()["sha256"], "applied": applied, "kept": kept}
    log.info("reloaded: model %s (%s)%s%s%s", model.path, model.describe()["sha256"], f"; applied {', '.join(applied)}" if applied else "; no setting changed",
             f"; {', '.join(kept)} changed, which needs a restart: kept the running value(s)" if kept else "", clients)
    daemon.notifier.ready()


def _reload_curve_clients(daemon, config: Config) -> str:
    """The allowed clients' folder read again on every reload: a removed key is revoked for new
    connections (ZeroMQ keeps an open connection until it closes)."""
    curve = config.bus.curve()
    if curve is None or config.bus.connect:
        return ""
    from streamdet.bus.security import SecurityError, reload_clients

    try:
        return f"; CURVE: {reload_clients(daemon.publisher.socket.context, curve)} allowed client key(s) read again from {curve.clients}"
    except SecurityError as exc:
        log.error("CURVE clients not reloaded, still admitting the previous keys: %s", exc)
        return ""
