"""Detections for Raven Pro and Audacity: the formats field by field, and a real replay's calls
found at their times in the tables of their files."""
import csv
import json
import re
import subprocess

import pytest
from helpers import REPO, collect, start_daemon, streamdet_command

from streamdet.subscribers.export import RAVEN_COLUMNS, Detection, audacity_labels, raven_table

from audiogen import clip, write

pytestmark = pytest.mark.slow  # starts processes (see the README's contributing notes)

CALLS = {"dawn.wav": [(2.0, 1.5), (8.0, 1.0)], "sub/noon.flac": [(3.0, 2.0)], "quiet.wav": []}
NUMBER = r"-?\d+\.\d+"


def test_raven_selection_table_has_its_columns_and_one_row_per_selection():
    found = [Detection("s", "a.wav", 5.0, 6.5, 2000.0, 5000.0, 0.91, 3), Detection("s", "a.wav", 1.0, 2.0, None, None, 0.7, 1)]
    lines = raven_table(found).splitlines()
    # Raven Pro: a tab-separated header naming the standard measurements, then one line per selection.
    assert lines[0].split("\t") == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)", "Peak Score", "Event ID", "Review"]
    rows = [dict(zip(RAVEN_COLUMNS, line.split("\t"))) for line in lines[1:]]
    assert [r["Selection"] for r in rows] == ["1", "2"]  # numbered from 1, in time order
    assert all(r["View"] == "Spectrogram 1" and r["Channel"] == "1" for r in rows)
    assert [float(r["Begin Time (s)"]) for r in rows] == [1.0, 5.0] and float(rows[1]["End Time (s)"]) == 6.5
    assert rows[0]["Low Freq (Hz)"] == rows[0]["High Freq (Hz)"] == "" and float(rows[1]["Low Freq (Hz)"]) == 2000.0
    assert rows[1]["Peak Score"] == "0.9100" and rows[1]["Event ID"] == "3"
    assert raven_table([]).splitlines() == ["\t".join(RAVEN_COLUMNS)]


def test_audacity_labels_are_regions_with_the_frequency_line_audacity_reads():
    found = [Detection("s", "a.wav", 5.0, 6.5, 2000.0, 5000.0, 0.91, 3), Detection("s", "a.wav", 1.0, 2.0, None, None, 0.7, 1)]
    lines = audacity_labels(found).splitlines()
    # Audacity: "start<TAB>end<TAB>label"; in its extended format a "\<TAB>low<TAB>high" line follows.
    assert re.fullmatch(rf"{NUMBER}\t{NUMBER}\tbird 0\.70", lines[0]) and lines[0].startswith("1.000000\t2.000000")
    assert re.fullmatch(rf"{NUMBER}\t{NUMBER}\tbird 0\.91", lines[1])
    assert lines[2] == "\\\t2000.000000\t5000.000000" and len(lines) == 3
    assert audacity_labels([]) == ""


def read_raven(path):
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == list(RAVEN_COLUMNS)
    return [dict(zip(RAVEN_COLUMNS, line.split("\t"))) for line in lines[1:]]


