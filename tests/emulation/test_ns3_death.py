"""The ns-3 process dies in the middle of a run (root): the run stops at once with
a clear error naming ns-3 and its log, its run directory is usable (manifest,
resolved spec, events so far, logs), and nothing of it is left behind.

Slow trainers (5% of a core) keep the task going when SIGKILL reaches ns-3.
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from testbed.capabilities import probe
from testbed.results import read_jsonl
from testbed.wait import wait_for
from tests.emulation.test_ai_traffic import background_run, cmdline, run_processes
from tests.emulation.test_ns3_runs import TOPO

pytestmark = [pytest.mark.emulation,
              pytest.mark.skipif(os.geteuid() != 0, reason="emulation tier needs root")]

SPEC = f"""
name: ns3death
seed: 1
topology: {{file: {TOPO}}}
links: {{bw: 100}}
nodes: {{h1: [client], h2: [data], h3: [data], h4: [mpvu]}}
hosts: {{h2: {{capacity: 0.05}}, h3: {{capacity: 0.05}}}}
data: {{dataset: digits, partition: iid}}
tasks:
  - {{id: 1, client: h1, target_accuracy: 0.85, deadline_s: 120, max_laps: 6}}
"""


def test_ns3_death_stops_the_run_cleanly(tmp_path):
    c = probe()
    if c.netem or not c.ns3:
        pytest.skip("needs the ns3 backend carrying the delayed link (no netem here)")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "run"
    with background_run(out, spec=spec) as run:
        run_id = run.wait_started()
        wait_for(lambda: "clients start" in run.text() or not run.alive(), 180, "the clients to start")
        assert run.alive(), run.text()[-3000:]
        ns3 = [pid for pid, cmd in run_processes(run_id) if "testbed.ns3link.sim" in cmd]
        assert len(ns3) == 1, [cmdline(p) for p, _ in run_processes(run_id)]
        t_kill = time.time()
        os.kill(ns3[0], signal.SIGKILL)
        rc = run.wait(timeout=120)
        took = time.time() - t_kill
        text = run.text()
    print(f"daitn run exited {rc} {took:.1f} s after ns-3 was killed")
    assert rc not in (0, None), text[-3000:]
    assert "ns-3" in text and "not valid" in text, text[-2000:]
    assert took < 30
    # a usable partial run directory: what happened until then
    assert json.loads((out / "manifest.json").read_text())["run_id"] == run_id
    assert (out / "spec.resolved.yaml").exists()
    events = read_jsonl(out / "events.jsonl")
    assert any(e["kind"] == "clients_go" for e in events)
    assert any(e["kind"] == "train" for e in events) or any(e["kind"] == "task_submitted" for e in events)
    assert list((out / "logs").glob("ns3*")), sorted(p.name for p in (out / "logs").iterdir())
