"""Unit tests for the pure forwarding policy (controllers/fabric.py, controllers/cookies.py).

The Fabric comes from testbed.network.fabric_of(topology); forwarding is
simulated hop by hop on the fake flow table ``fabric.lookup``.
"""
import itertools
import os
import subprocess
import sys

import networkx as nx
import pytest

from controllers import cookies
from controllers import fabric as fab
from controllers.fabric import CONTROLLER, Fabric, FlowSpec
from nodes.wire import DCC_IP, DCC_UDP_PORT
from testbed.network import fabric_of, host_ip, host_mac, plan_ports
from topologies import by_name

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOPOS = ["fattree:k=4", "ring:n=5", "linear:n=4", "tree:depth=2,fanout=3",
         "ring:n=4,hosts_per_switch=2", "linear:n=1,hosts_per_switch=3"]


def build(name):
    f = fabric_of(by_name(name))
    return f, f.expected_links()


def all_flows(f: Fabric, links) -> list[FlowSpec]:
    flows = fab.forwarding_flows(f, links)
    for dpid in f.switches.values():
        flows += fab.service_flows(dpid)
    return flows


def walk(f: Fabric, flows, links, src: str, pkt: dict):
    """Follow flows from ``src``'s switch; return (delivered_host, path of dpids)."""
    port_to = {(s, sp): d for s, sp, d, _ in links}
    host_at = {(f.switches[h.switch], h.port): n for n, h in f.hosts.items()}
    dpid = f.switches[f.hosts[src].switch]
    path = [dpid]
    for _ in range(len(f.switches) + 1):
        flow = fab.lookup(flows, dpid, pkt)
        assert flow is not None, f"{src} -> {pkt}: no flow on dpid {dpid} (path {path})"
        assert len(flow.actions) == 1 and flow.actions[0][0] == "output", flow
        port = flow.actions[0][1]
        assert port != CONTROLLER, f"{pkt} punted to the controller at {dpid}"
        if (dpid, port) in host_at:
            return host_at[(dpid, port)], path
        assert (dpid, port) in port_to, f"dpid {dpid} outputs to port {port}: no link, no host"
        dpid = port_to[(dpid, port)]
        assert dpid not in path, f"loop: {path + [dpid]}"
        path.append(dpid)
    pytest.fail(f"{src} -> {pkt}: more hops than switches: {path}")


def assert_all_pairs_deliver(f, links, shortest=True):
    flows = all_flows(f, links)
    g = fab.switch_graph(links)
    g.add_nodes_from(f.switches.values())
    for src, dst in itertools.permutations(sorted(f.hosts), 2):
        ip = f.hosts[dst].ip
        for pkt in ({"eth_type": 0x0800, "ipv4_dst": ip, "ip_proto": 6},
                    {"eth_type": 0x0806, "arp_tpa": ip}):
            got, path = walk(f, flows, links, src, pkt)
            assert got == dst, f"{src} -> {dst} ({pkt}) delivered to {got} via {path}"
            if shortest:
                a, b = f.switches[f.hosts[src].switch], f.switches[f.hosts[dst].switch]
                assert len(path) - 1 == nx.shortest_path_length(g, a, b), (src, dst, path)


# --- building the fabric -----------------------------------------------------

