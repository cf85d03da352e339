"""The DCC's task tracker (controllers/tasks.py): plans, hops, per-hop flows that
take the planned path, re-planning on network changes; pure, no switch."""
import pytest

from controllers import aiflows, cookies
from controllers.maps import LinkInfo, NetworkMaps
from controllers.mtrce import TrainingRequest, get_policy
from controllers.tasks import TaskTracker, estimate_vs_actual, fastest_path
from testbed.network import fabric_of, plan_ports
from topologies.model import Link, Topology

NOW = 1000.0
DSCP = 9


def slow_triangle():
    """h1 (client) on s1, h2 (MPVU) on s2, h3 and h4 (data) on s3; s1-s3 is slow."""
    links = [Link("s1", "s2", bw_mbit=100), Link("s2", "s3", bw_mbit=100), Link("s1", "s3", bw_mbit=2),
             Link("h1", "s1", bw_mbit=100), Link("h2", "s2", bw_mbit=100), Link("h3", "s3", bw_mbit=100),
             Link("h4", "s3", bw_mbit=100)]
    return Topology("slow-triangle", ["s1", "s2", "s3"], ["h1", "h2", "h3", "h4"], links)


REPORTS = {
    "h1": dict(roles=["client"]),
    "h2": dict(roles=["mpvu"], verification_samples=450),
    # non-IID: each holds half the labels, so a plan needs both
    "h3": dict(roles=["data", "compute"], samples=600, label_hist=[120] * 5 + [0] * 5, capacity=1.0),
    "h4": dict(roles=["data", "compute"], samples=600, label_hist=[0] * 5 + [120] * 5, capacity=1.0),
}


def maps_of(topo) -> NetworkMaps:
    m = NetworkMaps(report_interval_s=1.0)
    m.set_links([LinkInfo(a, None if a.startswith("h") else ap, b, None if b.startswith("h") else bp,
                          ln.bw_mbit, None)
                 for ln, (a, ap, b, bp) in zip(topo.links, plan_ports(topo))])
    for n, r in REPORTS.items():
        m.node_report(n, NOW, **r)
    return m


def request(**kw):
    base = dict(task_id=1, client="h1", model_bytes=21_000, target_accuracy=0.8, deadline_s=120, max_laps=3)
    return TrainingRequest(**{**base, **kw})


@pytest.fixture
def world():
    topo = slow_triangle()
    fabric = fabric_of(topo)
    return topo, fabric, maps_of(topo), TaskTracker(fabric, get_policy("greedy"))


def test_fastest_path_avoids_the_slow_link(world):
    _, _, maps, _ = world
    assert fastest_path(maps.snapshot(NOW), "h1", "h3", 21_000) == ["h1", "s1", "s2", "s3", "h3"]


def test_submit_installs_the_first_hop_on_the_planned_path(world):
    topo, fabric, maps, tr = world
    a, task, ev = tr.submit(request(), DSCP, maps.snapshot(NOW), NOW, max_laps=3)
    assert a.feasible and task is not None, a.reasons
    assert [e["kind"] for e in ev][:2] == ["feasibility", "plan"]
    hop = next(e for e in ev if e["kind"] == "hop")
    assert hop["from"] == "h1" and hop["to"] == task.segments[0]
    assert "s2" in hop["path"]
    flows = sorted(tr.wanted_flows(), key=str)
    assert flows and all(cookies.function_of(f.cookie) == "ai-task-hop" for f in flows)
    assert {cookies.task_hop_of(f.cookie) for f in flows} == {(1, 1)}
    # a packet of the task walks the DCC's path; best effort would not match these flows
    pkt = {"eth_type": 0x0800, "ipv4_src": fabric.hosts["h1"].ip,
           "ipv4_dst": fabric.hosts[task.segments[0]].ip, "ip_dscp": DSCP}
    assert aiflows.walk(flows, fabric, "h1", pkt) == hop["path"]


