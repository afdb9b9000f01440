"""Segment figures against strong labels (train.strong): what a segment is, how windows and the
daemon's events reach it, and the NIPS4Bplus tables read as their README says."""
import numpy as np
import pytest

from streamdet.config import DetectorConfig
from train.strong import Strong, StrongLabels, event_segments, load_strong, prf, segment_report, window_segment_scores

STARTS = np.arange(9) * 0.5  # a 5-s clip's 1-s windows every 0.5 s


def test_a_segment_is_bird_when_a_bird_vocalisation_overlaps_it_and_left_out_when_only_an_unknown_does():
    clip = Strong(5.004, birds=[(0.2, 0.46), (2.95, 3.05)], unknown=[(0.1, 0.14), (4.5, 4.6)])
    assert clip.segments().tolist() == [1, 0, 1, 1, -1]  # 5 segments: 4 ms after 5 s make none


def test_a_segment_takes_the_highest_window_overlapping_it():
    decisions = np.array([0, 5, 0, 0, 0, 0, 0, 0, 1.0])  # the window over 0.5-1.5 s is high
    seg = window_segment_scores(decisions, STARTS, 5, 1.0)
    assert seg.tolist() == [5, 5, 0, 0, 1]


def test_events_of_the_daemons_hysteresis_mark_the_segments_they_overlap():
    scores = np.array([0.1, 0.9, 0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])  # one hit, then held by off_score 0.35
    called = event_segments(scores, STARTS, 5, 1.0, DetectorConfig(on_score=0.5, off_score=0.35, min_event_s=0.5, merge_gap_s=0.0))
    assert called.tolist() == [True, True, False, False, False]  # the event runs from 0.5 to 2.0 s
    too_short = DetectorConfig(on_score=0.5, off_score=0.5, min_event_s=3.0, merge_gap_s=0.0)
    assert not event_segments(scores, STARTS, 5, 1.0, too_short).any()


def test_precision_recall_and_f1_count_segments():
    truth = np.array([1, 1, 0, 0], bool)
    got = prf(truth, np.array([1, 0, 1, 0], bool))
    assert got["precision"] == 0.5 and got["recall"] == 0.5 and got["f1"] == 0.5 and got["nobird_called"] == 0.5


def test_the_report_ranks_segments_and_scores_windows_and_events_at_the_threshold():
    clip = Strong(5.0, birds=[(1.2, 1.3)], unknown=[])
    decisions = np.array([-3, 2, 2, -3, -3, -3, -3, -3, -3.0])  # windows over 0.5-2.0 s above the threshold 0
    got = segment_report([(clip, decisions, STARTS, 0.0, 1.0)], 1.0, DetectorConfig(merge_gap_s=0.0))
    # Segment 0 ties with the bird segment (one window reaches both): counted half.
    assert got["segments"] == 5 and got["bird_segments"] == 1 and got["auc"] == pytest.approx(3.5 / 4)
    # Windows: segments 0 and 1 are reached by a high window (precision 1/2); the event, 0.5-2.0 s, as well.
    assert got["windows"]["recall"] == 1.0 and got["windows"]["precision"] == pytest.approx(1 / 2)
    assert got["events"]["recall"] == 1.0 and got["events"]["nobird_called"] == pytest.approx(1 / 4)
    assert segment_report([], 1.0) is None


def test_nips4bplus_tables_are_read_beside_the_clips_folder_and_unannotated_files_are_unknown(tmp_path):
    root = tmp_path / "nips4bplus"
    root.mkdir()
    (tmp_path / "nips4b").mkdir()
    (root / "events.csv").write_text("file_number,start_s,duration_s,end_s,label,taxon,call_type\n"
                                     "1,0.2,0.1,0.3,Butbut_call,bird,call\n1,2.5,0.2,2.7,Unknown,Unknown,Unknown\n"
                                     "1,3.1,0.5,3.6,Plaaff_song,insect,song\n2,0.1,0.1,0.2,Sylmel_song,bird,song\n")
    (root / "file_summary.csv").write_text("file_number,has_annotation_file,annotation_file_empty,file_duration_s\n"
                                           "1,True,False,5.0039\n2,False,False,5.0039\n3,True,True,5.0039\n")
    table = load_strong(tmp_path / "nips4b")
    assert set(table) == {"nips4b_birds_trainfile001.flac", "nips4b_birds_trainfile003.flac"}
    assert table["nips4b_birds_trainfile001.flac"].segments().tolist() == [1, 0, -1, 0, 0]  # the insect is no bird
    assert table["nips4b_birds_trainfile003.flac"].segments().tolist() == [0] * 5
    labels = StrongLabels()
    assert labels.of(tmp_path / "nips4b" / "nips4b_birds_trainfile001.flac").birds == [(0.2, 0.3)]
    assert labels.of(tmp_path / "nips4b" / "nips4b_birds_trainfile002.flac") is None
    assert labels.of(tmp_path / "other" / "x.flac") is None


