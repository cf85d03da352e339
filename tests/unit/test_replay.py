"""Unit tests for testbed.replay: the comparison of a run with its replay, on run directories the
tests write themselves (tests/unit/rundir_fixture.py, shaped like a real quickstart run), and the
command's exit codes. The emulation tier (tests/emulation/test_replay.py) replays a real run."""
import argparse
import json
import os
from pathlib import Path

import pytest
import rundir_fixture as F
import yaml

from testbed import replay
from testbed.rundir import load_run


def cli(*args):
    p = argparse.ArgumentParser(prog="daitn")
    replay.add_parser(p.add_subparsers(dest="cmd", required=True))
    a = p.parse_args(["replay", *map(str, args)])
    return a.fn(a)


def pair(tmp_path, evs=None, summ=None, spec=None):
    """(original, replay) run directories; the replay's events/summary/spec as given."""
    return (F.write_run(tmp_path, "orig"),
            F.write_run(tmp_path, "again", evs=evs, summ=summ, spec=spec))


def edited(kind, match, **changes):
    """The fixture's events with the first event of ``kind`` matching ``match`` changed
    (a value None removes the event)."""
    out, done = [], False
    for e in F.events():
        if not done and e["kind"] == kind and all(e.get(k) == v for k, v in match.items()):
            done = True
            if changes.get("_drop"):
                continue
            e = {**e, **changes}
        out.append(e)
    assert done, f"no {kind} event matching {match} in the fixture"
    return out


def result_of(tmp_path):
    return json.loads((tmp_path / "again" / "replay.json").read_text())


# ---- decisions read from a run ------------------------------------------------------------------
def test_decisions_of_the_fixture(tmp_path):
    ds = replay.decisions(load_run(F.write_run(tmp_path)))
    kinds = [d.kind for d in ds]
    assert kinds.count("plan") == 1 and kinds.count("hop") == 3 and kinds.count("replan") == 1
    assert kinds.count("visit") == 2 and kinds.count("end") == 1
    plan = next(d for d in ds if d.kind == "plan")
    assert plan.value == {"feasible": True, "itinerary": ["h2", "h4"], "mpvu": "h9"}
    assert plan.t == pytest.approx(1000.106 - F.T0)  # since the clients started
    hop2 = next(d for d in ds if d.kind == "hop" and d.index == 2)
    assert hop2.value["path"] == ["h2", "s2", "s1", "s3", "h4"] and hop2.value["to"] == "h4"
    assert [d.value["at"] for d in ds if d.kind == "visit"] == ["h2", "h4"]
    assert [d.t for d in ds] == sorted(d.t for d in ds)


# ---- identical --------------------------------------------------------------------------------
def test_identical_runs_exit_0_and_write_replay_json(tmp_path, capsys):
    orig, again = pair(tmp_path)
    assert cli(orig, "--against", again) == 0
    out = capsys.readouterr().out
    assert "verdict: IDENTICAL" in out and "h2 -> h4 (identical)" in out
    r = result_of(tmp_path)
    assert r["verdict"] == "identical" and r["exit_code"] == 0
    assert r["decisions"]["identical"] and r["decisions"]["first_divergence"] is None
    assert r["models"]["identical"] and r["models"]["versions_original"] == 3
    assert r["metrics_within_tolerance"]
    assert {m["metric"] for m in r["metrics"]} == {"final_accuracy", "model_bytes_sent", "hops", "queries_answered"}


# ---- where they diverge ----------------------------------------------------------------------
def test_different_hop_is_the_first_divergence(tmp_path, capsys):
    evs = edited("hop", {"hop": 2}, to="h8", path=["h2", "s2", "s1", "s4", "h8"])
    orig, again = pair(tmp_path, evs=evs)
    assert cli(orig, "--against", again) == 1
    f = result_of(tmp_path)["decisions"]["first_divergence"]
    assert (f["what"], f["task"], f["index"]) == ("hop", 1, 2)
    # only the fields that differ, original and replayed
    assert f["original"] == {"to": "h4", "path": ["h2", "s2", "s1", "s3", "h4"]}
    assert f["replayed"] == {"to": "h8", "path": ["h2", "s2", "s1", "s4", "h8"]}
    assert f["t_original"] == pytest.approx(1000.52 - F.T0)
    out = capsys.readouterr().out
    assert "verdict: DIVERGED at task 1 hop 2" in out and "to h4" in out and "to h8" in out