def test_importing_testbed_network_needs_no_root_and_no_mininet():
    code = ("import sys, testbed.network; "
            "assert 'mininet' not in sys.modules, 'mininet imported at module level'; "
            "assert 'os_ken' not in sys.modules; print('ok')")
    kw = {}
    if os.geteuid() == 0:
        kw["user"] = 65534  # prove it as an unprivileged user
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=60, **kw)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_fabric_of_fattree_shape():
    topo = by_name("fattree:k=4")
    f = fabric_of(topo)
    assert len(f.switches) == 20 and len(f.hosts) == 16
    assert f.switches == {f"s{i}": i for i in range(1, 21)}
    assert len(f.links) == len(topo.switch_links()) == 32
    assert len(f.expected_links()) == 64
    h1 = f.hosts["h1"]
    assert (h1.ip, h1.mac) == ("10.0.0.1", "00:00:00:00:00:01") == (host_ip("h1"), host_mac("h1"))
    assert f.hosts["h16"].ip == "10.0.0.16"
    assert h1.switch == topo.host_switch("h1")
    # every switch port is used exactly once, numbered from 1, contiguous per switch
    used: dict[str, list[int]] = {}
    for a, ap, b, bp in plan_ports(topo):
        for n, p in ((a, ap), (b, bp)):
            if n.startswith("s"):
                used.setdefault(n, []).append(p)
            else:
                assert p == 0
    for s, ports in used.items():
        assert sorted(ports) == list(range(1, len(ports) + 1)), s


def test_host_mac_and_ip_for_large_numbers():
    assert host_ip("h300") == "10.0.1.44"
    assert host_mac("h300") == "00:00:00:00:01:2c"


def test_fabric_dict_roundtrip(tmp_path):
    import json
    f = fabric_of(by_name("ring:n=5"), extra={"roles": {"h1": ["client"]}})
    d = json.loads(json.dumps(f.to_dict()))
    g = Fabric.from_dict(d)
    assert g == f
    p = tmp_path / "fabric.json"
    p.write_text(json.dumps(f.to_dict()))
    assert Fabric.load(str(p)) == f


def test_expected_links_both_directions():
    f, links = build("linear:n=4")
    # switch-switch links come first in a generated topology, so they take ports 1, 2
    assert links == {(1, 1, 2, 1), (2, 1, 1, 1), (2, 2, 3, 1), (3, 1, 2, 2),
                     (3, 2, 4, 1), (4, 1, 3, 2)}
    assert {h: (p.switch, p.port) for h, p in f.hosts.items()} == {
        "h1": ("s1", 2), "h2": ("s2", 3), "h3": ("s3", 3), "h4": ("s4", 2)}
    assert f.name_of(3) == "s3" and f.name_of(99) == "dpid99"


# --- forwarding: every pair delivers, on shortest paths, without loops ---------

@pytest.mark.parametrize("name", TOPOS)
def test_all_pairs_ipv4_and_arp_delivered(name):
    f, links = build(name)
    assert_all_pairs_deliver(f, links)


def test_forwarding_flow_counts_and_priorities():
    f, links = build("fattree:k=4")
    flows = fab.forwarding_flows(f, links)
    # one IPv4 + one ARP flow per (host, switch): every switch can reach every host
    assert len(flows) == 2 * 16 * 20
    assert len(set(flows)) == len(flows)
    assert {fl.priority for fl in flows} == {fab.PRIO_FORWARDING}
    assert fab.PRIO_DISCOVERY > fab.PRIO_DCC_SERVICE > fab.PRIO_FORWARDING
    # no two flows on one switch with the same match (would be ambiguous)
    keys = [(fl.dpid, fl.priority, fl.match) for fl in flows]
    assert len(set(keys)) == len(keys)


def test_every_flow_has_our_cookie():
    f, links = build("fattree:k=4")
    flows = all_flows(f, links)
    for fl in flows:
        assert cookies.function_of(fl.cookie) is not None, fl
    fwd = [fl for fl in flows if fl.priority == fab.PRIO_FORWARDING]
    assert {cookies.function_of(fl.cookie) for fl in fwd} == {"forwarding"}
    # the cookie detail names the destination host
    for fl in fwd:
        dst_ip = fl.match_dict().get("ipv4_dst") or fl.match_dict()["arp_tpa"]
        assert fl.cookie == cookies.make(cookies.FORWARDING, int(dst_ip.split(".")[-1]))


