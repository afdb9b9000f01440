from streamdet.config import DetectorConfig
from streamdet.detect.events import EventTracker


def run(scores, hop=0.5, length=1.0, **config):
    tracker = EventTracker(DetectorConfig(**config))
    out = []
    for i, s in enumerate(scores):
        out += tracker.update(i * hop, i * hop + length, s)
    return out + tracker.close()


def ends(transitions):
    return [(t["onset"], t["offset"]) for t in transitions if t["state"] == "end"]


def test_hysteresis_keeps_an_event_open_between_off_and_on():
    # 0.4 is above off (0.35) but below on (0.5): the event continues through it.
    out = run([0, 0.9, 0.4, 0.4, 0.9, 0, 0, 0, 0])
    assert ends(out) == [(0.5, 3.0)]
    assert [t["state"] for t in out] == ["start", "end"]


def test_a_score_between_off_and_on_does_not_open_an_event():
    assert run([0, 0.45, 0.45, 0]) == []


def test_short_gaps_merge_and_long_gaps_split():
    # Below off for one window (gap 0) merges; a long quiet stretch splits.
    assert ends(run([0.9, 0.1, 0.9, 0, 0, 0, 0, 0.9, 0, 0, 0, 0])) == [(0.0, 2.0), (3.5, 4.5)]
    assert len(ends(run([0.9, 0.1, 0.1, 0.9, 0, 0, 0, 0], merge_gap_s=0.0))) == 2


def test_events_shorter_than_min_duration_are_never_announced():
    assert run([0, 0.9, 0, 0, 0, 0], min_event_s=1.5) == []
    out = run([0, 0.9, 0.9, 0, 0, 0, 0], min_event_s=1.5)
    assert ends(out) == [(0.5, 2.0)]


def test_close_ends_an_open_event_at_its_last_hit():
    tracker = EventTracker(DetectorConfig())
    tracker.update(0.0, 1.0, 0.9)
    tracker.update(0.5, 1.5, 0.9)
    (end,) = tracker.close()
    assert (end["state"], end["onset"], end["offset"], end["windows"]) == ("end", 0.0, 1.5, 2)
    assert not tracker.active


def test_an_endless_chorus_is_cut_into_events_of_at_most_max_event_s_that_follow_each_other():
    # 31 minutes of song, one window every 0.5 s, all of it above on_score.
    out = run([0.9] * 3720, max_event_s=20.0)
    spans = ends(out)
    assert len(spans) == 94 and all(offset - onset <= 20.0 for onset, offset in spans)
    assert spans[0] == (0.0, 20.0) and spans[1][0] == 20.0  # one follows the other, no overlap
    assert spans[-1][1] == 3720 * 0.5 - 0.5 + 1.0  # the last ends with the stream
    starts = [t for t in out if t["state"] == "start"]
    assert "continues" not in starts[0] and [t["continues"] for t in starts[1:]] == [t["event_id"] for t in starts[:-1]]
    closed = [t for t in out if t["state"] == "end"]
    assert all(t.get("cut") for t in closed[:-1]) and not closed[-1].get("cut")  # the last ends with the stream


def test_a_cut_event_continues_only_while_scores_stay_up():
    # Cut at 3 s; the next window is still up (0.4 >= off_score): a continuation; then quiet.
    out = run([0.9] * 5 + [0.4, 0.1, 0.1, 0.1, 0.1], max_event_s=3.0)
    assert ends(out) == [(0.0, 3.0), (3.0, 3.5)]
    # Cut, then scores fall below off_score: no continuation is opened.
    out = run([0.9] * 5 + [0.1] * 6, max_event_s=3.0)
    assert ends(out) == [(0.0, 3.0)]