def test_earliest_divergence_wins(tmp_path):
    """The plan (t=0.106) differs as well as hop 2 (t=0.52): the plan is the first point."""
    evs = edited("hop", {"hop": 2}, to="h8")
    evs = [dict(e, itinerary=["h4", "h2"]) if e["kind"] == "itinerary" else e for e in evs]
    orig, again = pair(tmp_path, evs=evs)
    assert cli(orig, "--against", again) == 1
    dec = result_of(tmp_path)["decisions"]
    assert dec["first_divergence"]["what"] == "plan"
    assert dec["first_divergence"]["original"] == {"itinerary": ["h2", "h4"]}
    assert dec["divergences"] == 2 and [d["what"] for d in dec["listed"]] == ["plan", "hop"]


def test_missing_replan_is_a_divergence(tmp_path):
    orig, again = pair(tmp_path, evs=edited("replan", {}, _drop=True))
    assert cli(orig, "--against", again) == 1
    f = result_of(tmp_path)["decisions"]["first_divergence"]
    assert f["what"] == "replan" and f["why"] == "the replay did not make it"
    assert f["original"]["cause"] == "bandwidth change (s1-s3)" and f["replayed"] is None


def test_decision_only_the_replay_made(tmp_path):
    refusal = {"t": 1000.9, "src": "dcc", "kind": "query_routed", "client": "h1", "query": 7, "model": 1,
               "feasible": False, "server": None, "predicted_ms": None, "excluded": [], "reasons": ["x"]}
    orig, again = pair(tmp_path, evs=F.events() + [refusal])
    assert cli(orig, "--against", again) == 1
    f = result_of(tmp_path)["decisions"]["first_divergence"]
    assert f["what"] == "query_refused" and f["subject"] == "query 7 from h1"
    assert f["why"] == "only the replay made it" and f["original"] is None


def test_different_replan_cause_is_a_divergence(tmp_path):
    orig, again = pair(tmp_path, evs=edited("replan", {}, cause="node failure (h4)"))
    assert cli(orig, "--against", again) == 1
    f = result_of(tmp_path)["decisions"]["first_divergence"]
    assert f["what"] == "replan" and f["replayed"] == {"cause": "node failure (h4)"}


# ---- metrics and tolerances ---------------------------------------------------------------------
def _summary(**task):
    s = F.summary()
    s["tasks"][0].update(task)
    return s


@pytest.mark.parametrize("change, args, code", [
    ({"final_accuracy": 0.895}, (), 0),                     # 0.005 <= 0.01
    ({"final_accuracy": 0.88}, (), 1),                      # 0.02 > 0.01
    ({"final_accuracy": 0.88}, ("--accuracy-tol", "0.05"), 0),
    ({"final_accuracy": None}, (), 1),                      # no verdict at all in the replay
    ({"model_bytes_sent": F.WIRE_BYTES + 100}, (), 0),      # 0.95 % <= 1 %
    ({"model_bytes_sent": F.WIRE_BYTES + 200}, (), 1),      # 1.9 % > 1 %
    ({"model_bytes_sent": F.WIRE_BYTES + 200}, ("--bytes-tol", "0.02"), 0),
    ({"hops": 3}, (), 1),
    ({"hops": 3}, ("--hops-tol", "1"), 0),
])
def test_metric_tolerances(tmp_path, change, args, code):
    orig, again = pair(tmp_path, summ=_summary(**change))
    assert cli(orig, "--against", again, *args) == code
    r = result_of(tmp_path)
    assert r["decisions"]["identical"]          # only the metric changed
    assert r["metrics_within_tolerance"] is (code == 0)


def test_queries_answered_tolerance(tmp_path, capsys):
    evs = edited("workload_result", {}, answered=8)          # 9 -> 8: 11 % > 5 %
    orig, again = pair(tmp_path, evs=evs)
    assert cli(orig, "--against", again) == 1
    bad = [m for m in result_of(tmp_path)["metrics"] if not m["within"]]
    assert [(m["metric"], m["original"], m["replayed"]) for m in bad] == [("queries_answered", 9, 8)]
    assert "queries_answered 9 -> 8 is out of tolerance" in capsys.readouterr().out
    assert cli(orig, "--against", again, "--queries-tol", "0.2") == 0