def test_cookies_module():
    c = cookies.make(cookies.FORWARDING, 3)
    assert c == 0x0200000000000003
    assert cookies.function_of(c) == "forwarding"
    assert cookies.function_of(cookies.make(cookies.DISCOVERY)) == "discovery"
    assert cookies.function_of(cookies.make(cookies.DCC_SERVICE, 7)) == "dcc-service"
    assert cookies.function_of(0) is None  # e.g. a flow someone else installed
    assert cookies.function_of(0x7F << 56) is None
    # detail is masked to 56 bits and cannot corrupt the function byte
    assert cookies.function_of(cookies.make(cookies.DISCOVERY, 2**60 + 5)) == "discovery"
    assert cookies.make(cookies.DISCOVERY, 2**60 + 5) & ((1 << 56) - 1) == 5
    assert cookies.make(0xFF, 1) < 2**64


def test_service_flows_punt_dcc_and_lldp():
    flows = fab.service_flows(7)
    assert {fl.dpid for fl in flows} == {7}
    assert all(fl.actions == (("output", CONTROLLER),) for fl in flows)
    for fl in flows:
        assert cookies.function_of(fl.cookie) is not None

    lldp = fab.lookup(flows, 7, {"eth_type": 0x88CC})
    assert lldp is not None and cookies.function_of(lldp.cookie) == "discovery"
    assert lldp.priority == fab.PRIO_DISCOVERY

    arp = fab.lookup(flows, 7, {"eth_type": 0x0806, "arp_tpa": DCC_IP})
    assert arp is not None and cookies.function_of(arp.cookie) == "dcc-service"

    udp = {"eth_type": 0x0800, "ip_proto": 17, "ipv4_dst": DCC_IP, "udp_dst": DCC_UDP_PORT}
    assert cookies.function_of(fab.lookup(flows, 7, udp).cookie) == "dcc-service"
    # only the DCC's UDP port, only UDP, only the DCC address, only this switch
    assert fab.lookup(flows, 7, {**udp, "udp_dst": DCC_UDP_PORT + 1}) is None
    assert fab.lookup(flows, 7, {**udp, "ip_proto": 6}) is None
    assert fab.lookup(flows, 7, {**udp, "ipv4_dst": "10.0.0.1"}) is None
    assert fab.lookup(flows, 8, udp) is None
    assert fab.lookup(flows, 7, {"eth_type": 0x0806, "arp_tpa": "10.0.0.1"}) is None


def test_dcc_traffic_punted_everywhere_in_full_table():
    f, links = build("fattree:k=4")
    flows = all_flows(f, links)
    for dpid in f.switches.values():
        for pkt in ({"eth_type": 0x0800, "ip_proto": 17, "ipv4_dst": DCC_IP, "udp_dst": DCC_UDP_PORT,
                     "udp_src": 40000},
                    {"eth_type": 0x0806, "arp_tpa": DCC_IP},
                    {"eth_type": 0x88CC}):
            fl = fab.lookup(flows, dpid, pkt)
            assert fl is not None and fl.actions == (("output", CONTROLLER),), (dpid, pkt)


def test_unknown_destination_has_no_flow():
    f, links = build("ring:n=5")
    flows = all_flows(f, links)
    for dpid in f.switches.values():
        assert fab.lookup(flows, dpid, {"eth_type": 0x0800, "ipv4_dst": "10.9.9.9"}) is None
        assert fab.lookup(flows, dpid, {"eth_type": 0x86DD}) is None


def test_lookup_picks_highest_priority():
    lo = fab._flow(1, 10, 0, {"eth_type": 0x0800}, [("output", 1)])
    hi = fab._flow(1, 20, 0, {"eth_type": 0x0800, "ipv4_dst": "10.0.0.1"}, [("output", 2)])
    assert fab.lookup([lo, hi], 1, {"eth_type": 0x0800, "ipv4_dst": "10.0.0.1"}) is hi
    assert fab.lookup([hi, lo], 1, {"eth_type": 0x0800, "ipv4_dst": "10.0.0.2"}) is lo
    assert fab.lookup([hi, lo], 2, {"eth_type": 0x0800}) is None


# --- discovery cross-check ------------------------------------------------------

