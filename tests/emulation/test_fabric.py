"""The fabric forwards only what the DCC installed: reachability, flow ownership,
fail-secure switches and the DCC's check of the discovered topology."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest

from controllers import cookies
from testbed import clean
from testbed.controller import free_port
from testbed.network import EmulatedNetwork, NetworkError, existing_bridges
from topologies import by_name

pytestmark = pytest.mark.emulation

DCC_FUNCTIONS = {cookies.DISCOVERY, cookies.FORWARDING, cookies.DCC_SERVICE}


def foreign_flows(flows: list[str]) -> list[str]:
    """Flow entries whose cookie does not name a DCC function (or that have none)."""
    bad = []
    for ln in flows:
        m = re.search(r"\bcookie=(0x[0-9a-f]+|\d+)", ln)
        if not m or int(m.group(1), 0) >> 56 not in DCC_FUNCTIONS:
            bad.append(ln)
    return bad


def ping_loss(out: str) -> float:
    m = re.search(r"([\d.]+)% packet loss", out)
    assert m, f"no ping summary in: {out!r}"
    return float(m.group(1))


class TestFatTree:
    """fat-tree k=4 (20 switches, 16 hosts) with the DCC, one network for the class
    (class scope: it is gone before the next tests reuse the switch names)."""

    @pytest.fixture(scope="class")
    def fattree(self, tmp_path_factory, caps, emu):
        topo = by_name("fattree:k=4").validate()
        with emu.emulated(topo, tmp_path_factory.mktemp("fattree"), caps=caps) as (ctl, net):
            yield topo, ctl, net

    def test_pingall_with_only_dcc_flows(self, fattree, tmp_path, emu):
        topo, ctl, net = fattree
        assert net.net.pingAll(timeout=1) == 0.0
        dumps = emu.dump_flows(topo.switches, tmp_path)
        for s, dump in dumps.items():
            assert not dump.startswith("# dump-flows failed"), dump
            flows = emu.flow_lines(dump)
            assert flows, f"{s} has no flows at all"
            assert not foreign_flows(flows), f"{s} has flows the DCC did not install: {foreign_flows(flows)}"
            owners = {int(re.search(r"cookie=(0x[0-9a-f]+)", f).group(1), 16) >> 56 for f in flows}
            assert cookies.FORWARDING in owners, f"{s} has no forwarding flow: {flows}"

    def test_dcc_found_exactly_the_planned_links(self, fattree):
        topo, ctl, net = fattree
        st = ctl.state()
        assert st["converged"]
        assert st["link_check"] == {"missing": [], "unexpected": []}
        # Both directions of every switch-switch link, as LLDP sees them.
        assert st["links_expected"] == st["links_discovered"] == 2 * len(topo.switch_links())
        assert sorted(st["switches_connected"]) == sorted(st["switches_expected"])
        assert len(st["switches_expected"]) == len(topo.switches)


def abilene_without_delay():
    topo = by_name("sndlib/abilene").validate()
    assert any(ln.delay_ms for ln in topo.links)  # else the refusal test below proves nothing
    return replace(topo, links=[replace(ln, delay_ms=None) for ln in topo.links]).validate()


def test_abilene_pingall_with_delays_removed(tmp_path, caps, emu):
    topo = abilene_without_delay()
    with emu.emulated(topo, tmp_path, caps=caps) as (ctl, net):
        assert net.net.pingAll(timeout=1) == 0.0
        assert ctl.state()["link_check"] == {"missing": [], "unexpected": []}


def test_abilene_with_delays_refused_on_tc_without_netem(caps, emu):
    if caps.netem:
        pytest.skip("this kernel has sch_netem: delays are emulated, not refused")
    topo = by_name("sndlib/abilene").validate()
    first = next(ln for ln in topo.links if ln.delay_ms)
    run_id = emu.new_run_id()
    before = existing_bridges()
    with emu.run_env(run_id):
        net = EmulatedNetwork(topo, run_id, caps, free_port(), log=lambda *_: None,
                              backend="tc")  # auto would use ns-3
        with pytest.raises(NetworkError) as err:
            with net:
                pytest.fail("EmulatedNetwork built a network whose delays it cannot emulate")
    msg = str(err.value)
    assert f"link {first.a}-{first.b}" in msg and "netem" in msg, msg
    assert net.net is None
    # Nothing was created: `ovs-vsctl list-br` is unchanged, except for bridges
    # of other runs that may come and go meanwhile on a shared machine.
    assert emu.bridges_of_run(run_id) == []
    added = existing_bridges() - before
    assert added <= set(clean.leftovers(None)["bridges"]) - {*emu.bridges_of_run(run_id)}, added
    emu.assert_no_leftovers([run_id], timeout=0)


def test_no_forwarding_without_controller(tmp_path, caps, emu):
    """Fail-secure switches pointed at a port where nothing listens forward nothing."""
    topo = by_name("linear:n=3").validate()
    with emu.emulated(topo, tmp_path, caps=caps, controller=False) as (ctl, net):
        assert ctl is None
        h1 = net.host("h1")
        for dst in ("h2", "h3"):
            out = h1.cmd(f"ping -c 3 -i 0.2 -W 1 {net.host(dst).IP()} 2>&1")
            assert ping_loss(out) == 100.0, out
        for s, dump in emu.dump_flows(topo.switches, tmp_path).items():
            assert emu.flow_lines(dump) == [], f"{s} has flows though no controller ran: {dump}"
