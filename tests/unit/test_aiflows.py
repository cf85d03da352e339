"""Flows for AI traffic (controllers/aiflows.py) on a fake flow table, no switch.

The fabric comes from testbed.network.fabric_of; forwarding, DCC punts and a
task's hop flows are installed together and packets are walked hop by hop.
"""
import json

import pytest

from controllers import aiflows, cookies
from controllers import fabric as fab
from controllers.aiflows import DROP, MeterSpec, hop_flows, hop_meters, meter_id_for, ports_along, walk
from controllers.fabric import CONTROLLER, FlowSpec
from nodes.wire import DCC_IP, DCC_UDP_PORT
from testbed.network import fabric_of
from topologies import by_name

TASK, HOP, DSCP = 7, 3, 14
LONG_WAY = ["h1", "s1", "s5", "s4", "s3", "h3"]  # ring:n=5: the default h1 -> h3 is s1 s2 s3


def ring():
    return fabric_of(by_name("ring:n=5"))


def table(f, *extra):
    links = f.expected_links()
    flows = fab.forwarding_flows(f, links)
    for dpid in f.switches.values():
        flows += fab.service_flows(dpid)
    for more in extra:
        flows += more
    return flows


def ip(f, h):
    return f.hosts[h].ip


def pkt(f, src, dst, dscp=None, **kw):
    p = {"eth_type": 0x0800, "ip_proto": 6, "ipv4_src": ip(f, src), "ipv4_dst": ip(f, dst), **kw}
    if dscp is not None:
        p["ip_dscp"] = dscp
    return p


# --- ports along a path ---------------------------------------------------------

def test_ports_along_ring_long_way():
    f = ring()
    # s1: h1 on 3, s5 on 2; s5: s1 on 1, s4 on 2; s4: s5 on 2, s3 on 1; s3: s4 on 2, h3 on 3
    assert ports_along(f, LONG_WAY) == [(1, 3, 2), (5, 1, 2), (4, 2, 1), (3, 2, 3)]
    # the reverse path has in and out swapped, switches reversed
    rev = ports_along(f, LONG_WAY[::-1])
    assert rev == [(d, o, i) for d, i, o in reversed(ports_along(f, LONG_WAY))]


def test_ports_along_same_switch():
    f = fabric_of(by_name("linear:n=1,hosts_per_switch=3"))
    assert ports_along(f, ["h1", "s1", "h3"]) == [(1, f.hosts["h1"].port, f.hosts["h3"].port)]


@pytest.mark.parametrize("path, words", [
    (["h1", "s1", "s3", "h3"], "no link s1-s3"),          # not adjacent in the ring
    (["h1", "s2", "s3", "h3"], "no link s2-h1"),          # h1 hangs off s1
    (["h1", "s1", "s2", "h4"], "no link s2-h4"),          # h4 hangs off s4
    (["h1", "s1", "s9", "h3"], "'s9'"),                   # unknown switch
    (["h1", "s1", "s2", "h99"], "'h99' is not a host"),
    (["h1", "s1"], "host, switches..., host"),
    (["h1", "s1", "s2", "s1", "h1"], "visits a switch twice"),
])
def test_ports_along_errors_name_the_problem(path, words):
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        ports_along(ring(), path)


# --- hop flows steer the task's traffic, and only it -------------------------------

def test_task_dscp_takes_the_hop_path_others_take_default():
    f = ring()
    flows = table(f, hop_flows(f, LONG_WAY, task_id=TASK, hop=HOP, dscp=DSCP))
    assert walk(flows, f, "h1", pkt(f, "h1", "h3", DSCP)) == LONG_WAY
    default = ["h1", "s1", "s2", "s3", "h3"]
    assert walk(flows, f, "h1", pkt(f, "h1", "h3")) == default              # best effort
    assert walk(flows, f, "h1", pkt(f, "h1", "h3", 0)) == default
    assert walk(flows, f, "h1", pkt(f, "h1", "h3", DSCP + 1)) == default    # another task
    # same DSCP from another source or to another destination: not this hop
    assert walk(flows, f, "h2", pkt(f, "h2", "h3", DSCP)) == ["h2", "s2", "s3", "h3"]
    assert walk(flows, f, "h1", pkt(f, "h1", "h4", DSCP)) == ["h1", "s1", "s5", "s4", "h4"]
    # ARP keeps following the default tree
    assert walk(flows, f, "h1", {"eth_type": 0x0806, "arp_tpa": ip(f, "h3")}) == default


def test_replies_come_back_along_the_hop_path():
    f = ring()
    flows = table(f, hop_flows(f, LONG_WAY, task_id=TASK, hop=HOP, dscp=DSCP))
    assert walk(flows, f, "h3", pkt(f, "h3", "h1", DSCP)) == LONG_WAY[::-1]
    assert walk(flows, f, "h3", pkt(f, "h3", "h1")) == ["h3", "s3", "s2", "s1", "h1"]