def test_compare_links_clean():
    f, links = build("ring:n=5")
    assert fab.compare_links(f, set(links)) == {"missing": [], "unexpected": []}


def test_compare_links_missing_and_unexpected():
    f, links = build("ring:n=5")
    gone = (1, 1, 2, 1)
    assert gone in links
    extra = (3, 9, 5, 9)
    found = (set(links) - {gone}) | {extra}
    r = fab.compare_links(f, found)
    assert r == {"missing": [gone], "unexpected": [extra]}
    # a link discovered on the wrong port counts as both missing and unexpected
    wrong_port = (1, 7, 2, 2)
    r = fab.compare_links(f, (set(links) - {gone}) | {wrong_port})
    assert r == {"missing": [gone], "unexpected": [wrong_port]}
    assert fab.compare_links(f, set()) == {"missing": sorted(links), "unexpected": []}


# --- re-routing -------------------------------------------------------------

def test_ring_reroutes_around_a_removed_link():
    f, links = build("ring:n=5")
    flows_before = fab.forwarding_flows(f, links)
    a, ap, b, bp = next(l for l in sorted(links) if {l[0], l[2]} == {1, 2})
    cut = links - {(a, ap, b, bp), (b, bp, a, ap)}
    assert len(cut) == len(links) - 2
    assert_all_pairs_deliver(f, cut)
    flows = all_flows(f, cut)
    # h1 (on s1) to h2 (on s2) now goes the long way round: 4 switch hops
    got, path = walk(f, flows, cut, "h1", {"eth_type": 0x0800, "ipv4_dst": f.hosts["h2"].ip})
    assert got == "h2" and len(path) == 5 and path[0] == 1 and path[-1] == 2
    # and no flow uses the dead link any more
    for fl in fab.forwarding_flows(f, cut):
        assert (fl.dpid, fl.actions[0][1]) not in {(a, ap), (b, bp)}
    assert fab.forwarding_flows(f, cut) != flows_before


def test_fattree_survives_losing_a_core_link():
    f, links = build("fattree:k=4")
    core_link = next(l for l in sorted(links) if l[0] == 1)
    s, sp, d, dp = core_link
    assert_all_pairs_deliver(f, links - {(s, sp, d, dp), (d, dp, s, sp)})


def test_partitioned_switch_gets_no_forwarding_but_others_still_deliver():
    f, links = build("linear:n=4")
    cut = {l for l in links if 4 not in (l[0], l[2])}
    flows = all_flows(f, cut)
    # s4 is cut off: nobody has a route to h4, s4 has none to the others
    for dpid in (1, 2, 3):
        assert fab.lookup(flows, dpid, {"eth_type": 0x0800, "ipv4_dst": f.hosts["h4"].ip}) is None
    assert fab.lookup(flows, 4, {"eth_type": 0x0800, "ipv4_dst": f.hosts["h1"].ip}) is None
    # the local host is still reachable on its own switch
    fl = fab.lookup(flows, 4, {"eth_type": 0x0800, "ipv4_dst": f.hosts["h4"].ip})
    assert fl is not None and fl.actions == (("output", f.hosts["h4"].port),)
    for src, dst in itertools.permutations(["h1", "h2", "h3"], 2):
        assert walk(f, flows, cut, src, {"eth_type": 0x0806, "arp_tpa": f.hosts[dst].ip})[0] == dst


# --- next hops -----------------------------------------------------------------

def test_next_hops_towards_is_deterministic_and_consistent():
    f, links = build("fattree:k=4")
    dpids = list(f.switches.values())
    g = fab.switch_graph(links)
    first = {dst: fab.next_hops_towards(g, dst, dpids) for dst in dpids}
    # same answer from a graph built from a differently ordered link set
    g2 = fab.switch_graph(set(sorted(links, reverse=True)))
    for dst in dpids:
        assert fab.next_hops_towards(g2, dst, list(reversed(dpids))) == first[dst]
        assert fab.next_hops_towards(g, dst, dpids) == first[dst]
    # every switch except dst has a next hop; each is a real port towards a closer switch
    port_to = {(s, sp): d for s, sp, d, _ in links}
    for dst, hops in first.items():
        assert set(hops) == set(dpids) - {dst}
        dist = nx.single_source_shortest_path_length(g, dst)
        for sw, port in hops.items():
            nb = port_to[(sw, port)]
            assert dist[nb] == dist[sw] - 1


