"""Command line: `streamdet run | listen | export | mqtt | proxy | keys | devices | demo | bench | soak`."""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path

from streamdet import __version__
from streamdet.errors import one_line
from streamdet.service.logsetup import setup_logging

EXIT_USAGE = 2


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"streamdet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamdet", description="Streaming bird-call detector daemon.")
    parser.add_argument("--version", action="version", version=f"streamdet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    add_run(sub)
    add_subscribers(sub)
    add_tools(sub)
    return parser


def add_run(sub) -> None:
    run = sub.add_parser("run", help="run the detector daemon")
    run.add_argument("--config", type=Path, help="YAML config (see configs/daemon.yaml)")
    run.add_argument("--replay", type=Path, metavar="DIR", help="replay the audio files of DIR, in sorted order, as one stream")
    run.add_argument("--mic", nargs="?", const="", metavar="DEVICE", help="capture from an input device (index or part of its name; none: the default input)")
    run.add_argument("--pace", help="replay pace: realtime, max, or a speed factor such as 4x")
    run.add_argument("--loop", action="store_true", default=None, help="replay the directory again and again")
    run.add_argument("--name", help="source name, used in topics (default: replay)")
    run.add_argument("--model", type=Path, help="model artifact (default: the bundled model)")
    run.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--endpoint", help="ZeroMQ endpoint to bind (default tcp://127.0.0.1:5556)")
    run.add_argument("--connect", metavar="ENDPOINT", help="publish into a `streamdet proxy` frontend instead of binding an endpoint")
    run.add_argument("--wait-subscribers", type=int, metavar="N", help="hold the stream until N subscriptions have arrived")
    run.add_argument("--spectrogram", action="store_true", default=None, help="also publish what the model sees on spec.<source> (for `streamdet web`)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key, e.g. --set detector.on_score=0.6")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    run.add_argument("--heap-snapshots", type=Path, metavar="DIR", help="diagnostics: write a tracemalloc snapshot and memory counters to DIR every --heap-interval seconds (slows the daemon)")
    run.add_argument("--heap-interval", type=float, default=60.0, metavar="SECONDS", help="with --heap-snapshots: seconds between snapshots (default 60)")
    run.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there, e.g. 127.0.0.1:9108 (needs the metrics extra)")
    run.set_defaults(handler=cmd_run)


def add_subscribers(sub) -> None:
    """export, mqtt, devices and listen: the tools that read the bus (devices lists microphones)."""
    export = sub.add_parser("export", help="write detections as Raven selection tables, Audacity labels and a CSV")
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--jsonl", type=Path, help="a recording made with `streamdet listen --jsonl`")
    source.add_argument("--endpoint", help="subscribe to a running daemon until it finishes (start it with --wait-subscribers 1)")
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the tables go")
    export.add_argument("--timeout", type=float, help="with --endpoint: give up after this many seconds without a message")
    export.add_argument("--clips", type=Path, metavar="DIR", help="the daemon's recording directory: each detection's review on the page (bird, not_bird) from its clip's sidecar")
    add_curve_client_args(export)
    export.set_defaults(handler=cmd_export)

    mqtt = sub.add_parser("mqtt", help="publish what the daemon finds to an MQTT broker, with Home Assistant discovery")
    mqtt.add_argument("--config", type=Path, help="a YAML file with an `mqtt` section (see configs/daemon.yaml)")
    mqtt.add_argument("--endpoint", help="the daemon (or proxy backend) to subscribe to (default tcp://127.0.0.1:5556)")
    mqtt.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT (default mqtt://127.0.0.1:1883)")
    mqtt.add_argument("--username")
    mqtt.add_argument("--password-file", help="a file holding the broker password")
    mqtt.add_argument("--tls-ca", help="CA certificate for mqtts://")
    mqtt.add_argument("--client-id")
    mqtt.add_argument("--topic-prefix")
    mqtt.add_argument("--discovery-prefix", help="Home Assistant's discovery prefix (default homeassistant)")
    add_curve_client_args(mqtt)
    mqtt.set_defaults(handler=cmd_mqtt)

    devices = sub.add_parser("devices", help="list input devices (for --mic)")
    devices.set_defaults(handler=cmd_devices)

    listen = sub.add_parser("listen", help="subscribe and show what the daemon publishes")
    listen.add_argument("--endpoint", default="tcp://127.0.0.1:5556")
    listen.add_argument("--topic", action="append", default=[], help="topic prefix to subscribe to (repeatable; default: all)")
    listen.add_argument("--source", action="append", default=[], help="only this source (repeatable)")
    listen.add_argument("--jsonl", type=Path, help="append every message to this file, one JSON object per line")
    listen.add_argument("--until-finished", action="store_true", help="exit once every daemon seen reports finished or stopped")
    listen.add_argument("--timeout", type=float, help="exit after this many seconds without a message")
    listen.add_argument("--quiet", action="store_true", help="no live view (with --jsonl: record only)")
    add_curve_client_args(listen)
    listen.set_defaults(handler=cmd_listen)

    page = sub.add_parser("web", help="serve a live page of one or more daemons: scores, spectrogram, events with their clips (needs the web extra)")
    page.add_argument("--endpoint", action="append", default=[], help="a daemon or proxy backend to subscribe to (repeatable; default tcp://127.0.0.1:5556)")
    page.add_argument("--source", action="append", default=[], help="only this source (repeatable)")
    page.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="where to serve the page (default 127.0.0.1:8080; beyond loopback it needs --token-file)")
    page.add_argument("--clips", type=Path, metavar="DIR", help="the daemon's clips folder (recording.directory), read-only: events play their clips")
    page.add_argument("--token-file", type=Path, metavar="FILE", help="a file holding the token every request must carry (open the page as /?token=...)")
    page.add_argument("--allow-host", action="append", default=[], metavar="NAME", help="a name the page is reached by (repeatable; loopback's, this machine's and any IP address are always allowed): other Host names are refused, against DNS rebinding")
    add_curve_client_args(page)
    page.set_defaults(handler=cmd_web)


def add_tools(sub) -> None:
    """proxy, soak, keys, demo and bench."""
    proxy = sub.add_parser("proxy", help="one bus for many daemons: ZeroMQ's XSUB/XPUB proxy")
    proxy.add_argument("--frontend", default="tcp://127.0.0.1:5559", help="where daemons publish (they run with --connect FRONTEND); loopback unless told, e.g. tcp://*:5559")
    proxy.add_argument("--backend", default="tcp://127.0.0.1:5560", help="where subscribers connect; loopback unless told")
    proxy.add_argument("--curve-secret-key", metavar="FILE", help="CURVE: the proxy's certificate (NAME.key_secret); both ends then admit only --curve-clients")
    proxy.add_argument("--curve-clients", metavar="DIR", help="CURVE: folder of allowed stations' and subscribers' public certificates (NAME.key)")
    proxy.set_defaults(handler=cmd_proxy)

    soak = sub.add_parser("soak", help="replay a folder in a loop at max pace for a while: memory every minute, its slope, windows lost")
    soak.add_argument("--data", type=Path, required=True, help="folder of audio to replay over and over")
    soak.add_argument("--minutes", type=float, default=60.0)
    soak.add_argument("--interval", type=float, default=60.0, help="seconds between memory samples")
    soak.add_argument("--model", type=Path)
    soak.add_argument("--json", type=Path, help="also write the figures here")
    soak.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override for the daemon, e.g. --set recording.enabled=true")
    soak.add_argument("--jsonl", type=Path, metavar="FILE", help="also run `streamdet listen --jsonl FILE` as a second subscriber")
    soak.add_argument("--web", action="store_true", help="also run `streamdet web` (on the clips folder, when recording is on) with a headless Chromium keeping its page open")
    soak.add_argument("--pace", default="max", help="the replay's pace (max, realtime or Nx, as `run --pace`)")
    soak.add_argument("--heap", type=Path, metavar="DIR", help="the daemon writes heap snapshots and memory counters to DIR; the soak compares them")
    soak.set_defaults(handler=cmd_soak)

    keys = sub.add_parser("keys", help="make a CURVE certificate pair for the bus: NAME.key (public) and NAME.key_secret")
    keys.add_argument("folder", type=Path)
    keys.add_argument("--name", default="streamdet", help="file name stem (default: streamdet)")
    keys.add_argument("--force", action="store_true", help="replace an existing pair of that name (every peer holding the old one is cut off)")
    keys.set_defaults(handler=cmd_keys)

    demo = sub.add_parser("demo", help="replay the bundled clips through the daemon and show what a subscriber receives")
    demo.add_argument("--pace", default="max", help="max (default), realtime, or a factor such as 8x")
    demo.add_argument("--model", type=Path, help="model artifact (default: the bundled model)")
    demo.set_defaults(handler=cmd_demo)

    bench = sub.add_parser("bench", help="measure throughput and latency (prints figures)")
    bench.add_argument("--data", type=Path, help="directory of audio to replay (default: the bundled clips)")
    bench.add_argument("--model", type=Path, help="model artifact (default: the bundled model)")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--spectrogram", action="store_true", help="end to end with the spec topic on (its cost)")
    bench.add_argument("--forms", action="store_true", help="also time the model alone in each candidate form (inference form, channels-last, int8, bfloat16) against the artifact as saved")
    bench.add_argument("--passes", type=int, default=5, help="end-to-end replays; the first is reported as cold, the median of the rest as steady state")
    bench.add_argument("--threads", type=int, default=1, help="torch intra-op threads, as model.threads (default 1)")
    bench.add_argument("--json", type=Path, help="also write the figures as JSON here")
    bench.add_argument("--mic", nargs="?", const="", metavar="DEVICE", help="instead: monitor this input device in real time and measure the daemon's CPU use and latency")
    bench.add_argument("--seconds", type=float, default=30.0, help="with --mic: how long to measure")
    bench.add_argument("--vs", action="append", default=[], metavar="NAME=COMMAND",
                       help="also time another detector on the same data in the same run, e.g. --vs 'birdnet=birdnet-analyze {data} -o /tmp/bn' ({data}: the folder)")
    bench.set_defaults(handler=cmd_bench)


def add_curve_client_args(parser: argparse.ArgumentParser) -> None:
    """The flags of every subscriber of a CURVE bus (listen, export, mqtt)."""
    parser.add_argument("--curve-secret-key", metavar="FILE", help="CURVE: this subscriber's certificate (NAME.key_secret from `streamdet keys`)")
    parser.add_argument("--curve-server-key", metavar="FILE", help="CURVE: the daemon's or proxy's public certificate (NAME.key)")


def build_config(args):
    from streamdet.config import SourceConfig, check_config, load_config
    from streamdet.typedconfig import ConfigError, apply_overrides

    try:
        config = load_config(args.config)
        if args.replay is not None or args.mic is not None:
            chosen = []
            if args.replay is not None:
                base = next((s for s in config.sources if s.kind == "replay"), SourceConfig())
                chosen.append(dataclasses.replace(base, kind="replay", path=str(args.replay)))
            if args.mic is not None:
                base = next((s for s in config.sources if s.kind == "mic"), SourceConfig(name="mic"))
                chosen.append(dataclasses.replace(base, kind="mic", name=base.name if base.kind == "mic" else "mic", device=args.mic or None))
            config.sources = chosen
        for source in config.sources:
            if args.pace is not None and source.kind == "replay":
                source.pace = args.pace
            if args.loop and source.kind == "replay":
                source.loop = True
            if args.name is not None and len(config.sources) == 1:
                source.name = args.name
        if args.model is not None:
            config.model.path = str(args.model)
        if args.device is not None:
            config.model.device = args.device
        if args.endpoint is not None:
            config.bus.endpoint = args.endpoint
        if args.connect is not None:
            config.bus.endpoint, config.bus.connect = args.connect, True
        if args.wait_subscribers is not None:
            config.bus.wait_subscribers = args.wait_subscribers
        if args.spectrogram:
            config.bus.spectrogram = True
        if args.log_level is not None:
            config.log.level = args.log_level
        if getattr(args, "metrics", None) is not None:
            config.metrics.address = args.metrics
        apply_overrides(config, args.set)
        check_config(config, args.config)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    for source in config.sources:
        if source.kind == "replay" and not source.loop and not Path(source.path).is_dir():
            raise UserError(f"source {source.name}: replay directory {source.path} does not exist or is not a directory")
    return config


def cmd_run(args) -> int:
    # A SIGHUP before the daemon can reload (the model takes seconds to load) is kept for later,
    # never the default action, which would kill the process.
    early_hup = []
    signal.signal(signal.SIGHUP, lambda *_: early_hup.append(1))
    config = build_config(args)
    setup_logging(config.log.level)
    from streamdet.detect.artifact import load
    from streamdet.service.daemon import Daemon, StartError, serve

    def reload():
        """SIGHUP: the config file again, with this command line's overrides, and its model."""
        fresh = build_config(args)
        return fresh, load(fresh.model.path, fresh.model.device, optimise=True)

    heap = None
    if args.heap_snapshots is not None:
        from streamdet.service.heapwatch import HeapWatch

        heap = HeapWatch(args.heap_snapshots, args.heap_interval)
    try:
        daemon = Daemon.from_config(config, reload=reload)
    except StartError as exc:
        raise UserError(str(exc)) from None
    try:
        return serve(daemon, reload_now=bool(early_hup))
    finally:
        if heap is not None:
            heap.close()


def curve_args(args, server: bool):
    """A Curve from --curve-* flags, or None; one line for a missing half."""
    from streamdet.bus.security import Curve

    other = args.curve_clients if server else args.curve_server_key
    if not args.curve_secret_key and not other:
        return None
    if not (args.curve_secret_key and other):
        raise UserError("--curve-secret-key and " + ("--curve-clients" if server else "--curve-server-key") + " go together")
    return Curve(args.curve_secret_key, clients=other) if server else Curve(args.curve_secret_key, server_key=other)


def subscriber_curve(args, endpoint: str):
    """The --curve-* flags, checked with the endpoint by opening a subscriber once: a malformed
    address or key is one line before anything starts."""
    import zmq

    from streamdet.addresses import endpoint_problem
    from streamdet.bus.security import SecurityError
    from streamdet.bus.sockets import Subscriber

    if problem := endpoint_problem(endpoint):
        raise UserError(f"--endpoint: {problem}")
    curve = curve_args(args, server=False)
    try:
        Subscriber(endpoint, curve=curve).close()
    except zmq.ZMQError as exc:
        raise UserError(f"--endpoint {endpoint[:60]}: {zmq.strerror(exc.errno)}") from None
    except SecurityError as exc:
        raise UserError(str(exc)) from None
    return curve


def cmd_soak(args) -> int:
    import json

    from streamdet.soak import run_soak

    if not args.data.is_dir():
        raise UserError(f"--data {args.data}: not a directory")
    if not args.minutes > 0 or not args.interval > 0:
        raise UserError("--minutes and --interval: expected positive numbers")
    try:
        result = run_soak(args.data, args.minutes, args.model, args.interval, overrides=args.set, jsonl=args.jsonl, heap=args.heap, pace=args.pace, web=args.web)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if result["missed"] == 0 else 1


def cmd_keys(args) -> int:
    from streamdet.bus.security import SecurityError, make_keys

    try:
        public, secret = make_keys(args.folder, args.name, args.force)
    except SecurityError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {public} (public: give it to the other end) and {secret} (secret: keep it, mode 600)")
    return 0


def cmd_proxy(args) -> int:
    from streamdet.bus.proxy import run_proxy
    from streamdet.bus.sockets import BusError

    setup_logging("info")
    try:
        run_proxy(args.frontend, args.backend, curve=curve_args(args, server=True))
    except BusError as exc:
        raise UserError(str(exc)) from None
    return 0


def cmd_devices(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from streamdet.capture.mic import MicError, import_sounddevice, input_devices

    try:
        sd = import_sounddevice()
        devices = input_devices(sd)
    except MicError as exc:
        raise UserError(str(exc)) from None
    if not devices:
        raise UserError("no input device found (PortAudio lists none)")
    default = sd.default.device[0]
    table = Table(title="input devices (use the index or part of the name with --mic)")
    for col in ("index", "name", "channels", "default rate", "host API", "default"):
        table.add_column(col)
    for d in devices:
        table.add_row(str(d["index"]), d["name"], str(d["channels"]), f"{d['default_rate']:.0f}", d["api"], "*" if d["index"] == default else "")
    Console().print(table)
    return 0


def cmd_listen(args) -> int:

    from streamdet.subscribers.listen import listen

    topics = tuple(args.topic) or ("",)
    if args.timeout is not None and args.timeout <= 0:
        raise UserError(f"--timeout: expected a positive number of seconds, found {args.timeout:g}")
    if args.jsonl is not None and not args.jsonl.parent.is_dir():
        raise UserError(f"--jsonl {args.jsonl}: no such folder {args.jsonl.parent}")
    curve = subscriber_curve(args, args.endpoint)
    view = listen(args.endpoint, curve=curve, topics=topics, sources=tuple(args.source), jsonl=args.jsonl, until_finished=args.until_finished, timeout_s=args.timeout, live=not args.quiet)
    if view.skipped:
        print(f"streamdet listen: warning: skipped {view.skipped} message(s) it could not read; the first: {view.first_skipped}", file=sys.stderr)
    if not view.received and args.timeout:
        print(f"streamdet: no message arrived from {args.endpoint} within {args.timeout:g} s (is a daemon publishing there?)", file=sys.stderr)
        return 1
    return 0


def cmd_web(args) -> int:
    from streamdet.addresses import AddressError, host_port

    try:
        from streamdet.subscribers.web.guard import is_loopback
        from streamdet.subscribers.web.server import serve
    except ImportError:
        raise UserError("streamdet web needs aiohttp, which is not installed: pip install 'streamdet[web]' (in this checkout: .venv/bin/pip install -e '.[web]')") from None
    try:
        host, port = host_port(args.listen)
    except AddressError as exc:
        raise UserError(f"--listen: {exc}") from None
    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--token-file {args.token_file}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
        if len(token) < 16:
            raise UserError(f"--token-file {args.token_file}: expected a token of at least 16 characters (for example: openssl rand -hex 16)")
    elif not is_loopback(host):
        raise UserError(f"--listen {args.listen}: refusing to serve beyond loopback without --token-file (anyone who can reach {host} would see the station)")
    if args.clips is not None and args.clips.exists() and not args.clips.is_dir():
        raise UserError(f"--clips {args.clips}: not a folder")  # a missing one is fine: the daemon makes it at its first clip
    endpoints = args.endpoint or ["tcp://127.0.0.1:5556"]
    for endpoint in endpoints:  # each endpoint checked; the CURVE flags, and so `curve`, are the same for all
        curve = subscriber_curve(args, endpoint)
    setup_logging("info")
    try:
        serve(endpoints, host, port, args.clips, token, tuple(args.source), curve, allow_hosts=tuple(args.allow_host))
    except OSError as exc:
        raise UserError(f"--listen {args.listen}: cannot serve there ({exc.strerror or exc})") from None
    return 0


def cmd_export(args) -> int:
    from streamdet.subscribers.export import ExportError, export, from_bus, read_jsonl

    messages = read_jsonl(args.jsonl) if args.jsonl else from_bus(args.endpoint, args.timeout, subscriber_curve(args, args.endpoint))
    try:
        result = export(messages, args.out, args.clips)
    except ExportError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"--out {args.out}: {exc.strerror or one_line(exc)}") from None
    if result["unreadable"]:
        print(f"streamdet export: warning: skipped {result['unreadable']} message(s) it could not read; the first: {result['first_unreadable']}", file=sys.stderr)
    for source, seq in result["joined_late"].items():
        print(f"streamdet export: warning: joined after the stream began: source {source}'s first {seq} window(s) were published before export subscribed, "
              "and their detections are not in the tables (start the daemon with --wait-subscribers 1)", file=sys.stderr)
    if result["refused"]:
        print(f"streamdet export: warning: wrote no tables for {len(result['refused'])} file name(s) that would leave {args.out} (their detections are in the CSV); the first: {result['refused'][0]!r}", file=sys.stderr)
    print(f"streamdet export: {result['detections']} detection(s) in {result['files']} file(s): tables beside each under {args.out}, all of them in {result['csv']}")
    return 0


def cmd_mqtt(args) -> int:
    import threading

    from streamdet.subscribers.mqtt import MqttError, check_mqtt_config, import_paho, load_mqtt_config, run_bridge
    from streamdet.typedconfig import ConfigError

    try:
        config = load_mqtt_config(args.config)
        for name in ("endpoint", "broker", "username", "password_file", "tls_ca", "client_id", "topic_prefix", "discovery_prefix"):
            if getattr(args, name) is not None:
                setattr(config, name, getattr(args, name))
        check_mqtt_config(config, args.config)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    curve = subscriber_curve(args, config.endpoint)
    try:
        import_paho()
    except MqttError as exc:
        raise UserError(str(exc)) from None
    setup_logging("info")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        run_bridge(config, stop, curve)
    except MqttError as exc:
        print(f"streamdet mqtt: error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args) -> int:
    from streamdet.demo import run_demo

    return run_demo(pace=args.pace, model=args.model)


def cmd_bench(args) -> int:
    import json

    from streamdet.bench import run_bench
    from streamdet.detect.artifact import ArtifactError

    setup_logging("error")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.data is not None and not args.data.is_dir():
        raise UserError(f"--data {args.data}: not a directory")
    if args.data is not None:
        from streamdet.capture.audio import AUDIO_SUFFIXES, list_audio_candidates

        if not any(p.suffix.lower() in AUDIO_SUFFIXES for p in list_audio_candidates(args.data)):
            raise UserError(f"--data {args.data}: no audio files to measure with")
    try:
        if args.mic is not None:
            from streamdet.bench import run_mic_bench

            results = run_mic_bench(args.mic, args.seconds, args.model)
        else:
            peers = {}
            for item in args.vs:
                name, sep, command = item.partition("=")
                if not (sep and name.strip() and command.strip()):
                    raise UserError(f"--vs {item[:60]!r}: expected NAME=COMMAND, such as birdnet='birdnet-analyze {{data}} -o out'")
                peers[name.strip()] = command
            results = run_bench(args.data, args.model, args.device, max(1, args.passes), peers=peers, spectrogram=args.spectrogram, forms=args.forms)
    except (ArtifactError, RuntimeError, ValueError) as exc:
        raise UserError(one_line(exc)) from None
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
