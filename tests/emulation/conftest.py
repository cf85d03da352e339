"""Emulation tier: tests that build real networks (Mininet + Open vSwitch + the DCC).

Every test here is marked ``emulation`` and skipped unless run as root (the unit
tier runs without). :func:`emulated` builds a network with its own run id,
waits for the DCC to converge and, on the way out, dumps every switch's flow
table into the test's ``tmp_path`` and fails the test if the controller logged
an exception or a leftover of the run survives, as Faucet's integration tests
do. :func:`assert_no_leftovers` is the reusable clean-up check; a session
fixture runs it over every run id the session used.
"""
from __future__ import annotations

import os
import re
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from controllers import fabric as fab
from testbed import clean
from testbed.capabilities import Capabilities, probe
from testbed.controller import ControllerProcess, free_port
from testbed.network import EmulatedNetwork, existing_bridges, fabric_of
from testbed.wait import WaitTimeout, wait_for
from topologies.model import Topology

HERE = Path(__file__).resolve().parent
# The machine is shared: another run may hold bridges named like ours (s1, s2...).
# Wait this long for them to go before building (preflight would refuse).
BRIDGE_NAMES_WAIT_S = 180
SESSION_RUN_IDS: list[str] = []


def pytest_collection_modifyitems(config, items):
    not_root = os.geteuid() != 0
    skip = pytest.mark.skip(reason="emulation tests build real networks: run as root")
    # Debian's Mininet compares OVS versions with distutils: one warning per switch.
    quiet = pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.emulation)
            item.add_marker(quiet)
            if not_root:
                item.add_marker(skip)


def new_run_id(prefix: str = "t") -> str:
    """A fresh run id, remembered for the session's final leftover check."""
    run_id = prefix + uuid.uuid4().hex[:6]
    SESSION_RUN_IDS.append(run_id)
    return run_id


def assert_no_leftovers(run_ids=None, timeout: float = 5.0):
    """Fail unless nothing of the given runs (None: of any run) is left: no OVS
    bridge with ``external_ids:daitn-run``, no process with ``DAITN_RUN`` in its
    environment (this process and its ancestors excepted), no ``daitnprobe*``
    network namespace. Polls up to ``timeout`` s: a stopped process may take a
    moment to be reaped."""
    ids = [None] if run_ids is None else list(run_ids)

    def found() -> dict:
        out: dict = {"bridges": [], "processes": [], "namespaces": []}
        for rid in ids:
            left = clean.leftovers(rid)
            out["bridges"] += left["bridges"]
            out["processes"] += left["processes"]
        out["namespaces"] = clean.leftovers(None)["namespaces"]
        return {k: v for k, v in out.items() if v}

    try:
        wait_for(lambda: not found(), timeout, "no leftovers", interval=0.2, last=found)
    except WaitTimeout as e:
        raise AssertionError(f"leftovers after the test (`python -m testbed.clean` removes them): {e}")


def dump_flows(switches, out_dir: Path) -> dict[str, str]:
    """``ovs-ofctl dump-flows`` of every switch, written to out_dir/flows-<sw>.txt."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dumps = {}
    for s in switches:
        r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", s],
                           capture_output=True, text=True)
        dumps[s] = r.stdout if r.returncode == 0 else f"# dump-flows failed: {r.stderr}"
        (out_dir / f"flows-{s}.txt").write_text(dumps[s])
    return dumps


def flow_lines(dump: str) -> list[str]:
    """The flow entries of an ``ovs-ofctl dump-flows`` output (not its header)."""
    return [ln.strip() for ln in dump.splitlines() if "actions=" in ln]


def switch_flow_counts(switches) -> dict[str, int | None]:
    """Flows in each switch now (``ovs-ofctl dump-aggregate``), None if unreadable."""
    out = {}
    for s in switches:
        r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-aggregate", s],
                           capture_output=True, text=True)
        m = re.search(r"flow_count=(\d+)", r.stdout)
        out[s] = int(m.group(1)) if m else None
    return out


def expected_flow_counts(topo: Topology) -> dict[str, int]:
    """Flows each switch holds once the DCC has found every planned link (and
    nothing else): its service flows plus forwarding towards every host, as
    :mod:`controllers.fabric` computes them."""
    fabric = fabric_of(topo)
    flows = set(fab.forwarding_flows(fabric, fabric.expected_links()))
    for dpid in fabric.switches.values():
        flows.update(fab.service_flows(dpid))
    per_dpid: dict[int, int] = {}
    for f in flows:
        per_dpid[f.dpid] = per_dpid.get(f.dpid, 0) + 1
    return {s: per_dpid.get(dpid, 0) for s, dpid in fabric.switches.items()}


def wait_flows_in_switches(topo: Topology, timeout: float = 30) -> dict[str, int]:
    """Wait until every switch holds the complete flow table the DCC computes.

    The DCC reports convergence while its flow-mods are still being sent and
    Open vSwitch applies them a little later; a ping in between is lost."""
    want = expected_flow_counts(topo)

    def differ():
        have = switch_flow_counts(topo.switches)
        return {s: f"{have[s]}/{n}" for s, n in want.items() if have[s] != n}

    wait_for(lambda: not differ(), timeout,
             "every switch to hold the DCC's complete flow table (have/want)", interval=0.2,
             last=lambda: dict(list(differ().items())[:8]))
    return want


def _wait_bridge_names_free(topo: Topology):
    def taken():
        return sorted(existing_bridges() & set(topo.switches))
    wait_for(lambda: not taken(), BRIDGE_NAMES_WAIT_S,
             "bridges named like this topology's switches to be removed by whoever owns them",
             interval=0.5, last=taken)


@contextmanager
def run_env(run_id: str):
    """DAITN_RUN=run_id while building, so Mininet's host shells carry the tag."""
    old = os.environ.get("DAITN_RUN")
    os.environ["DAITN_RUN"] = run_id
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DAITN_RUN", None)
        else:
            os.environ["DAITN_RUN"] = old


