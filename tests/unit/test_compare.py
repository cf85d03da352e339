"""Unit tests for testbed.compare and testbed.rundir: run directories the tests write themselves
(shaped like real runs, tests/unit/rundir_fixture.py), good and broken."""
import argparse
import csv
import json

import pytest
import rundir_fixture as F

from testbed import compare
from testbed.rundir import RunDirError, load_run, read_events

PNG = b"\x89PNG\r\n\x1a\n"


def run_cli(*args):
    p = argparse.ArgumentParser(prog="daitn")
    compare.add_parser(p.add_subparsers(dest="cmd", required=True))
    a = p.parse_args(["compare", *map(str, args)])
    return a.fn(a)


# ---- metrics from one run -----------------------------------------------------------------------
def test_run_metrics_from_fixture(tmp_path):
    row = compare.run_metrics(load_run(F.write_run(tmp_path)))
    assert row["run_id"] == "20260101-000000-run"
    assert (row["name"], row["mode"], row["policy"], row["seed"]) == ("fixture", "dcc", "greedy", 3)
    assert row["time_to_target_s"] == pytest.approx(F.TIME_TO_TARGET)
    assert row["wire_bytes"] == F.WIRE_BYTES == 10500
    assert row["raw_data_bytes"] == F.RAW_BYTES
    assert row["final_accuracy"] == pytest.approx(F.FINAL_ACCURACY)
    assert (row["tasks"], row["tasks_reached"]) == (1, 1)
    # the workload records aggregates only: its mean and p95 shown, p50/p99 not invented
    assert (row["queries_sent"], row["queries_answered"]) == (10, 9)
    assert row["latency_mean_ms"] == 12.0 and row["latency_p95_ms"] == 20.0
    assert row["latency_p50_ms"] is None and row["latency_p99_ms"] is None
    assert "p50/p99 cannot be computed" in row["latency_note"]


def test_accuracy_curve_counts_bytes_sent_before_each_verdict(tmp_path):
    curves = compare.accuracy_curves(load_run(F.write_run(tmp_path)))
    pts = curves[0]["points"]
    assert [p["hop"] for p in pts] == [1, 2]
    assert [p["s"] for p in pts] == pytest.approx([0.2, 0.7])
    assert [p["bytes"] for p in pts] == [1000 + 2000, 1000 + 2000 + 3000 + 4000]  # the result comes after


def test_mode_from_spec_and_missed_target(tmp_path):
    spec = dict(F.SPEC, mode="centralised")
    summ = F.summary()
    summ["tasks"][0].update(reached=False, final_accuracy=0.7, target_accuracy=0.95)
    evs = [e for e in F.events() if e["kind"] != "evaluation" or e["accuracy"] < 0.8]
    row = compare.run_metrics(load_run(F.write_run(tmp_path, spec=spec, summ=summ, evs=evs)))
    assert row["mode"] == "centralised"
    assert row["time_to_target_s"] is None and row["tasks_reached"] == 0
    assert "missed" in compare.render_table([row])


def test_policy_falls_back_to_plan_event(tmp_path):
    spec = {k: v for k, v in F.SPEC.items() if k != "controller"}
    assert compare.run_metrics(load_run(F.write_run(tmp_path, spec=spec)))["policy"] == "greedy"


def test_per_query_records_give_exact_percentiles(tmp_path):
    evs = [e for e in F.events() if e["kind"] != "workload_result"]
    lat = [float(x) for x in range(1, 101)]  # 1..100 ms
    evs += [{"t": 1000.95 + i * 1e-4, "src": "h1", "kind": "submitted_query_result", "seq": i, "model": 1,
             "answered": True, "latency_ms": x} for i, x in enumerate(lat)]
    evs.append({"t": 1000.99, "src": "h1", "kind": "submitted_query_result", "seq": 999, "model": 1,
                "answered": False, "latency_ms": 5000.0})
    row = compare.run_metrics(load_run(F.write_run(tmp_path, evs=sorted(evs, key=lambda e: e["t"]))))
    assert (row["queries_sent"], row["queries_answered"]) == (101, 100)
    assert row["latency_p50_ms"] == 51.0 and row["latency_p99_ms"] == 100.0  # unanswered one left out
    assert row["latency_mean_ms"] == pytest.approx(50.5)


def test_percentile_nearest_rank():
    assert compare.percentile([], 0.5) is None
    assert compare.percentile([7.0], 0.99) == 7.0
    assert compare.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 3.0


# ---- the verb ------------------------------------------------------------------------------------
def test_compare_writes_table_json_csv_and_plots(tmp_path, capsys):
    a = F.write_run(tmp_path, "a")
    evs = F.events()
    for e in evs:  # run b: twice the bytes
        if e["kind"] == "transfer":
            e["bytes"] *= 2
    b = F.write_run(tmp_path, "b", evs=evs, maps={})
    out = tmp_path / "cmp"
    assert run_cli(a, b, "--out", out) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["run", "run", "id"]
    row_a = next(ln for ln in lines if ln.startswith("a "))
    assert "10.50 kB" in row_a and "0.700" in row_a and "0.900" in row_a and "9/10" in row_a and "n/a" in row_a
    assert "21.00 kB" in next(ln for ln in lines if ln.startswith("b "))
    data = json.loads((out / "compare.json").read_text())
    assert [r["wire_bytes"] for r in data["rows"]] == [10500, 21000]
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["a", "b"]
    assert rows[0]["time_to_target_s"] == "0.7" and rows[0]["latency_p50_ms"] == ""
    for name in ("accuracy_vs_time.png", "accuracy_vs_bytes.png", "routes/a.png", "routes/b.png"):
        assert (out / name).read_bytes().startswith(PNG), name