def test_two_tasks_on_one_pair_keep_their_own_paths():
    f = ring()
    short = ["h1", "s1", "s2", "s3", "h3"]
    flows = table(f, hop_flows(f, LONG_WAY, task_id=1, hop=1, dscp=8),
                  hop_flows(f, short, task_id=2, hop=1, dscp=9))
    assert walk(flows, f, "h1", pkt(f, "h1", "h3", 8)) == LONG_WAY
    assert walk(flows, f, "h1", pkt(f, "h1", "h3", 9)) == short
    keys = [(fl.dpid, fl.priority, fl.match) for fl in flows]
    assert len(set(keys)) == len(keys), "two flows with one match on one switch"


def test_dcc_and_lldp_still_punted_with_hop_flows_installed():
    f = ring()
    flows = table(f, hop_flows(f, LONG_WAY, task_id=TASK, hop=HOP, dscp=DSCP))
    dcc = {"eth_type": 0x0800, "ip_proto": 17, "ipv4_src": ip(f, "h1"), "ipv4_dst": DCC_IP,
           "udp_dst": DCC_UDP_PORT, "ip_dscp": DSCP}
    assert walk(flows, f, "h1", dcc) == ["h1", "s1", CONTROLLER]
    for dpid in f.switches.values():
        assert fab.lookup(flows, dpid, {"eth_type": 0x88CC}).priority == fab.PRIO_DISCOVERY


def test_hop_flow_shape_priority_and_cookie():
    f = ring()
    flows = hop_flows(f, LONG_WAY, task_id=TASK, hop=HOP, dscp=DSCP, meter_id=5)
    assert len(flows) == 2 * 4  # two directions on each of the four switches
    assert fab.PRIO_DISCOVERY > fab.PRIO_DCC_SERVICE > fab.PRIO_AI_HOP > fab.PRIO_FORWARDING
    for fl in flows:
        m = fl.match_dict()
        assert fl.priority == fab.PRIO_AI_HOP
        assert m["eth_type"] == 0x0800 and m["ip_dscp"] == DSCP  # ip_dscp needs eth_type IPv4
        assert cookies.function_of(fl.cookie) == "ai-task-hop"
        assert cookies.task_hop_of(fl.cookie) == (TASK, HOP)
        # the meter polices the model's direction only
        assert fl.meter == (5 if m["ipv4_src"] == ip(f, "h1") else None)
    assert {fl.dpid for fl in flows} == {1, 5, 4, 3}
    assert all(fl.meter is None for fl in hop_flows(f, LONG_WAY, task_id=TASK, hop=HOP, dscp=DSCP))


def test_hop_flows_explicit_addresses_and_refusals():
    f = ring()
    fl = hop_flows(f, LONG_WAY, task_id=1, hop=1, dscp=8, src_ip="10.9.0.1", dst_ip="10.9.0.3")
    assert {x.match_dict()["ipv4_src"] for x in fl} == {"10.9.0.1", "10.9.0.3"}
    with pytest.raises(ValueError, match="best effort"):
        hop_flows(f, LONG_WAY, task_id=1, hop=1, dscp=0)
    with pytest.raises(ValueError, match="1..63"):
        hop_flows(f, LONG_WAY, task_id=1, hop=1, dscp=64)
    with pytest.raises(ValueError, match="forwarding"):
        hop_flows(f, LONG_WAY, task_id=1, hop=1, dscp=8, priority=fab.PRIO_FORWARDING)
    with pytest.raises(ValueError, match="no link s1-s3"):
        hop_flows(f, ["h1", "s1", "s3", "h3"], task_id=1, hop=1, dscp=8)


def test_hop_path_on_a_fattree_differs_from_default_and_delivers():
    f = fabric_of(by_name("fattree:k=4"))
    flows = table(f)
    default = walk(flows, f, "h1", pkt(f, "h1", "h16", 10))
    assert default[-1] == "h16"
    # any other shortest path: another core switch than the BFS one
    cores = [s for s in f.switches if f.switches[s] <= 4]
    other_core = next(c for c in cores if c not in default)
    edge1, edge16 = f.hosts["h1"].switch, f.hosts["h16"].switch
    nbrs = {}
    for a, _, b, _ in f.links:
        nbrs.setdefault(a, set()).add(b)
        nbrs.setdefault(b, set()).add(a)
    agg1 = next(a for a in sorted(nbrs[edge1]) if other_core in nbrs[a])
    agg16 = next(a for a in sorted(nbrs[edge16]) if other_core in nbrs[a])
    path = ["h1", edge1, agg1, other_core, agg16, edge16, "h16"]
    flows += hop_flows(f, path, task_id=3, hop=2, dscp=10)
    assert walk(flows, f, "h1", pkt(f, "h1", "h16", 10)) == path
    assert walk(flows, f, "h16", pkt(f, "h16", "h1", 10)) == path[::-1]
    assert walk(flows, f, "h1", pkt(f, "h1", "h16", 11)) == default