def test_negative_tolerance_is_bad_input(tmp_path, capsys):
    orig, again = pair(tmp_path)
    assert cli(orig, "--against", again, "--accuracy-tol", "-1") == 2
    assert "tolerances must be >= 0" in capsys.readouterr().err


# ---- model versions ---------------------------------------------------------------------------
def test_different_model_hash_reported_and_strict_counts_it(tmp_path, capsys):
    evs = edited("train", {"version": 2}, sha256="ff" * 32)
    orig, again = pair(tmp_path, evs=evs)
    assert cli(orig, "--against", again) == 0           # decisions and metrics agree
    r = result_of(tmp_path)
    assert not r["models"]["identical"]
    assert r["models"]["first_difference"] == {"task": 1, "version": 2, "original": F.SHA[2],
                                               "replayed": "ff" * 32}
    assert "first difference: task 1 version 2" in capsys.readouterr().out
    assert cli(orig, "--against", again, "--strict") == 1
    assert result_of(tmp_path)["verdict"] == "diverged"


# ---- bad input: exit 2, the file named, no traceback -------------------------------------------
def _break(d: Path, how: str):
    if how == "no-summary":
        (d / "summary.json").unlink()
    elif how == "bad-event-line":
        lines = (d / "events.jsonl").read_text().splitlines()
        lines[3] = lines[3][:20]
        (d / "events.jsonl").write_text("\n".join(lines) + "\n")
    elif how == "bad-yaml":
        (d / "spec.resolved.yaml").write_text("name: [unclosed\n")
    elif how == "summary-not-json":
        (d / "summary.json").write_text("{\"tasks\": [")


@pytest.mark.parametrize("which", ["orig", "again"])
@pytest.mark.parametrize("how, file, fragment", [
    ("no-summary", "summary.json", "missing"),
    ("bad-event-line", "events.jsonl", "line 4 is not JSON"),
    ("bad-yaml", "spec.resolved.yaml", "not valid YAML"),
    ("summary-not-json", "summary.json", "not valid JSON"),
])
def test_corrupted_run_directory_exits_2(tmp_path, capsys, which, how, file, fragment):
    orig, again = pair(tmp_path)
    _break(tmp_path / which, how)
    assert cli(orig, "--against", again) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / which / file) in err and fragment in err, err
    assert "Traceback" not in err
    assert not (again / "replay.json").exists()


def test_not_a_run_directory_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(tmp_path / "empty") == 2
    assert "not a run directory" in capsys.readouterr().err
    assert cli(tmp_path / "nowhere") == 2
    assert "no such directory" in capsys.readouterr().err


def test_against_itself_exits_2(tmp_path, capsys):
    orig = F.write_run(tmp_path, "orig")
    assert cli(orig, "--against", orig) == 2
    assert "names the original run itself" in capsys.readouterr().err


def test_run_with_submitted_work_cannot_be_replayed(tmp_path, capsys):
    summ = F.summary()
    summ["tasks"].append(dict(summ["tasks"][0], id=2, submitted=True))
    orig = F.write_run(tmp_path, "orig", summ=summ)
    assert cli(orig, "--against", F.write_run(tmp_path, "again")) == 2
    err = capsys.readouterr().err
    assert "summary.json" in err and "daitn submit" in err and "1 task(s)" in err


def test_seed_changed_after_the_run_exits_2(tmp_path, capsys):
    orig = F.write_run(tmp_path, "orig", spec=dict(F.SPEC, seed=4))   # manifest says 3
    assert cli(orig, "--against", F.write_run(tmp_path, "again")) == 2
    err = capsys.readouterr().err
    assert "spec.resolved.yaml" in err and "seed 4" in err and "manifest.json says 3" in err


# ---- the replay run itself (the emulation is replaced by a fake) ------------------------------
@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """replay.run_replay writes a fixture run (optionally changed) where the runner would."""
    calls = []

    def fake(spec_path, out, quiet):
        calls.append({"spec": yaml.safe_load(Path(spec_path).read_text()), "out": out, "quiet": quiet})
        return F.write_run(Path(out).parent, Path(out).name, evs=fake.evs)
    fake.evs = None
    monkeypatch.setattr(replay, "run_replay", fake)
    return calls, fake