def test_next_hops_towards_ties_break_to_lowest_dpid():
    # square 1-2-4-3-1: from 4 towards 1 both 2 and 3 are shortest; BFS from 1 visits 2 first
    links = {(1, 1, 2, 1), (2, 1, 1, 1), (2, 2, 4, 1), (4, 1, 2, 2),
             (4, 2, 3, 2), (3, 2, 4, 2), (3, 1, 1, 2), (1, 2, 3, 1)}
    g = fab.switch_graph(links)
    hops = fab.next_hops_towards(g, 1, [1, 2, 3, 4])
    assert hops == {2: 1, 3: 1, 4: 1}  # 4 leaves on port 1, towards s2


def test_next_hops_towards_filters_and_absent_dst():
    f, links = build("linear:n=4")
    g = fab.switch_graph(links)
    assert fab.next_hops_towards(g, 1, [3, 4]) == {3: 1, 4: 1}
    assert fab.next_hops_towards(g, 4, [1, 2, 3, 4]) == {1: 1, 2: 2, 3: 2}
    assert fab.next_hops_towards(g, 99, [1, 2, 3, 4]) == {}


def test_switch_graph_ports():
    g = fab.switch_graph({(1, 3, 2, 5), (2, 5, 1, 3)})
    assert list(g.edges) == [(1, 2)]
    assert g.edges[1, 2]["ports"] == {1: 3, 2: 5}


# --- matching on source and DSCP (AI task hops, controllers/aiflows.py) ---------------

def test_lookup_matches_ipv4_src_and_dscp():
    base = fab._flow(1, fab.PRIO_FORWARDING, 0, {"eth_type": 0x0800, "ipv4_dst": "10.0.0.3"}, [("output", 1)])
    hop = fab._flow(1, fab.PRIO_AI_HOP, cookies.task_hop_cookie(2, 1),
                    {"eth_type": 0x0800, "ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.3", "ip_dscp": 9},
                    [("output", 2)], meter=4)
    flows = [base, hop]
    p = {"eth_type": 0x0800, "ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.3"}
    assert fab.lookup(flows, 1, {**p, "ip_dscp": 9}) is hop
    assert fab.lookup(flows, 1, {**p, "ip_dscp": 10}) is base
    assert fab.lookup(flows, 1, p) is base                                  # no DSCP: best effort
    assert fab.lookup(flows, 1, {**p, "ipv4_src": "10.0.0.2", "ip_dscp": 9}) is base
    # an IPv4 packet without ip_dscp is DSCP 0, as on the wire; other packets get no default
    zero = fab._flow(1, 300, 0, {"eth_type": 0x0800, "ip_dscp": 0}, [("output", 3)])
    assert fab.lookup([zero], 1, {"eth_type": 0x0800}) is zero
    assert fab.lookup([fab._flow(1, 300, 0, {"ip_dscp": 0}, [("output", 3)])], 1, {"eth_type": 0x0806}) is None


def test_ai_task_hop_cookie_is_ours_and_old_codes_unchanged():
    c = cookies.task_hop_cookie(5, 2)
    assert cookies.function_of(c) == "ai-task-hop" and cookies.task_hop_of(c) == (5, 2)
    assert [cookies.function_of(cookies.make(f)) for f in (1, 2, 3)] == ["discovery", "forwarding",
                                                                          "dcc-service"]
    assert cookies.task_hop_of(cookies.make(cookies.FORWARDING, 3)) is None


def test_existing_flows_have_no_meter():
    f, links = build("ring:n=5")
    assert all(fl.meter is None and "meter" not in str(fl) for fl in all_flows(f, links))