# --- walk ------------------------------------------------------------------------------

def test_walk_reports_drop_and_loops():
    f = ring()
    assert walk(table(f), f, "h1", {"eth_type": 0x0800, "ipv4_dst": "10.9.9.9"}) == ["h1", "s1", DROP]
    # s1 -> s2 -> s1: a loop is an error, not a hang
    loop = [fab._flow(1, 300, 0, {"eth_type": 0x0800}, [("output", 1)]),
            fab._flow(2, 300, 0, {"eth_type": 0x0800}, [("output", 1)])]
    with pytest.raises(ValueError, match="loops"):
        walk(loop, f, "h1", {"eth_type": 0x0800})
    nowhere = [fab._flow(1, 300, 0, {"eth_type": 0x0800}, [("output", 42)])]
    with pytest.raises(ValueError, match="port 42"):
        walk(nowhere, f, "h1", {"eth_type": 0x0800})


# --- meters -----------------------------------------------------------------------------

def test_meters_on_every_switch_of_the_path():
    f = ring()
    mid = meter_id_for(TASK, HOP)
    ms = hop_meters(f, LONG_WAY, 8, mid)
    assert [m.dpid for m in ms] == [1, 5, 4, 3]
    assert all(m == MeterSpec(m.dpid, mid, 8000, 400) for m in ms)  # 8 Mbit/s * 50 ms = 400 kbit
    # the flows that use it name the same meter on the same switches
    flows = hop_flows(f, LONG_WAY, task_id=TASK, hop=HOP, dscp=DSCP, meter_id=mid)
    assert {(fl.dpid, fl.meter) for fl in flows if fl.meter} == {(m.dpid, m.meter_id) for m in ms}


def test_meter_burst_at_least_one_frame():
    assert aiflows.burst_kb_for(10) * 1000 >= aiflows.FRAME_BYTES * 8
    assert aiflows.burst_kb_for(100_000) == 5000
    (m,) = hop_meters(fabric_of(by_name("linear:n=1,hosts_per_switch=2")), ["h1", "s1", "h2"], 0.1, 1)
    assert m.rate_kbps == 100 and m.burst_kb * 1000 >= aiflows.FRAME_BYTES * 8
    with pytest.raises(ValueError, match="> 0"):
        hop_meters(ring(), LONG_WAY, 0, 1)
    with pytest.raises(ValueError, match="meter id"):
        hop_meters(ring(), LONG_WAY, 1, 0)


def test_meter_ids_deterministic_and_distinct():
    ids = {meter_id_for(t, h) for t in range(1, 300) for h in range(256)}
    assert len(ids) == 299 * 256 and min(ids) >= 1 and max(ids) <= aiflows.OFPM_MAX
    assert meter_id_for(TASK, HOP) == meter_id_for(TASK, HOP)
    for bad in ((0, 1), (1, 256), (1, -1)):
        with pytest.raises(ValueError):
            meter_id_for(*bad)


# --- cookies and FlowSpec ------------------------------------------------------------------

def test_task_hop_cookie_roundtrip_and_layout():
    c = cookies.task_hop_cookie(7, 3)
    assert c == 0x0400000007000300
    assert cookies.function_of(c) == "ai-task-hop"
    for t, h in ((0, 0), (1, 1), (2**32 - 1, 2**16 - 1), (123456, 255)):
        c = cookies.task_hop_cookie(t, h)
        assert cookies.task_hop_of(c) == (t, h) and c < 2**64
        assert c & cookies.TASK_MASK == cookies.task_hop_cookie(t, 0)  # one mask: a whole task
    for other in (cookies.make(cookies.FORWARDING, 3), cookies.make(cookies.DISCOVERY), 0):
        assert cookies.task_hop_of(other) is None
    for bad in ((2**32, 0), (-1, 0), (1, 2**16)):
        with pytest.raises(ValueError):
            cookies.task_hop_cookie(*bad)


def test_flowspec_without_meter_unchanged():
    fl = fab._flow(1, 100, 5, {"ipv4_dst": "10.0.0.1", "eth_type": 0x0800}, [("output", 2)])
    assert str(fl) == ("FlowSpec(dpid=1, priority=100, cookie=5, "
                       "match=(('eth_type', 2048), ('ipv4_dst', '10.0.0.1')), actions=(('output', 2),))")
    assert fl == FlowSpec(1, 100, 5, fl.match, fl.actions) and fl.meter is None
    assert hash(fl) == hash(FlowSpec(1, 100, 5, fl.match, fl.actions))
    metered = fab._flow(1, 100, 5, fl.match_dict(), fl.actions, meter=9)
    assert metered != fl and str(metered).endswith(", meter=9)")
    assert len({fl, metered}) == 2
    json.dumps(metered.match)  # match stays plain data