def test_hops_lap_and_end(world):
    _, _, maps, tr = world
    snap = maps.snapshot(NOW)
    _, task, _ = tr.submit(request(max_laps=2), DSCP, snap, NOW, max_laps=2)
    seen = [task.heading]
    holder = task.heading
    while True:
        ans, ev = tr.hop_request(1, holder, None, snap, NOW + 1)
        if ans["end"]:
            break
        seen.append(ans["next"])
        holder = ans["next"]
    assert ans["end"] == "max_laps" and ans["next"] == "h1"
    assert seen == task.segments * 2
    assert tr.finished(1, NOW + 2)[0]["kind"] == "task_flows_removed"
    assert tr.wanted_flows() == set()


def test_holder_can_end_the_task(world):
    _, _, maps, tr = world
    snap = maps.snapshot(NOW)
    _, task, _ = tr.submit(request(), DSCP, snap, NOW, max_laps=3)
    ans, ev = tr.hop_request(1, task.heading, "target_reached", snap, NOW + 1)
    assert ans["end"] == "target_reached" and ans["next"] == "h1"
    assert next(e for e in ev if e["kind"] == "hop")["path"][-1] == "h1"


def test_deadline_ends_the_task(world):
    _, _, maps, tr = world
    snap = maps.snapshot(NOW)
    _, task, _ = tr.submit(request(deadline_s=10), DSCP, snap, NOW, max_laps=3)
    ans, _ = tr.hop_request(1, task.heading, None, snap, NOW + 11)
    assert ans["end"] == "deadline"


def test_link_failure_moves_flows_and_replans(world):
    _, fabric, maps, tr = world
    _, task, _ = tr.submit(request(), DSCP, maps.snapshot(NOW), NOW, max_laps=3)
    before = dict(task.paths)
    maps.link_state("s2", "s3", False, NOW + 1, "lldp_timeout")
    ev = tr.replan("link down (s2-s3)", maps.snapshot(NOW + 1), NOW + 1)
    moved = [e for e in ev if e["kind"] == "flows_moved"]
    assert moved and moved[0]["old"] == before
    for p in task.paths.values():
        assert not any({p[i], p[i + 1]} == {"s2", "s3"} for i in range(len(p) - 1)), p
    pkt = {"eth_type": 0x0800, "ipv4_src": fabric.hosts["h1"].ip,
           "ipv4_dst": fabric.hosts[task.heading].ip, "ip_dscp": DSCP}
    assert aiflows.walk(sorted(tr.wanted_flows(), key=str), fabric, "h1", pkt) == task.paths["hop"]


def test_node_failure_replans_without_it(world):
    _, _, maps, tr = world
    _, task, _ = tr.submit(request(), DSCP, maps.snapshot(NOW), NOW, max_laps=3)
    assert set(task.segments) == {"h3", "h4"}
    other = ({"h3", "h4"} - {task.heading}).pop()
    for t in (NOW + 1, NOW + 2, NOW + 3):  # everyone but `other` keeps reporting
        for n in ("h1", "h2", task.heading):
            maps.node_report(n, t, **REPORTS[n])
    maps.tick(NOW + 3)
    ev = tr.replan(f"node failure ({other})", maps.snapshot(NOW + 3), NOW + 3)
    rp = [e for e in ev if e["kind"] == "replan"]
    assert rp and other not in rp[0]["new"] and other in rp[0]["old"]


def test_meters_reserve_the_hop_bandwidth(world):
    _, fabric, maps, _ = world
    tr = TaskTracker(fabric, get_policy("greedy"), reserve_mbps=20)
    _, task, _ = tr.submit(request(), DSCP, maps.snapshot(NOW), NOW, max_laps=3)
    meters = tr.wanted_meters()
    hop_switches = {fabric.switches[n] for n in task.paths["hop"] if n.startswith("s")}
    assert {m.dpid for m in meters} == hop_switches
    assert all(m.rate_kbps == 20_000 for m in meters)
    metered = [f for f in tr.wanted_flows() if f.meter]
    assert metered and {f.meter for f in metered} == {m.meter_id for m in meters}