@pytest.mark.slow
def test_evaluate_reports_segment_figures_where_strong_labels_lie_beside_the_clips(tmp_path, tiny_model):
    """Clips named as NIPS4B's, calls at known times, and a NIPS4Bplus table of those times beside
    them: `evaluate` scores 1-s segments (ranked, at the threshold, and through the hysteresis)."""
    import json
    import subprocess
    import sys

    from audiogen import clip, write

    folder = tmp_path / "nips4b"
    folder.mkdir()
    strong = tmp_path / "nips4bplus"
    strong.mkdir()
    events, summary, rows = ["file_number,start_s,duration_s,end_s,label,taxon,call_type"], ["file_number,has_annotation_file,annotation_file_empty,file_duration_s"], ["file\tlabel"]
    for n in range(1, 13):
        calls = [(1.0 + (n % 3), 1.0)] if n % 2 else []
        write(folder / f"nips4b_birds_trainfile{n:03d}.flac", clip(5.0, 22050, calls, seed=300 + n), 22050)
        events += [f"{n},{s},{d},{s + d},Sp_call,bird,call" for s, d in calls]
        summary.append(f"{n},True,{not calls},5.0")
        rows.append(f"nips4b_birds_trainfile{n:03d}.flac\t{'bird' if calls else 'nobird'}")
    (strong / "events.csv").write_text("\n".join(events) + "\n")
    (strong / "file_summary.csv").write_text("\n".join(summary) + "\n")
    (folder / "labels.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "train", "evaluate", "--model", str(tiny_model), "--data", str(folder), "--labels", str(folder / "labels.tsv"),
                             "--out", str(out), "--cache", str(tmp_path / "cache")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    seg = json.loads((out / "evaluation.json").read_text())["blocks"]["all"]["segments"]
    assert seg["clips"] == 12 and seg["segments"] == 60 and seg["bird_segments"] == 6  # a call from 1.0 to 2.0 s fills one segment
    assert seg["auc"] > 0.8 and 0 <= seg["events"]["f1"] <= 1 and 0 <= seg["windows"]["recall"] <= 1


def test_event_settings_are_chosen_by_event_f1_on_out_of_fold_scores(tmp_path):
    """`python -m train events` on a crossval's strong_windows: every setting of the grid (off at
    most on), best event F1 first."""
    import json
    import subprocess
    import sys

    from train.strong import EVENT_GRID, choose_events

    strong = tmp_path / "nips4bplus"
    strong.mkdir()
    (tmp_path / "nips4b").mkdir()
    (strong / "events.csv").write_text("file_number,start_s,duration_s,end_s,label,taxon,call_type\n1,1.2,0.1,1.3,Sp_call,bird,call\n")
    (strong / "file_summary.csv").write_text("file_number,has_annotation_file,annotation_file_empty,file_duration_s\n1,True,False,5.0\n2,True,True,5.0\n")
    rows = [{"file": str(tmp_path / "nips4b" / f"nips4b_birds_trainfile00{n}.flac"), "decisions": d, "starts": STARTS.tolist(), "threshold": 0.0, "scale": 1.0, "window_s": 1.0}
            for n, d in ((1, [-3, 2, 2, -3, -3, -3, -3, -3, -3]), (2, [-3, -0.5, -3, -3, -3, -3, -3, -3, -3]))]
    got = choose_events(rows, 1.0)
    grid = EVENT_GRID
    assert len(got) == sum(off <= on for on in grid["on_score"] for off in grid["off_score"]) * len(grid["merge_gap_s"]) * len(grid["min_event_s"])
    assert got == sorted(got, key=lambda r: -r["f1"]) and got[0]["f1"] == pytest.approx(2 / 3)  # segments 0 and 1 called, 1 is bird
    path = tmp_path / "cv.json"
    path.write_text(json.dumps({"strong_windows": rows}))
    result = subprocess.run([sys.executable, "-m", "train", "events", "--crossval", str(path), "--top", "3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "best event F1 first" in result.stdout, result.stderr
    path.write_text(json.dumps({"blocks": {}}))
    result = subprocess.run([sys.executable, "-m", "train", "events", "--crossval", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "holds no window scores" in result.stderr and result.stderr.count("\n") == 1