def test_replay_runs_the_resolved_spec_and_writes_into_the_new_run(tmp_path, fake_run, capsys):
    calls, _ = fake_run
    orig = F.write_run(tmp_path, "orig")
    assert cli(orig, "--out", tmp_path / "again", "--quiet") == 0
    assert calls[0]["spec"] == F.SPEC and calls[0]["quiet"] is True
    assert result_of(tmp_path)["replay"]["run_dir"] == str(tmp_path / "again")
    assert "verdict: IDENTICAL" in capsys.readouterr().out


def test_replay_json_flag_prints_the_result(tmp_path, fake_run, capsys):
    calls, fake = fake_run
    fake.evs = edited("hop", {"hop": 3}, reason="task ends: deadline")
    orig = F.write_run(tmp_path, "orig")
    assert cli(orig, "--out", tmp_path / "again", "--json") == 1
    r = json.loads(capsys.readouterr().out)
    assert r["decisions"]["first_divergence"]["replayed"] == {"reason": "task ends: deadline"}
    assert calls[0]["quiet"] is True   # --json: no progress lines mixed into the JSON


def test_out_not_empty_exits_2_before_running(tmp_path, fake_run, capsys):
    calls, _ = fake_run
    orig = F.write_run(tmp_path, "orig")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert cli(orig, "--out", tmp_path / "busy") == 2
    assert "not an empty directory" in capsys.readouterr().err and not calls


def test_spec_this_version_cannot_run_exits_2_naming_field(tmp_path, fake_run, capsys):
    calls, _ = fake_run
    orig = F.write_run(tmp_path, "orig", spec=dict(F.SPEC, colour="blue"))
    assert cli(orig, "--out", tmp_path / "again") == 2
    err = capsys.readouterr().err
    assert str(orig / "spec.resolved.yaml") in err and "colour" in err and "unknown key" in err
    assert not calls


def test_needs_root_to_run_again(tmp_path, fake_run, monkeypatch, capsys):
    calls, _ = fake_run
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli(F.write_run(tmp_path, "orig"), "--out", tmp_path / "again") == 3
    assert "needs root" in capsys.readouterr().err and not calls


def test_relative_topology_file_found_and_made_absolute(tmp_path):
    topo = {"name": "pair", "switches": ["s1"], "hosts": ["h1", "h2", "h3"],
            "links": [{"a": "h1", "b": "s1"}, {"a": "h2", "b": "s1"}, {"a": "h3", "b": "s1"}]}
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "topo.yaml").write_text(yaml.safe_dump(topo))
    spec = dict(F.SPEC, topology={"file": "topo.yaml"}, nodes={"h1": ["client"], "h2": ["data"], "h3": ["mpvu"]},
                timeline=[])
    orig = F.write_run(tmp_path, "orig", spec=spec)
    man = json.loads((orig / "manifest.json").read_text())
    man["spec"] = str(tmp_path / "specs" / "x.yaml")   # the spec it came from, next to its topology
    (orig / "manifest.json").write_text(json.dumps(man))
    (tmp_path / "work").mkdir()
    path = replay.prepare_spec(load_run(orig), tmp_path / "work")
    assert path.parent == tmp_path / "work"
    assert yaml.safe_load(path.read_text())["topology"]["file"] == str(tmp_path / "specs" / "topo.yaml")
    # a spec without a file topology is run as it is
    plain = F.write_run(tmp_path, "plain")
    assert replay.prepare_spec(load_run(plain), tmp_path / "work") == plain / "spec.resolved.yaml"


# ---- settled plan inputs: measurement noise cannot change a plan (controllers.maps.plan_view) ----
from controllers.maps import LinkInfo, MapsError, NetworkMaps, plan_view  # noqa: E402
from controllers.mtrce import TrainingRequest, get_policy  # noqa: E402
from controllers.tasks import TaskTracker, fastest_path  # noqa: E402
from testbed.network import fabric_of, plan_ports  # noqa: E402
from topologies.model import Link, Topology  # noqa: E402

NOW = 1000.0
# the quickstart: tree depth 2 fanout 3, h1 client, h9 MPVU, its four Dirichlet(0.3) shards (seed 1)
QS_HISTS = {"h2": [5, 75, 85, 22, 30, 124, 29, 3, 85, 0], "h4": [0, 57, 47, 54, 0, 2, 53, 24, 0, 87],
            "h6": [18, 3, 0, 0, 40, 9, 53, 106, 29, 14], "h8": [110, 1, 1, 61, 66, 1, 1, 1, 17, 34]}