def test_infeasible_request_starts_nothing(world):
    _, _, maps, tr = world
    a, task, ev = tr.submit(request(required_labels=(11,)), DSCP, maps.snapshot(NOW), NOW, max_laps=3)
    assert not a.feasible and task is None and tr.wanted_flows() == set()
    assert any("11" in r for r in a.reasons)


def test_estimate_vs_actual():
    e = estimate_vs_actual({"est_seconds": 10.0, "est_bytes": 1000, "expected_accuracy": 0.8}, 12.0, 900, 0.85)
    assert e["seconds_ratio"] == 1.2 and e["bytes_ratio"] == 0.9 and e["actual_accuracy"] == 0.85
    assert estimate_vs_actual(None, 1, 1, 1) is None


def test_bandwidth_change_moves_the_hop_to_the_now_faster_path(world):
    _, fabric, maps, tr = world
    _, task, _ = tr.submit(request(), DSCP, maps.snapshot(NOW), NOW, max_laps=3)
    assert task.paths["hop"] == ["h1", "s1", "s2", "s3", task.heading]
    maps.set_capacity("s1", "s2", 0.5, NOW + 1, source="api")  # the fast way is now the slowest
    ev = tr.replan("bandwidth change (s1-s2)", maps.snapshot(NOW + 1), NOW + 1)
    moved, = [e for e in ev if e["kind"] == "flows_moved"]
    assert moved["new"]["hop"] == ["h1", "s1", "s3", task.heading]
    pkt = {"eth_type": 0x0800, "ipv4_src": fabric.hosts["h1"].ip,
           "ipv4_dst": fabric.hosts[task.heading].ip, "ip_dscp": DSCP}
    assert aiflows.walk(sorted(tr.wanted_flows(), key=str), fabric, "h1", pkt) == moved["new"]["hop"]


def test_a_node_that_joins_is_added_by_the_replan():
    topo = slow_triangle()
    fabric = fabric_of(topo)
    maps = NetworkMaps(report_interval_s=1.0)
    maps.set_links([LinkInfo(a, None if a.startswith("h") else ap, b, None if b.startswith("h") else bp,
                             ln.bw_mbit, None) for ln, (a, ap, b, bp) in zip(topo.links, plan_ports(topo))])
    for n in ("h1", "h2", "h3"):  # h4 has not reported yet
        maps.node_report(n, NOW, **REPORTS[n])
    tr = TaskTracker(fabric, get_policy("naive"))  # naive visits every usable data node
    a, task, _ = tr.submit(request(target_accuracy=0.3), DSCP, maps.snapshot(NOW), NOW, max_laps=3)
    assert task is not None and task.segments == ["h3"], a.reasons
    events = maps.node_report("h4", NOW + 1, **REPORTS["h4"])
    assert [e["kind"] for e in events] == ["node_joined"]
    ev = tr.replan("node joined (h4)", maps.snapshot(NOW + 1), NOW + 1)
    rp, = [e for e in ev if e["kind"] == "replan"]
    assert "h4" in rp["new"] and rp["old"] == ["h3"] and rp["cause"] == "node joined (h4)"
    ans, _ = tr.hop_request(1, "h3", None, maps.snapshot(NOW + 2), NOW + 2)
    assert ans["next"] == "h4"


def test_a_replan_that_keeps_the_plan_is_recorded_too(world):
    """A change that does not alter the plan is still answered with a re-plan, recorded
    as replan_kept (with its cause), and does not count as a re-plan of the task."""
    _, _, maps, tr = world
    _, task, _ = tr.submit(request(), DSCP, maps.snapshot(NOW), NOW, max_laps=3)
    stops = list(task.segments)
    ev = tr.replan("node joined (h9)", maps.snapshot(NOW + 1), NOW + 1)
    kept = [e for e in ev if e["kind"] == "replan_kept"]
    assert kept and kept[0]["cause"] == "node joined (h9)" and kept[0]["stops"] == stops
    assert not [e for e in ev if e["kind"] == "replan"] and task.replans == 0