def test_compare_json_flag_prints_json(tmp_path, capsys):
    assert run_cli(F.write_run(tmp_path), "--out", tmp_path / "c", "--json") == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["wire_bytes"] == F.WIRE_BYTES


def test_same_directory_names_get_distinct_labels(tmp_path):
    a = F.write_run(tmp_path / "x", "run")
    b = F.write_run(tmp_path / "y", "run")
    res = compare.compare([a, b], tmp_path / "c")
    assert [r["label"] for r in res["rows"]] == ["run#1", "run#2"]


# ---- broken input: exit 2, a message naming the file and what to do, no traceback -----------------
def _break(tmp_path, how):
    d = F.write_run(tmp_path)
    if how == "missing_summary":
        (d / "summary.json").unlink()
    elif how == "garbage_summary":
        (d / "summary.json").write_text('{"mode": "dcc", "tasks": [')
    elif how == "summary_not_object":
        (d / "summary.json").write_text("[1, 2]")
    elif how == "summary_without_tasks":
        (d / "summary.json").write_text('{"mode": "dcc"}')
    elif how == "garbage_events_middle":
        lines = (d / "events.jsonl").read_text().splitlines()
        lines[5] = "\x00\x01garbage"
        (d / "events.jsonl").write_text("\n".join(lines) + "\n")
    elif how == "event_without_kind":
        lines = (d / "events.jsonl").read_text().splitlines()
        lines[3] = '{"t": 1.0}'
        (d / "events.jsonl").write_text("\n".join(lines) + "\n")
    elif how == "empty_events":
        (d / "events.jsonl").write_text("")
    elif how == "missing_events":
        (d / "events.jsonl").unlink()
    elif how == "garbage_spec":
        (d / "spec.resolved.yaml").write_text("name: [unclosed\n  - : :")
    elif how == "garbage_manifest":
        (d / "manifest.json").write_text("{run_id: nope")
    elif how == "binary_summary":
        (d / "summary.json").write_bytes(b"\xff\xfe\x00garbage")
    return d


@pytest.mark.parametrize("how,file,fragment", [
    ("missing_summary", "summary.json", "the run did not finish"),
    ("garbage_summary", "summary.json", "not valid JSON (line 1"),
    ("summary_not_object", "summary.json", "expected a JSON object, found a JSON list"),
    ("summary_without_tasks", "summary.json", "has no 'tasks' list"),
    ("garbage_events_middle", "events.jsonl", "line 6 is not JSON"),
    ("event_without_kind", "events.jsonl", "line 4 is an object without a 'kind'"),
    ("empty_events", "events.jsonl", "no readable event"),
    ("missing_events", "events.jsonl", "missing"),
    ("garbage_spec", "spec.resolved.yaml", "not valid YAML"),
    ("garbage_manifest", "manifest.json", "not valid JSON"),
    ("binary_summary", "summary.json", "not UTF-8"),
])
def test_broken_run_directory_exits_2(tmp_path, capsys, how, file, fragment):
    d = _break(tmp_path, how)
    assert run_cli(d, "--out", tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert err.startswith("daitn compare: ")
    assert str(d / file) in err and fragment in err
    assert "Traceback" not in err
    if how not in ("garbage_spec",):
        assert "daitn run" in err  # what to do


def test_not_a_run_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for path, fragment in ((tmp_path / "empty", "not a run directory"),
                           (tmp_path / "file.txt", "not a directory"),
                           (tmp_path / "nowhere", "no such directory")):
        assert run_cli(path, "--out", tmp_path / "c") == 2
        err = capsys.readouterr().err
        assert fragment in err and str(path) in err and "Traceback" not in err


def test_one_bad_run_among_good_ones_names_it(tmp_path, capsys):
    good = F.write_run(tmp_path, "good")
    bad = F.write_run(tmp_path, "bad")
    (bad / "summary.json").unlink()
    assert run_cli(good, bad, "--out", tmp_path / "c") == 2
    assert str(bad / "summary.json") in capsys.readouterr().err


def test_truncated_last_event_line_is_a_warning(tmp_path, capsys):
    d = F.write_run(tmp_path)
    text = (d / "events.jsonl").read_text()
    (d / "events.jsonl").write_text(text + '{"t": 1002.0, "src": "dcc", "kind": "li')  # killed mid-write
    evs, warnings = read_events(d / "events.jsonl")
    assert len(evs) == len(F.events())
    assert len(warnings) == 1 and "last line (38) is cut off" in warnings[0]
    assert run_cli(d, "--out", tmp_path / "c") == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "cut off" in captured.err
    assert "10.50 kB" in captured.out


def test_load_run_raises_run_dir_error(tmp_path):
    with pytest.raises(RunDirError, match="summary.json: missing"):
        load_run(_break(tmp_path, "missing_summary"))
