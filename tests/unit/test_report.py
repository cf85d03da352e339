"""Unit tests for testbed.report: the Markdown report of a run directory the tests write
themselves (tests/unit/rundir_fixture.py), its figures, and broken input."""
import argparse
import json

import pytest
import rundir_fixture as F

from testbed import report
from testbed.rundir import load_run

PNG = b"\x89PNG\r\n\x1a\n"


def run_cli(*args):
    p = argparse.ArgumentParser(prog="daitn")
    report.add_parser(p.add_subparsers(dest="cmd", required=True))
    a = p.parse_args(["report", *map(str, args)])
    return a.fn(a)


def section(md: str, title: str) -> str:
    start = md.index(f"## {title}\n")
    end = md.find("\n## ", start + 1)
    return md[start:end if end > 0 else None]


@pytest.fixture
def md(tmp_path):
    d = F.write_run(tmp_path)
    path = report.write_report(d)
    assert path == d / "report" / "report.md"
    return path.read_text()


def test_report_files_and_pictures(tmp_path):
    d = F.write_run(tmp_path)
    assert run_cli(d) == 0
    out = d / "report"
    md = (out / "report.md").read_text()
    for name in ("topology", "route", "accuracy", "traffic"):
        png = out / f"report-{name}.png"
        assert png.read_bytes().startswith(PNG), name
        assert f"]({png.name})" in md  # linked relative to the Markdown file


