"""`python -m streamdet.subscribers.web.loadtest`: the web server's CPU and memory under a station's
load: one daemon with N replay sources at real time (the bundled demo clips, looped, spectrogram
on), the web server, and B pages open in headless Chromium, for a while. Prints the server's RSS
and CPU share every interval and the RSS slope. Needs the web and test extras and Debian's chromium
and chromium-driver; docs/measurements.md has a run."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from streamdet.demo import demo_clips_dir, free_tcp_endpoint
from streamdet.service.heapwatch import cpu_seconds, rss_mib
from streamdet.soak import slope_mib_per_hour


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamdet.subscribers.web.loadtest")
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--browsers", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--port", type=int, default=8093)
    args = parser.parse_args(argv)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    work = Path(tempfile.mkdtemp(prefix="streamdet-web-load-"))
    endpoint = free_tcp_endpoint()
    sources = "\n".join(f"  - {{kind: replay, name: s{i}, path: {demo_clips_dir()}, pace: realtime, loop: true}}" for i in range(args.sources))
    (work / "daemon.yaml").write_text(f"sources:\n{sources}\nbus: {{endpoint: '{endpoint}', spectrogram: true}}\n"
                                      f"recording: {{enabled: true, directory: {work / 'clips'}}}\nlog: {{level: warning}}\n")
    (work / "clips").mkdir()
    daemon = subprocess.Popen([sys.executable, "-m", "streamdet", "run", "--config", str(work / "daemon.yaml")])
    web = subprocess.Popen([sys.executable, "-m", "streamdet", "web", "--endpoint", endpoint, "--listen", f"127.0.0.1:{args.port}", "--clips", str(work / "clips")])
    time.sleep(5)
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        for i in range(args.browsers):
            if i:
                driver.switch_to.new_window("tab")
            driver.get(f"http://127.0.0.1:{args.port}/")
        started, samples = time.monotonic(), []
        c0, t0 = cpu_seconds(web.pid), time.monotonic()
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(args.interval)
            c1, t1 = cpu_seconds(web.pid), time.monotonic()
            samples.append((t1 - started, rss_mib(web.pid)))
            page = driver.execute_script("return window.streamdet")
            print(f"{(t1 - started) / 60:5.1f} min  web server RSS {samples[-1][1]:6.1f} MiB  CPU {100 * (c1 - c0) / (t1 - t0):5.1f}% of one core"
                  f"  (last tab: {page['points']} scores, {page['framesDrawn']} frames, {page['events']} events)", flush=True)
            c0, t0 = c1, t1
        steady = [s for s in samples if s[0] >= args.interval * 1.5] or samples
        result = {"sources": args.sources, "browsers": args.browsers, "minutes": args.minutes, "rss_mib": [round(m, 1) for _, m in samples],
                  "slope_mib_per_hour": round(slope_mib_per_hour(steady), 2), "cpu_seconds_total": round(cpu_seconds(web.pid), 1)}
        print(json.dumps(result))
    finally:
        driver.quit()
        for process in (web, daemon):
            process.terminate()
            process.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
