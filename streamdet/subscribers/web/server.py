"""The web server: bus messages in (one subscriber thread per endpoint), Server-Sent Events out to
each browser through a bounded queue, the page's static files, and clips from inside the clips
folder. aiohttp does the HTTP; nothing here is hand-written protocol."""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from pathlib import Path

from aiohttp import web

from streamdet.subscribers.web.clips import ClipsFolder, spectrogram
from streamdet.subscribers.web.guard import IDLE_S, CappedSite, change_refused, guard, host_names
from streamdet.subscribers.web.history import History, ReviewError
from streamdet.subscribers.web.state import WebState

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PAGES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"), "/style.css": ("style.css", "text/css")}
CLIENT_QUEUE = 400  # messages waiting for one browser; a browser that lets it fill is dropped
THIN_FROM = CLIENT_QUEUE // 2  # past this, a browser gets no more scores and frames until it catches up
HEARTBEAT_S = 10.0
BATCH_S = 0.05  # the bus thread hands messages to the server this often


class Browser:
    """One connected page: its queue, and whether it was dropped for being slow."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=CLIENT_QUEUE)
        self.too_slow = False
        self.thinned = 0

    def offer(self, name: str, data: dict) -> bool:
        """Queue one event; False when the browser has fallen too far behind and must go."""
        if self.too_slow:
            return False
        if name == "msg" and data.get("type") in ("loss", "spec") and self.queue.qsize() >= THIN_FROM:
            self.thinned += 1
            return True
        try:
            self.queue.put_nowait((name, data))
            return True
        except asyncio.QueueFull:
            self.too_slow = True
            return False


class Hub:
    """The state, the browsers, and the counters the page shows about the server itself."""

    def __init__(self, state: WebState, clips: ClipsFolder | None, sources: tuple[str, ...] = ()):
        self.state, self.clips, self.sources = state, clips, sources
        self.history = History(clips) if clips is not None else None
        self.csrf = secrets.token_urlsafe(24)  # what the server's own page sends with a change; other origins cannot read it
        self.endpoints: tuple[str, ...] = ()  # what the page is waiting on, when no daemon has spoken
        self.browsers: set[Browser] = set()
        self.dropped_browsers = self.disconnects = self.failed = 0
        self.started = time.time()

    def publish(self, bodies: list[dict]) -> None:
        for body in bodies:
            try:
                self._publish_one(body)
            except Exception:  # whatever one message does, it costs that message, never those around it
                self.failed += 1
                log.exception("a bus message could not be shown; skipped it (%d so far)", self.failed)

    def _publish_one(self, body: dict) -> None:
        if self.sources and body.get("source") not in (None, *self.sources):
            return
        if self.clips is not None and body.get("type") == "event":
            body = {**body, "clip_url": self.clips.url_of(body.get("clip"))}
        if not self.state.update(body):
            return
        out = [("msg", body)]
        if body.get("type") == "event" and body.get("state") == "end":
            out.append(("hours", self.state.hours.snapshot()))
        for browser in list(self.browsers):
            if not all(browser.offer(name, data) for name, data in out):
                self.dropped_browsers += 1
                self.browsers.discard(browser)
                log.warning("a browser fell %d messages behind; dropped it (it reconnects by itself)", CLIENT_QUEUE)

    def snapshot_json(self) -> str:
        """What a page needs when it (re)connects, with the server's own counters, as JSON text
        (its frames are kept serialised: a snapshot is joined, not encoded again, so the event loop
        is not held by it)."""
        return self.state.snapshot_json({"server": self.server_status(), "clips": self.clips is not None, "endpoints": list(self.endpoints), "csrf": self.csrf})

    def server_status(self) -> dict:
        return {"browsers": len(self.browsers), "dropped_browsers": self.dropped_browsers, "disconnects": self.disconnects, "failed": self.failed,
                "unreadable": self.state.unreadable, "over_limits": self.state.overflow, "messages": self.state.messages, "uptime_s": round(time.time() - self.started, 1)}


def bus_thread(endpoint: str, curve, hub: Hub, loop: asyncio.AbstractEventLoop, stop: threading.Event, unreadable: dict) -> threading.Thread:
    """Receive from `endpoint` until `stop`; hand checked messages to the server in small batches,
    and keep `unreadable[endpoint]` at the count of messages it could not read."""
    from streamdet.bus.sockets import Subscriber

    def run():
        subscriber = Subscriber(endpoint, curve=curve)
        try:
            batch, flush_at = [], time.monotonic() + BATCH_S
            while not stop.is_set():
                got = subscriber.receive(timeout_s=BATCH_S)
                if got is not None:
                    batch.append(got[1])
                unreadable[endpoint] = subscriber.unreadable
                if batch and (time.monotonic() >= flush_at or len(batch) >= 500):
                    loop.call_soon_threadsafe(hub.publish, batch)
                    batch, flush_at = [], time.monotonic() + BATCH_S
                elif not batch:
                    flush_at = time.monotonic() + BATCH_S
        finally:
            subscriber.close()

    thread = threading.Thread(target=run, name=f"bus {endpoint}", daemon=True)
    thread.start()
    return thread


def make_app(hub: Hub, token: str | None = None, names: frozenset[str] = frozenset({"localhost"}), served: set[int] | None = None) -> web.Application:
    app = web.Application(middlewares=[guard(token, names, served if served is not None else set())], client_max_size=1024)

    async def page(request: web.Request) -> web.Response:
        name, kind = PAGES[request.path]
        return web.Response(body=(STATIC / name).read_bytes(), content_type=kind, headers={"Cache-Control": "no-cache"})

    async def state(request: web.Request) -> web.Response:
        return web.Response(text=hub.snapshot_json(), content_type="application/json")

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        browser = Browser()
        hub.browsers.add(browser)
        try:
            await _send_text(response, "snapshot", hub.snapshot_json())
            next_status = time.monotonic() + HEARTBEAT_S
            while True:
                try:
                    name, data = await asyncio.wait_for(browser.queue.get(), max(0.0, next_status - time.monotonic()))
                except asyncio.TimeoutError:  # the server's own counters, busy or not (and a heartbeat)
                    name, data, next_status = "server", hub.server_status(), time.monotonic() + HEARTBEAT_S
                if browser.too_slow and browser.queue.empty():
                    await _send(response, "dropped", {"reason": f"this page fell {CLIENT_QUEUE} messages behind; reconnecting"})
                    break
                await _send(response, name, data)
        except (ConnectionError, asyncio.CancelledError):  # a page closed or reloaded: expected, counted
            hub.disconnects += 1
        finally:
            hub.browsers.discard(browser)
        return response

    async def clip(request: web.Request) -> web.StreamResponse:
        path = hub.clips.file(f"{request.match_info['source']}/{request.match_info['name']}") if hub.clips else None
        if path is None:
            raise web.HTTPNotFound(text="no such clip\n")
        return web.FileResponse(path, headers={"Content-Type": "audio/flac" if path.suffix == ".flac" else "application/json"})

    async def clip_spectrogram(request: web.Request) -> web.Response:
        path = hub.clips.file(f"{request.match_info['source']}/{request.match_info['name']}") if hub.clips else None
        if path is None or path.suffix != ".flac":
            raise web.HTTPNotFound(text="no such clip\n")
        try:
            return web.json_response(await asyncio.get_running_loop().run_in_executor(None, spectrogram, path))
        except (RuntimeError, OSError, ValueError) as exc:  # a clip still being written, or damaged
            raise web.HTTPNotFound(text=f"clip unreadable: {str(exc)[:80]}\n") from None

    for path in PAGES:
        app.router.add_get(path, page)
    history_routes(app, hub)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/stream", stream)
    app.router.add_get("/clips/{source}/{name}", clip)
    app.router.add_get("/api/clip-spectrogram/{source}/{name}", clip_spectrogram)
    return app


def history_routes(app: web.Application, hub: Hub) -> None:
    """The kept days, one day's events and checks (from the sidecars), and reviews: the only
    request that changes anything, so it must also pass change_refused (Origin and the page's secret)."""
    async def in_thread(call, *args):
        return await asyncio.get_running_loop().run_in_executor(None, call, *args)

    async def days(request: web.Request) -> web.Response:
        if hub.history is None:
            raise web.HTTPNotFound(text="no clips folder\n")
        return web.json_response(await in_thread(hub.history.days))

    async def day(request: web.Request) -> web.Response:
        if hub.history is None:
            raise web.HTTPNotFound(text="no clips folder\n")
        try:
            return web.json_response(await in_thread(hub.history.day, request.match_info["day"]))
        except ReviewError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None

    async def review(request: web.Request) -> web.Response:
        refused = change_refused(request, hub.csrf)
        if refused:
            raise web.HTTPForbidden(text=f"streamdet web: {refused}\n")
        if hub.history is None:
            raise web.HTTPNotFound(text="no clips folder\n")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ReviewError("expected a JSON object with clip and label")
            return web.json_response(await in_thread(hub.history.review, body.get("clip"), body.get("label")))
        except (ValueError, UnicodeDecodeError) as exc:  # ReviewError among them, and a body that is not JSON
            raise web.HTTPBadRequest(text=f"streamdet web: review refused: {str(exc)[:160]}\n") from None
        except OSError as exc:  # a read-only clips folder, a full disk
            raise web.HTTPServiceUnavailable(text=f"streamdet web: could not store the review: {exc.strerror or exc}\n") from None

    app.router.add_get("/api/days", days)
    app.router.add_get("/api/day/{day}", day)
    app.router.add_post("/api/review", review)


async def _send(response: web.StreamResponse, name: str, data: dict) -> None:
    await _send_text(response, name, json.dumps(data, separators=(',', ':')))


async def _send_text(response: web.StreamResponse, name: str, text: str) -> None:
    await response.write(f"event: {name}\ndata: {text}\n\n".encode())


def serve(endpoints: list[str], host: str, port: int, clips: Path | None, token: str | None, sources: tuple[str, ...] = (), curve=None,
          ready=None, allow_hosts: tuple[str, ...] = ()) -> None:
    """Run until SIGINT or SIGTERM."""
    hub = Hub(WebState(), ClipsFolder(clips) if clips else None, sources)
    hub.endpoints = tuple(endpoints)
    if hub.clips is not None:
        log.info("read %d detection(s) from the clips' sidecars in %s", hub.clips.count_hours(hub.state.hours), clips)
    stop = threading.Event()
    unreadable: dict[str, int] = {}  # per endpoint, each written by its own thread

    async def main():
        loop = asyncio.get_running_loop()
        threads = [bus_thread(e, curve, hub, loop, stop, unreadable) for e in endpoints]
        served: set[int] = set()  # the connections that made a request (guard.CappedSite closes the others first)
        runner = web.AppRunner(make_app(hub, token, host_names(host, allow_hosts), served), handle_signals=False, shutdown_timeout=1.0,
                               access_log=None, keepalive_timeout=IDLE_S)  # a station's journal is for the station
        await runner.setup()
        await CappedSite(runner, host, port, served).start()
        log.info("serving http://%s:%d/ for %s", host if ":" not in host else f"[{host}]", port, ", ".join(endpoints))
        if ready:
            ready()
        done = asyncio.Event()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        while not done.is_set():
            hub.state.unreadable = sum(unreadable.values())
            try:
                await asyncio.wait_for(done.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
        stop.set()
        await runner.cleanup()
        for thread in threads:
            thread.join(2.0)

    asyncio.run(main())