def test_outcome_and_spec(md):
    out = section(md, "Outcome")
    row = next(ln for ln in out.splitlines() if ln.startswith("| 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:10] == ["1", "h1", "0.85", "0.900", "yes", "0.700", "target_reached", "2", "1", "10500"]
    assert "10.50 kB in DA-ITN transfers" in out and "nodes marked down while running: h8" in out
    spec = section(md, "Spec (resolved, abridged)")
    assert "policy: greedy" in spec
    assert "synthetic" not in spec and "delay" not in spec  # unused block and nulls left out


def test_timeline_spec_items_faults_and_teardown(md):
    tl = section(md, "Timeline")
    assert "| 0.5 | set_link |" in tl and "| 0.50 |" in tl  # planned at 0.5, applied at 0.50
    assert "| 0.510 | replan | re-plan task 1 (bandwidth change (s1-s3)) at h2: h2 -> h4 => h4 |" in tl
    assert "**node_down** | DCC: node h8 down" in tl
    # h2 stopped on purpose before the DCC marked it down; the port going down after the
    # nodes finished is teardown too; the LLDP discovery before the clients start is noise
    assert "node h2 down" not in tl and "port_down" not in tl and "lldp" not in tl
    assert "2 events of the teardown" in tl
    assert "| -10.000 | network_up |" in tl


def test_plans_and_hops(md):
    plans = section(md, "Plans and re-plans")
    assert "MTRCE plan (greedy, 3.5 ms to plan): stops h2 -> h4" in plans
    assert "| 0.510 | bandwidth change (s1-s3) | h2 | h2 -> h4 | h4 |" in plans
    assert "| 2 | 0 | h2 -> h4 | h2 s2 s1 s3 h4 | stop 1 of ['h2', 'h4'] (lap 0) | 12 | 11.0 | 0.900 |" in plans
    assert "| 3 | 0 | h4 -> h1 | h4 s3 s1 s2 h1 | task ends: target_reached | 6 | - | - |" in plans


def test_traffic_per_host_and_link(md):
    tr = section(md, "Traffic")
    assert "| h2 | 5000 | 1000 | EVAL_REQUEST 2000, MODEL_CHUNK 3000 |" in tr
    assert "| h9 | 0 | 6000 |  |" in tr
    # s1-s2 carried h2's verification (2000) and model (3000) up, and the result (500) down
    assert "| s1-s2 | s1->s2 500, s2->s1 5000 | 5500 |" in tr
    assert "Attribution: 10500 B on paths the DCC installed" in tr and "0 B on the fewest-hop" in tr


def test_link_traffic_falls_back_to_fewest_hops(tmp_path):
    evs = F.events()
    evs.append({"t": 1001.1, "src": "h4", "kind": "transfer", "task": 0, "to": "h2", "msg": "DATA_SHARD",
                "bytes": 777})
    run = load_run(F.write_run(tmp_path, evs=sorted(evs, key=lambda e: e["t"])))
    lt = report.link_traffic(run, run.topology())
    assert (lt["steered"], lt["fallback"], lt["unplaced"]) == (10500, 777, 0)
    assert lt["links"][("s1", "s3")] == {"s1->s3": 3000, "s3->s1": 4000 + 500 + 777}
    assert report.link_traffic(run, None)["unplaced"] == 777  # no topology: said, not guessed


def test_flows_section_counts_dumps(md):
    fl = section(md, "Flows")
    assert "| s1 | 3 | 1 | 1 | 1 | 50 |" in fl  # ai-task-hop, discovery, forwarding; 27+19+4 packets
    assert "cookie=0x400000001000300" in fl
    assert "The DCC installed 150 flows and deleted 66" in fl


def test_lineage_rebuilt_from_events_without_lineage_json(md):
    lin = section(md, "Model lineage")
    assert f"| 1 | 2 | {F.SHA[2][:12]} | {F.SHA[1][:12]} | h4 | 120 | h9 0.900 |" in lin
    assert "Problems: none" in lin and "rebuilt from events.jsonl" in lin


def test_queries_section_says_what_is_not_recorded(md):
    q = section(md, "Inference queries")
    assert "| 0 | h9 | 1 | 9/10 | 0 | 0.800 | 12.0 | 20.0 |" in q
    assert "latency p50 n/a, p99 n/a, mean 12.0 ms, p95 20.0 ms" in q


def test_out_file_puts_pngs_next_to_it(tmp_path):
    d = F.write_run(tmp_path)
    target = tmp_path / "appendix" / "run7.md"
    assert run_cli(d, "--out", target) == 0
    assert target.is_file() and (tmp_path / "appendix" / "run7-accuracy.png").is_file()
    assert not (d / "report").exists()


def test_abridged_spec():
    s = report.abridged_spec({"a": None, "b": [], "c": {"d": None}, "data": {"dataset": "digits",
                              "partition": "iid", "alpha": 0.3, "synthetic": {"samples": 1}}, "e": 0})
    assert s == {"data": {"dataset": "digits", "partition": "iid"}, "e": 0}


# ---- broken input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("how,file,fragment", [
    ("missing_summary", "summary.json", "the run did not finish"),
    ("garbage_summary", "summary.json", "not valid JSON"),
    ("garbage_events_middle", "events.jsonl", "is not JSON"),
    ("garbage_lineage", "lineage.json", "not valid JSON"),
    ("lineage_wrong_shape", "lineage.json", "has no 'versions' list"),
])
def test_broken_run_directory_exits_2(tmp_path, capsys, how, file, fragment):
    d = F.write_run(tmp_path)
    if how == "missing_summary":
        (d / "summary.json").unlink()
    elif how == "garbage_summary":
        (d / "summary.json").write_text("not json at all")
    elif how == "garbage_events_middle":
        lines = (d / "events.jsonl").read_text().splitlines()
        lines[2] = lines[2][:20]
        (d / "events.jsonl").write_text("\n".join(lines) + "\n")
    elif how == "garbage_lineage":
        (d / "lineage.json").write_text('{"versions": [')
    elif how == "lineage_wrong_shape":
        (d / "lineage.json").write_text(json.dumps({"allow_forks": False}))
    assert run_cli(d) == 2
    err = capsys.readouterr().err
    assert err.startswith("daitn report: ") and str(d / file) in err and fragment in err
    assert "Traceback" not in err


def test_not_a_run_directory(tmp_path, capsys):
    assert run_cli(tmp_path) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_truncated_last_line_warns_and_reports(tmp_path, capsys):
    d = F.write_run(tmp_path)
    text = (d / "events.jsonl").read_text()
    (d / "events.jsonl").write_text(text + '{"t": 1002.0, "kind": "node_do')
    assert run_cli(d) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "cut off" in err
    md = (d / "report" / "report.md").read_text()
    assert "Caveats:" in md and "cut off" in md


def test_after_run_says_instead_of_raising(tmp_path):
    said = []
    d = F.write_run(tmp_path)
    (d / "summary.json").unlink()
    assert report.after_run(d, said.append) is None
    assert len(said) == 1 and "report not written" in said[0] and "summary.json" in said[0]
    d2 = F.write_run(tmp_path, "ok")
    assert report.after_run(d2, said.append) == d2 / "report" / "report.md"
    assert said[-1] == f"report: {d2 / 'report' / 'report.md'}"


def test_unwritable_out_exits_2(tmp_path, capsys):
    d = F.write_run(tmp_path)
    (tmp_path / "blocker").write_text("a file where a directory should be")
    assert run_cli(d, "--out", tmp_path / "blocker" / "r.md") == 2
    err = capsys.readouterr().err
    assert "cannot write the report" in err and "Traceback" not in err