def quickstart_topology() -> Topology:
    hosts = [f"h{i}" for i in range(1, 10)]
    links = [Link("s1", s, bw_mbit=100) for s in ("s2", "s3", "s4")]
    links += [Link(h, f"s{2 + (i // 3)}", bw_mbit=100) for i, h in enumerate(hosts)]
    return Topology("quickstart", ["s1", "s2", "s3", "s4"], hosts, links)


def noisy_maps(topo, rng, *, latency_ms=1.5, utilisation=0.15, load=0.2) -> NetworkMaps:
    """The maps as the DCC fills them, with measurement noise up to the given bounds:
    LLDP latency samples, two port-counter samples per port, node loads."""
    m = NetworkMaps(report_interval_s=1.0)
    ports = list(zip(topo.links, plan_ports(topo)))
    m.set_links([LinkInfo(a, None if a.startswith("h") else ap, b, None if b.startswith("h") else bp,
                          ln.bw_mbit, None) for ln, (a, ap, b, bp) in ports])
    for ln in topo.links:
        if ln.a.startswith("s") and ln.b.startswith("s"):
            m.latency_sample(ln.a, ln.b, rng.uniform(0, latency_ms), NOW)
    for sw in topo.switches:
        for ln, (a, ap, b, bp) in ports:
            for end, port in ((a, ap), (b, bp)):
                if end == sw:
                    rx, tx = (int(rng.uniform(0, utilisation) * 100e6 / 8) for _ in range(2))
                    m.port_stats(sw, port, NOW - 1, rx_bytes=0, tx_bytes=0, rx_packets=0, tx_packets=0,
                                 rx_dropped=0, tx_dropped=0)
                    m.port_stats(sw, port, NOW, rx_bytes=rx, tx_bytes=tx, rx_packets=1, tx_packets=1,
                                 rx_dropped=0, tx_dropped=0)
    m.node_report("h1", NOW, roles=["client"])
    m.node_report("h9", NOW, roles=["mpvu"], verification_samples=360)
    for h, hist in QS_HISTS.items():
        m.node_report(h, NOW, roles=["data", "compute"], samples=sum(hist), label_hist=hist, capacity=1.0,
                      load=rng.uniform(0, load))
    return m


def _decided(tracker, maps) -> tuple:
    req = TrainingRequest(task_id=1, client="h1", model_bytes=21_000, target_accuracy=0.85, deadline_s=120,
                          max_laps=6)
    a, task, events = tracker.submit(req, 9, maps.snapshot(NOW), NOW, req.max_laps)
    hop = next(e for e in events if e["kind"] == "hop")
    return tuple(a.plan.itinerary()), tuple(hop["path"]), tuple(hop["verify_path"])


@pytest.mark.parametrize("inputs, distinct", [("settled", 1), ("configured", 1), ("measured", 2)])
def test_measurement_noise_changes_no_settled_plan(inputs, distinct):
    """30 draws of noise as a real run sees it (latency <= 1.5 ms, utilisation <= 15 %, load
    <= 0.2): one plan with settled (or configured) inputs; with raw measurements the quickstart's
    greedy plan flips between orders (which is why the planners do not see them raw)."""
    import random
    rng = random.Random(7)
    topo = quickstart_topology()
    fabric = fabric_of(topo)
    plans = {_decided(TaskTracker(fabric, get_policy("greedy"), plan_inputs=inputs), noisy_maps(topo, rng))
             for _ in range(30)}
    if distinct == 1:
        assert len(plans) == 1, plans
        assert next(iter(plans))[0] == ("h2", "h6", "h4", "h8")    # what the real quickstart plans
    else:
        assert len(plans) >= distinct, plans


