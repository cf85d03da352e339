"""`daitn replay` on a real run (root): the quickstart, run and replayed from its run directory,
makes the same decisions, visits the same itinerary and trains bit-identical models.

Two runs of ~30 s each (plus any wait for the machine-wide emulation lock). The comparison logic
itself is unit-tested on written run directories (tests/unit/test_replay.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.emulation.test_ai_traffic import LOCK_WAIT_S, REPO, run_cli

pytestmark = [pytest.mark.emulation,
              pytest.mark.skipif(os.geteuid() != 0, reason="emulation tier needs root")]


def replay_cmd() -> list[str]:
    """`daitn replay` through the CLI; `python -m testbed.replay` (the same command) while
    testbed/cli.py does not register it yet."""
    import argparse

    from testbed.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "replay" in sub.choices:
        return [sys.executable, "-m", "testbed.cli", "replay"]
    return [sys.executable, "-m", "testbed.replay"]


def test_quickstart_replay_is_identical(tmp_path):
    orig, again = tmp_path / "orig", tmp_path / "again"
    rc, text = run_cli(orig)
    assert rc == 0, text[-3000:]
    t0 = time.time()
    r = subprocess.run(replay_cmd() + [str(orig), "--out", str(again), "--quiet", "--strict"],
                       capture_output=True, text=True, cwd=REPO, timeout=LOCK_WAIT_S + 300)
    print(r.stdout[-3000:], r.stderr[-3000:])
    print(f"replay: exit {r.returncode} after {time.time() - t0:.1f} s (lock wait included)")
    result = json.loads((again / "replay.json").read_text())
    dec = result["decisions"]
    # identical itinerary, as planned and as visited, and identical DCC decisions
    assert result["itineraries"]["replay"] == result["itineraries"]["original"]
    assert dec["identical"], json.dumps(dec["first_divergence"], indent=1)
    counts = dec["counts_original"]
    assert counts["plan"] == 1 and counts["hop"] >= 2 and counts["visit"] >= 1, counts
    assert dec["counts_replay"] == counts
    # the replay ran the same resolved spec (same seed), in a run directory of its own
    spec_a = (orig / "spec.resolved.yaml").read_text()
    assert (again / "spec.resolved.yaml").read_text() == spec_a
    man_a, man_b = (json.loads((d / "manifest.json").read_text()) for d in (orig, again))
    assert man_a["run_id"] != man_b["run_id"] and man_a["seed"] == man_b["seed"] == 1
    # metrics within tolerance, and every model version bit for bit the same (--strict)
    assert result["metrics_within_tolerance"], result["metrics"]
    assert result["models"]["identical"], result["models"]
    assert result["models"]["versions_original"] == counts["visit"] + 1   # + the initial model
    assert r.returncode == 0 and "verdict: IDENTICAL" in r.stdout, r.stdout[-2000:]
