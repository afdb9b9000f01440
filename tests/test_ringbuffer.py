import threading
import time

import numpy as np

from streamdet.capture.ringbuffer import RingBuffer


def test_reads_return_exactly_what_was_written_across_the_wrap():
    ring = RingBuffer(100)
    data = np.arange(1000, dtype=np.float32)
    got, pos = [], 0
    for i in range(0, 1000, 37):
        ring.write(data[i : i + 37])
        start, out = ring.read(1000)
        assert start == pos
        pos += len(out)
        got.append(out)
    assert np.array_equal(np.concatenate(got), data)
    assert ring.overwritten == 0


def test_a_lapped_reader_sees_the_gap_and_it_is_counted():
    ring = RingBuffer(100)
    ring.write(np.arange(250, dtype=np.float32))
    start, out = ring.read(1000)
    assert start == 150  # the oldest 150 samples were overwritten
    assert np.array_equal(out, np.arange(150, 250, dtype=np.float32))
    assert ring.overwritten == 150


def test_waiting_writer_loses_nothing_to_a_slow_reader():
    ring = RingBuffer(64)
    data = np.arange(5000, dtype=np.float32)

    def produce():
        for i in range(0, len(data), 50):
            ring.write(data[i : i + 50], wait=True)

    producer = threading.Thread(target=produce)
    producer.start()
    got = []
    while sum(len(g) for g in got) < len(data):
        _, out = ring.read(20)
        got.append(out)
        time.sleep(0.0001)
    producer.join()
    assert np.array_equal(np.concatenate(got), data)
    assert ring.overwritten == 0


def test_waiting_writer_gives_up_when_told_to_stop():
    ring = RingBuffer(10)
    ring.write(np.zeros(10, dtype=np.float32))
    assert ring.write(np.zeros(5, dtype=np.float32), wait=True, stop=lambda: True) == 0


def test_arrival_time_is_when_the_covering_write_completed():
    ring = RingBuffer(1000)
    ring.write(np.zeros(100, dtype=np.float32))
    t1 = time.monotonic()
    time.sleep(0.01)
    ring.write(np.zeros(100, dtype=np.float32))
    assert ring.arrival_time(50) <= t1
    assert ring.arrival_time(150) > t1
    assert ring.arrival_time(201) is None


class _PausingStore:
    """The ring's sample store, which stops the producer right after it copied its samples in and
    before it commits them: the moment a reader must not be fooled by."""

    def __init__(self, data):
        self.data, self.copied, self.resume = data, threading.Event(), threading.Event()
        self.armed = False

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value):
        self.data[key] = value
        if self.armed and threading.current_thread() is not threading.main_thread():
            self.copied.set()
            self.resume.wait(10)


def test_a_read_racing_a_write_never_returns_samples_overwritten_during_the_copy():
    ring = RingBuffer(10)
    ring.write(np.arange(10, dtype=np.float32))  # positions 0-9, unread
    store = _PausingStore(ring._data)
    ring._data = store
    store.armed = True
    producer = threading.Thread(target=ring.write, args=(np.arange(10, 13, dtype=np.float32),))
    producer.start()
    assert store.copied.wait(10)  # positions 10-12 are in slots 0-2, not yet committed
    start, out = ring.read(100)
    store.resume.set()
    producer.join()
    # Positions 0-2 were overwritten while they were being read: dropped and counted, not returned.
    assert start == 3 and np.array_equal(out, np.arange(3, 10, dtype=np.float32))
    assert ring.overwritten == 3
    start, out = ring.read(100)
    assert start == 10 and np.array_equal(out, np.arange(10, 13, dtype=np.float32))