def test_plan_view_keeps_material_measurements():
    snap = {"drrt": {"knowledge": {}, "resources": {
        "links": [{"a": "s1", "b": "s2", "capacity_mbps": 100.0, "delay_ms": None, "latency_ms": latency,
                   "a_to_b": {"rate_mbps": rate, "utilisation": None if rate is None else rate / 100,
                              "available_mbps": None if rate is None else 100 - rate},
                   "b_to_a": {"rate_mbps": None, "utilisation": None, "available_mbps": None}}
                  for latency, rate in ((1.2, 15.0), (30.3, 63.0), (None, 97.0))]
        + [{"a": "s2", "b": "s3", "capacity_mbps": 10.0, "delay_ms": 10.0, "latency_ms": 12.4,
            "a_to_b": {}, "b_to_a": {}},
           {"a": "s3", "b": "s4", "capacity_mbps": 10.0, "delay_ms": 10.0, "latency_ms": 13.1,
            "a_to_b": {}, "b_to_a": {}}],
        "compute": {h: {"capacity": 1.0, "load": x, "queue_len": 1} for h, x in
                    (("h1", 0.2), ("h2", 0.3), ("h3", 0.8), ("h4", 1.49))}}}, "nodes": {}}
    before = json.dumps(snap, sort_keys=True)
    v = plan_view(snap)
    assert json.dumps(snap, sort_keys=True) == before          # the DCC's own maps are not touched
    rows = v["drrt"]["resources"]["links"]
    assert [r["latency_ms"] for r in rows] == [0.0, 30.0, None, 10.0, 14.0]   # noise -> configured
    assert [r["a_to_b"].get("available_mbps") for r in rows[:3]] == [100.0, pytest.approx(40.0),
                                                                     pytest.approx(0.0)]
    assert rows[1]["a_to_b"]["utilisation"] == pytest.approx(0.6)
    assert [c["load"] for c in v["drrt"]["resources"]["compute"].values()] == [0.0, 0.5, 1.0, 1.0]
    assert all(c["queue_len"] == 1 for c in v["drrt"]["resources"]["compute"].values())
    cfg = plan_view(snap, "configured")["drrt"]["resources"]
    assert [r["latency_ms"] for r in cfg["links"]] == [None] * 5
    assert all(r["a_to_b"].get("available_mbps") is None for r in cfg["links"])
    assert {c["load"] for c in cfg["compute"].values()} == {0.0}
    assert plan_view(snap, "measured") is snap
    with pytest.raises(MapsError, match="settled, measured, configured"):
        plan_view(snap, "raw")


def test_material_latency_still_moves_the_path():
    """A link that really got slow (LLDP 200 ms on s1-s2) still steers the model away from it."""
    from tests.unit.test_tasks import maps_of, slow_triangle
    topo = slow_triangle()
    maps = maps_of(topo)
    assert fastest_path(plan_view(maps.snapshot(NOW)), "h1", "h3", 21_000) == ["h1", "s1", "s2", "s3", "h3"]
    maps.latency_sample("s1", "s2", 1.5, NOW)      # noise: no change
    assert fastest_path(plan_view(maps.snapshot(NOW)), "h1", "h3", 21_000) == ["h1", "s1", "s2", "s3", "h3"]
    maps.latency_sample("s1", "s2", 400.0, NOW)    # EWMA 0.5: ~200 ms
    assert fastest_path(plan_view(maps.snapshot(NOW)), "h1", "h3", 21_000) == ["h1", "s1", "s3", "h3"]


def test_tracker_plan_inputs_from_the_fabric_and_checked():
    topo = quickstart_topology()
    fabric = fabric_of(topo)
    assert TaskTracker(fabric, get_policy("greedy")).plan_inputs == "settled"
    fabric.extra["plan_inputs"] = "measured"
    assert TaskTracker(fabric, get_policy("greedy")).plan_inputs == "measured"
    fabric.extra["plan_inputs"] = "sometimes"
    with pytest.raises(ValueError, match="plan_inputs must be one of"):
        TaskTracker(fabric, get_policy("greedy"))


def test_a_repeated_decision_is_kept_not_overwritten(tmp_path):
    hop2 = next(e for e in F.events() if e["kind"] == "hop" and e["hop"] == 2)
    again = dict(hop2, t=hop2["t"] + 0.01, to="h8")
    orig, rep = pair(tmp_path, evs=F.events() + [again])
    assert len([d for d in replay.decisions(load_run(rep)) if d.kind == "hop"]) == 4
    assert cli(orig, "--against", rep) == 1
    f = result_of(tmp_path)["decisions"]["first_divergence"]
    assert (f["what"], f["index"], f["why"]) == ("hop", "2#2", "only the replay made it")
