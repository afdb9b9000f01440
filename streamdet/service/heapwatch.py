"""`run --heap-snapshots DIR`: where a long-running daemon's memory goes.

RSS alone cannot tell a leak from an allocator that keeps freed pages, or Python objects from
torch's buffers. Every interval this thread writes a tracemalloc snapshot (Python allocations by
line) and one line of counters: RSS, what tracemalloc traces, what glibc's malloc holds in use and
keeps free (torch's CPU tensors and libraries live there, outside tracemalloc), threads and open
files. `streamdet soak --heap DIR` compares them; docs/operations.md has a 2-hour run.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

FRAMES = 4  # enough to tell which caller allocates, cheap enough to leave the daemon near its pace
COUNTERS = "counters.jsonl"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    """glibc's own figures (2.33 and later), or None on another C library."""
    try:
        call = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    call.restype = _MallInfo2
    return call


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int | str = "self") -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def snapshot_path(folder: Path, index: int) -> Path:
    return folder / f"heap-{index:04d}.snapshot"


class HeapWatch:
    def __init__(self, folder: Path, interval_s: float = 60.0):
        self.folder, self.interval_s = Path(folder), interval_s
        self.folder.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._mallinfo = _mallinfo2()
        self._started = time.monotonic()
        tracemalloc.start(FRAMES)
        self._thread = threading.Thread(target=self._run, name="heapwatch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        index = 0
        while not self._stop.wait(0 if index == 0 else self.interval_s):
            self.record(index)
            index += 1

    def record(self, index: int) -> None:
        snapshot = tracemalloc.take_snapshot().filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))
        snapshot.dump(str(snapshot_path(self.folder, index)))
        traced, peak = tracemalloc.get_traced_memory()
        line = {"index": index, "elapsed_s": round(time.monotonic() - self._started, 1), "rss_mib": round(rss_mib(), 2),
                "traced_mib": round(traced / 2**20, 2), "traced_peak_mib": round(peak / 2**20, 2),
                "python_blocks": sys.getallocatedblocks(), "gc_objects": len(gc.get_objects()),
                "threads": threading.active_count(), "open_files": len(os.listdir("/proc/self/fd"))}
        if self._mallinfo is not None:
            info = self._mallinfo()
            line |= {"malloc_in_use_mib": round(info.uordblks / 2**20, 2), "malloc_free_mib": round(info.fordblks / 2**20, 2),
                     "malloc_mmapped_mib": round(info.hblkhd / 2**20, 2), "malloc_arena_mib": round(info.arena / 2**20, 2)}
        with open(self.folder / COUNTERS, "a") as out:
            out.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        tracemalloc.stop()


def read_counters(folder: Path) -> list[dict]:
    path = Path(folder) / COUNTERS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def top_growth(folder: Path, first: int, last: int, limit: int = 10) -> list[str]:
    """The lines whose allocations grew most between two snapshots, largest first."""
    before = tracemalloc.Snapshot.load(str(snapshot_path(folder, first)))
    after = tracemalloc.Snapshot.load(str(snapshot_path(folder, last)))
    stats = after.compare_to(before, "traceback")
    out = []
    for stat in stats[:limit]:
        frames = " > ".join(f"{Path(f.filename).name}:{f.lineno}" for f in stat.traceback)  # caller > callee
        out.append(f"{stat.size_diff / 2**20:+8.2f} MiB {stat.count_diff:+8d} blocks  {frames}")
    return out