def test_a_replay_exports_each_call_at_its_time_in_its_files_tables(tiny_model, tmp_path, endpoint):
    replay = tmp_path / "replay"
    (replay / "sub").mkdir(parents=True)
    for i, (name, calls) in enumerate(CALLS.items()):
        rate = 16000 if name.endswith(".flac") else 44100
        write(replay / name, clip(11.0 if calls else 4.0, rate, calls, seed=30 + i), rate)
    daemon = start_daemon("--replay", str(replay), "--pace", "max", "--model", str(tiny_model), "--endpoint", endpoint, "--wait-subscribers", "2")
    from_bus = tmp_path / "from-bus"
    exporter = subprocess.Popen(streamdet_command("export", "--endpoint", endpoint, "--out", str(from_bus), "--timeout", "60"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    got = collect(endpoint)
    out, err = exporter.communicate(timeout=60)
    daemon.communicate(timeout=30)
    assert exporter.returncode == 0, err
    assert "3 detection(s) in 3 file(s)" in out, out
    for name, calls in CALLS.items():
        rows = read_raven(from_bus / f"{name}.streamdet.selections.txt")
        assert len(rows) == len(calls), (name, rows)
        for (start, duration), row in zip(calls, rows):
            begin, end = float(row["Begin Time (s)"]), float(row["End Time (s)"])
            # 1-s windows every 0.5 s: an event edge lies within a window of the call's edge.
            assert start - 1.01 <= begin <= start + 0.51 and start + duration - 0.51 <= end <= start + duration + 1.01, (name, row)
            assert float(row["Low Freq (Hz)"]) < 5500 and float(row["High Freq (Hz)"]) > 2500  # the calls sweep 2.5-5.5 kHz
        labels = (from_bus / f"{name}.streamdet.labels.txt").read_text().splitlines()
        assert len(labels) == 2 * len(calls)
    with open(from_bus / "streamdet.detections.csv") as f:
        table = list(csv.DictReader(f))
    raven_rows = sorted((name, row["Begin Time (s)"]) for name in CALLS for row in read_raven(from_bus / f"{name}.streamdet.selections.txt"))
    assert sorted((r["file"], r["begin_s"]) for r in table) == raven_rows and all(r["source"] == "replay" for r in table)

    # The same run recorded by a subscriber (as `listen --jsonl` writes it) exports the same tables.
    recording = tmp_path / "run.jsonl"
    recording.write_text("".join(json.dumps({"topic": t, "message": m}) + "\n" for t, m, _ in got))
    from_file = tmp_path / "from-file"
    result = subprocess.run(streamdet_command("export", "--jsonl", str(recording), "--out", str(from_file)), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in CALLS:
        assert (from_file / f"{name}.streamdet.selections.txt").read_text() == (from_bus / f"{name}.streamdet.selections.txt").read_text()


def test_bad_recording_lines_are_skipped_counted_and_named_in_one_line(tmp_path):
    recording = tmp_path / "run.jsonl"
    recording.write_text("not json\n" + json.dumps({"topic": "status", "message": {"type": "status"}}) + "\n")
    result = subprocess.run(streamdet_command("export", "--jsonl", str(recording), "--out", str(tmp_path / "out")), capture_output=True, text=True, cwd=REPO, timeout=60)
    first = f"{recording}, line 1: expected a JSON object with 'topic' and 'message', as `streamdet listen --jsonl` writes"
    assert result.returncode == 0 and result.stderr.strip().splitlines() == [f"streamdet export: warning: skipped 2 message(s) it could not read; the first: {first}"]


def test_a_message_export_cannot_read_is_counted_and_the_rest_exported(tmp_path):
    good = {"v": 1, "type": "event", "source": "s", "state": "end", "event_id": 0, "onset": 1.0, "offset": 2.0, "duration": 1.0, "peak_score": 0.9, "band_hz": [2000, 4000], "file": "a.wav", "file_onset": 1.0}
    bad = {**good, "event_id": 1}
    del bad["duration"]
    recording = tmp_path / "run.jsonl"
    recording.write_text("".join(json.dumps({"topic": "event.s", "message": m}) + "\n" for m in (bad, good)))
    result = subprocess.run(streamdet_command("export", "--jsonl", str(recording), "--out", str(tmp_path / "out")), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == f"streamdet export: warning: skipped 1 message(s) it could not read; the first: {recording}, line 1: event.duration: missing"
    assert len(read_raven(tmp_path / "out" / "a.wav.streamdet.selections.txt")) == 1


def test_an_export_that_joined_after_the_stream_began_says_so(tmp_path):
    """Tables of an export started beside `run --pace max` without --wait-subscribers read as "no
    detection" for what it missed: it says which windows it never saw."""
    from streamdet.bus import messages

    late = [messages.loss("r", "s", seq, seq * 0.5, seq * 0.5 + 1, 0.1, 0.2, file="a.wav", offset=seq * 0.5) for seq in range(40, 45)]
    recording = tmp_path / "run.jsonl"
    recording.write_text("".join(json.dumps({"topic": "loss.s", "message": m}) + "\n" for m in late))
    result = subprocess.run(streamdet_command("export", "--jsonl", str(recording), "--out", str(tmp_path / "out")), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and "joined after the stream began: source s's first 40 window(s)" in result.stderr and "--wait-subscribers 1" in result.stderr
    on_time = tmp_path / "on_time.jsonl"
    on_time.write_text("".join(json.dumps({"topic": "loss.s", "message": {**m, "seq": m["seq"] - 40}}) + "\n" for m in late))
    result = subprocess.run(streamdet_command("export", "--jsonl", str(on_time), "--out", str(tmp_path / "out2")), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and "joined after" not in result.stderr


def test_reviews_on_the_page_reach_the_tables_from_the_clips_sidecars_and_nothing_outside_is_read(tmp_path):
    """With --clips, each detection carries the review stored in its clip's sidecar; a clip name in a
    message that leaves the folder, or names a sidecar the station did not write, gives none."""
    clips = tmp_path / "clips" / "s"
    clips.mkdir(parents=True)
    names = [f"s_20261130T10000{i}_0a0b0c0d_e{i}" for i in range(4)]
    sidecars = [{"writer": "streamdet", "review": {"label": "not_bird"}}, {"writer": "streamdet", "review": {"label": "bird"}}, {"writer": "streamdet"}, {"review": {"label": "bird"}}]
    for name, meta in zip(names, sidecars):
        (clips / f"{name}.json").write_text(json.dumps(meta))
    outside = tmp_path / "s_20261130T100009_0a0b0c0d_e9.json"
    outside.write_text(json.dumps({"writer": "streamdet", "review": {"label": "bird"}}))
    good = {"v": 1, "type": "event", "source": "s", "state": "end", "onset": 1.0, "offset": 2.0, "duration": 1.0, "peak_score": 0.9, "band_hz": [2000, 4000], "file": "a.wav", "file_onset": 1.0}
    events = [{**good, "event_id": i, "clip": f"/var/lib/streamdet/clips/s/{name}.flac"} for i, name in enumerate(names)]
    events += [{**good, "event_id": 9, "clip": f"{tmp_path}/clips/s/../../s_20261130T100009_0a0b0c0d_e9.flac"}, {**good, "event_id": 10, "clip": None}]
    recording = tmp_path / "run.jsonl"
    recording.write_text("".join(json.dumps({"topic": "event.s", "message": m}) + "\n" for m in events))
    result = subprocess.run(streamdet_command("export", "--jsonl", str(recording), "--out", str(tmp_path / "out"), "--clips", str(tmp_path / "clips")), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    with (tmp_path / "out" / "streamdet.detections.csv").open() as f:
        reviews = {int(r["event_id"]): r["review"] for r in csv.DictReader(f)}
    assert reviews == {0: "not_bird", 1: "bird", 2: "", 3: "", 9: "", 10: ""}
    assert {r["Event ID"]: r["Review"] for r in read_raven(tmp_path / "out" / "a.wav.streamdet.selections.txt")}["1"] == "bird"
