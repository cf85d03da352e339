"""Tasks and queries submitted to a running experiment (root): `daitn run --serve`
plus `daitn submit`, through the DCC's northbound API and the hand-off in answer
to the client's knowledge reports (controllers/submissions.py).

One serving run of experiments/serve.yaml (no tasks of its own) takes: a task
deployed to the inference host (it must reach its target), a query to that
model (answered by h3, the label checked against the true one for a sample the
model classifies correctly), an infeasible task (label 42 held by no data node:
ended with the reason), a query to a model nobody hosts (failed, with the
reason) and a bad submission (refused at once, exit 2). Then the run ends by
itself once the client has been idle for serve_s, and its summary lists the
submitted task and queries.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from testbed.results import read_jsonl
from tests.emulation.test_ai_traffic import DAITN, REPO, background_run

pytestmark = [pytest.mark.emulation,
              pytest.mark.skipif(os.geteuid() != 0, reason="emulation tier needs root")]

SERVE = REPO / "experiments" / "serve.yaml"


def submit(out, *args, timeout=200) -> tuple[int, dict | None, str]:
    p = subprocess.run(DAITN + ["submit", str(out), *args, "--json"], capture_output=True, text=True,
                       cwd=REPO, timeout=timeout)
    try:
        doc = json.loads(p.stdout) if p.stdout.strip() else None
    except ValueError:
        doc = None
    return p.returncode, doc, p.stderr


def _serving(run) -> bool:
    return "serving: submit" in run.text()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "run"
    got = {}
    with background_run(out, "serve_s=6", spec=SERVE) as run:
        run.wait_started()
        from testbed.wait import wait_for
        wait_for(lambda: _serving(run) or not run.alive(), 180, "the run to start serving")
        assert run.alive(), run.text()[-3000:]
        got["task"] = submit(out, "task", "--target-accuracy", "0.8", "--deadline", "60", "--deploy-to", "h3",
                             "--wait")
        # a sample the model got right in the MPVU's eyes cannot be chosen here: take a few
        got["queries"] = [submit(out, "query", "--model", "1", "--sample", str(i), "--wait") for i in range(3)]
        got["infeasible"] = submit(out, "task", "--target-accuracy", "0.8", "--deadline", "30", "--labels", "42",
                                   "--wait")
        got["unhosted"] = submit(out, "query", "--model", str(got["infeasible"][1]["submitted"]["id"]),
                                 "--sample", "0", "--wait")
        got["bad"] = submit(out, "task", "--target-accuracy", "0.8", "--deadline", "30", "--client", "h2")
        rc = run.wait(timeout=120)  # ends by itself: serve_s after the client's last work
        text = run.text()
    # exit 1: not every task reached its target (the infeasible one is counted too)
    assert rc == 1 and "results in" in text, text[-3000:]
    return out, got, text


def test_submitted_task_reaches_its_target_and_is_deployed(served):
    out, got, _ = served
    rc, doc, err = got["task"]
    assert rc == 0, (doc, err)
    res = doc["result"]
    assert res["status"] == "ended" and res["end_reason"] == "target_reached" and res["accuracy"] >= 0.8
    assert res["handoffs"] >= 1 and res["taken_at"] >= res["submitted_at"]
    print(f"task: hand-off after {res['taken_at'] - res['submitted_at']:.2f} s, "
          f"ended {res['ended_at'] - res['submitted_at']:.2f} s after submission")
    evs = read_jsonl(out / "events.jsonl")
    assert any(e["kind"] == "model_deployed" and e["task"] == doc["submitted"]["id"] and e["to"] == "h3"
               for e in evs)
    summary = json.loads((out / "summary.json").read_text())
    [t] = [t for t in summary["tasks"] if t["id"] == doc["submitted"]["id"]]
    assert t["submitted"] and t["reached"] and t["hops"] >= 1


def test_submitted_queries_are_answered_by_the_replica(served):
    out, got, _ = served
    answered = 0
    for rc, doc, err in got["queries"]:
        assert doc is not None, err
        res = doc["result"]
        assert res["status"] == "answered" and res["server"] == "h3", res
        assert 0 <= res["label"] < 10
        answered += 1
        print(f"query {res['id']}: label {res['label']} (true {doc['true_label']}), "
              f"{res['latency_ms']:.0f} ms from submission")
    assert answered == 3
    # exit 0 means the model's answer was what the CLI reported; correctness is the model's
    right = sum(doc["result"]["label"] == doc["true_label"] for _, doc, _ in got["queries"])
    assert right >= 1, "a model at >= 80% accuracy got none of 3 held-out samples right"
    summary = json.loads((out / "summary.json").read_text())
    assert sum(q["status"] == "answered" for q in summary["submitted_queries"]) == 3


def test_infeasible_and_unservable_submissions_end_with_reasons(served):
    _, got, _ = served
    rc, doc, _ = got["infeasible"]
    assert rc == 1
    assert doc["result"]["status"] == "ended" and "infeasible" in doc["result"]["end_reason"]
    assert "42" in doc["result"]["end_reason"]
    rc, doc, _ = got["unhosted"]
    assert rc == 1 and doc["result"]["status"] == "failed"
    assert "refused" in doc["result"]["error"], doc["result"]
    rc, doc, err = got["bad"]
    assert rc == 2 and "h2" in err and "client" in err


def test_serving_run_ends_by_itself_when_idle(served):
    out, _, text = served
    evs = read_jsonl(out / "events.jsonl")
    ended = [e for e in evs if e["kind"] == "serving_ended"]
    assert ended and ended[0]["handed_off"] == 6
    assert "results in" in text
