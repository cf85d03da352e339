"""A run leaves nothing behind however it ends: Ctrl-C, a dying component,
or input refused before start."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.clean import leftovers
from testbed.wait import wait_for

pytestmark = [pytest.mark.emulation,
              pytest.mark.skipif(os.geteuid() != 0, reason="emulation tier needs root")]
REPO = Path(__file__).resolve().parents[2]
DAITN = [sys.executable, "-m", "testbed.cli"]


def _start(out: Path, *extra):
    return subprocess.Popen(DAITN + ["run", str(REPO / "experiments/quickstart.yaml"), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)


def _run_id(out: Path) -> str:
    return wait_for(lambda: json.loads((out / "manifest.json").read_text())["run_id"]
                    if (out / "manifest.json").exists() else None, 30, "the run's manifest")


def _assert_nothing_left(run_id: str):
    # checked right after the CLI exited: its clean-up must already be complete
    left = leftovers(run_id)
    assert not any(left.values()), f"run {run_id} left: {left}"


def test_ctrl_c_mid_run_stops_everything(tmp_path):
    out = tmp_path / "run"
    p = _start(out)
    rid = _run_id(out)
    # interrupt while the nodes are up (their event files appear once they start)
    wait_for(lambda: any((out / "events").glob("h*.jsonl")) or p.poll() is not None, 120,
             "node processes to start")
    assert p.poll() is None, p.stdout.read()
    p.send_signal(signal.SIGINT)
    text, _ = p.communicate(timeout=120)
    assert p.returncode == 130, text
    assert "interrupted" in text
    _assert_nothing_left(rid)


def test_sigterm_mid_run_stops_everything(tmp_path):
    out = tmp_path / "run"
    p = _start(out)
    rid = _run_id(out)
    wait_for(lambda: (out / "dcc-state.json").exists() or p.poll() is not None, 60, "the controller")
    p.terminate()
    text, _ = p.communicate(timeout=120)
    assert p.returncode != 0, text
    _assert_nothing_left(rid)


def test_controller_crash_fails_the_run_and_cleans_up(tmp_path):
    out = tmp_path / "run"
    p = _start(out)
    rid = _run_id(out)
    state = out / "dcc-state.json"
    wait_for(lambda: any((out / "events").glob("h*.jsonl")) or p.poll() is not None, 120,
             "node processes to start")
    os.kill(json.loads(state.read_text())["pid"], signal.SIGKILL)
    text, _ = p.communicate(timeout=180)
    assert p.returncode not in (0, 130), text
    assert "controller" in text.lower()
    _assert_nothing_left(rid)


def test_delay_without_netem_is_refused_before_anything_starts(tmp_path):
    from testbed.capabilities import probe
    if probe().netem:
        pytest.skip("this kernel has netem: delay is emulated, not refused")
    before = subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout
    out = tmp_path / "run"
    # backend tc: delay needs netem there (auto would carry the delay through ns-3)
    r = subprocess.run(DAITN + ["run", str(REPO / "experiments/quickstart.yaml"), "--out", str(out),
                                "--set", "links.delay=5", "--set", "links.backend=tc"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 3, r.stderr
    assert "netem" in r.stderr and "delay" in r.stderr and "link" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists(), "a refused run must not create its run directory"
    assert subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout == before


def test_bad_spec_exits_2_and_starts_nothing(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text((REPO / "experiments/quickstart.yaml").read_text().replace("links:", "linkz:"))
    before = subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout
    r = subprocess.run(DAITN + ["run", str(spec), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2
    assert str(spec) in r.stderr and "linkz" in r.stderr and "unknown key" in r.stderr
    assert not (tmp_path / "run").exists()
    assert subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout == before