@contextmanager
def emulated(topo: Topology, tmp_path: Path, *, caps: Capabilities | None = None,
             controller: bool = True, converge_timeout: float = 60, lldp_interval: float = 1.0):
    """Yield ``(ctl, net)``: the DCC process and the started EmulatedNetwork.

    With ``controller=False`` no DCC runs (``ctl`` is None) and the switches are
    pointed at a free port where nothing listens. With it, the body starts once
    the DCC has converged and every switch holds its complete flow table. On
    exit: flows of every switch go to ``tmp_path``, then the network and the DCC
    stop, and the test fails if the DCC logged an exception or the run left
    anything behind (checked here when the body passed, else by the session).
    """
    caps = caps or probe()
    run_id = new_run_id()
    _wait_bridge_names_free(topo)
    with run_env(run_id):
        ctl = ControllerProcess(tmp_path / "dcc", fabric_of(topo), run_id,
                                lldp_interval=lldp_interval) if controller else None
        try:
            if ctl:
                ctl.start()
            with EmulatedNetwork(topo, run_id, caps, ctl.port if ctl else free_port(),
                                 log=lambda *_: None) as net:
                try:
                    if ctl:
                        ctl.wait_converged(converge_timeout)
                        wait_flows_in_switches(topo)
                    yield ctl, net
                finally:
                    dump_flows(topo.switches, tmp_path)
        except BaseException as e:
            if ctl and ctl.logged_exceptions():
                e.add_note(f"the DCC also logged errors (see {ctl.log_path}):\n"
                           + "\n".join(ctl.logged_exceptions()[:20]))
            raise
        finally:
            if ctl:
                ctl.stop()
    # Reached only when the body and the network's teardown succeeded.
    errors = ctl.logged_exceptions() if ctl else []
    if errors:
        raise AssertionError(f"the DCC logged {len(errors)} error(s) (see {ctl.log_path}):\n"
                             + "\n".join(errors[:20]))
    assert_no_leftovers([run_id])


@pytest.fixture(scope="session")
def caps() -> Capabilities:
    return probe()


@pytest.fixture(scope="session")
def emu():
    """This module's helpers, for test modules (``emu.emulated(topo, tmp_path)``,
    ``emu.assert_no_leftovers([run_id])``...): fixtures rather than ``from
    conftest import``, which breaks as soon as the test dirs become packages."""
    return SimpleNamespace(**{name: globals()[name] for name in __all__})


@pytest.fixture(scope="session", autouse=True)
def _session_leftovers():
    """After the whole tier: nothing of any run this session started survives.
    (Scoped to our run ids: other runs may legitimately be live on this machine.)"""
    yield
    if os.geteuid() == 0 and SESSION_RUN_IDS:
        assert_no_leftovers(SESSION_RUN_IDS)


def bridges_of_run(run_id: str) -> list[str]:
    """Bridges tagged with ``run_id`` (to prove a refused build created none)."""
    return clean.leftovers(run_id)["bridges"]


__all__ = ["emulated", "assert_no_leftovers", "dump_flows", "new_run_id", "run_env",
           "bridges_of_run", "switch_flow_counts", "expected_flow_counts", "wait_flows_in_switches",
           "flow_lines"]
