"""Unit tests for controllers.maps: the DCC's DRRT/QRRT maps, fed by hand with explicit times."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from controllers.maps import LinkInfo, MapsError, NetworkMaps

IV = 1.0  # report interval, s


def line_maps(**kw) -> NetworkMaps:
    """h1 - s1 =(port 2 / port 2)= s2 - h2, 100 Mbit/s host links, 50 Mbit/s core, 5 ms delay."""
    m = NetworkMaps(report_interval_s=IV, **kw)
    m.set_links([LinkInfo("h1", None, "s1", 1, 100.0, 1.0),
                 LinkInfo("s1", 2, "s2", 2, 50.0, 5.0),
                 LinkInfo("s2", 1, "h2", None, 100.0, 1.0)])
    return m


def link(snap, a, b):
    [row] = [r for r in snap["drrt"]["resources"]["links"] if {r["a"], r["b"]} == {a, b}]
    return row


def report(m, node, now, roles=("data",), **kw):
    return m.node_report(node, now, roles=list(roles), **kw)


# --- link load from port counters ---------------------------------------------

def test_rate_from_two_counter_samples_is_exact():
    m = line_maps()
    m.port_stats("s1", 2, 10.0, rx_bytes=0, tx_bytes=1_000_000, tx_packets=100, tx_dropped=4)
    assert link(m.snapshot(10.0), "s1", "s2")["a_to_b"]["rate_mbps"] is None  # one sample: no rate yet
    m.port_stats("s1", 2, 12.0, rx_bytes=500_000, tx_bytes=6_000_000, tx_packets=300, tx_dropped=10)
    d = link(m.snapshot(12.5), "s1", "s2")["a_to_b"]
    assert d["rate_mbps"] == pytest.approx(5_000_000 * 8 / 2 / 1e6)  # 20 Mbit/s
    assert d["packets_per_s"] == pytest.approx(100.0)
    assert d["dropped_per_s"] == pytest.approx(3.0)
    assert d["age_s"] == pytest.approx(0.5)


def test_utilisation_and_available_with_known_capacity():
    m = line_maps()
    m.port_stats("s1", 2, 0.0, rx_bytes=0, tx_bytes=0)
    m.port_stats("s1", 2, 1.0, rx_bytes=0, tx_bytes=5_000_000)  # 40 Mbit/s on a 50 Mbit/s link
    d = link(m.snapshot(1.0), "s1", "s2")["a_to_b"]
    assert d["utilisation"] == pytest.approx(0.8)
    assert d["available_mbps"] == pytest.approx(10.0)
    m.port_stats("s1", 2, 2.0, rx_bytes=0, tx_bytes=5_000_000 + 7_500_000)  # 60 Mbit/s: over capacity
    d = link(m.snapshot(2.0), "s1", "s2")["a_to_b"]
    assert d["utilisation"] == pytest.approx(1.2)
    assert d["available_mbps"] == 0.0


def test_unknown_capacity_gives_rate_but_no_utilisation():
    m = NetworkMaps(report_interval_s=IV)
    m.set_links([LinkInfo("s1", 1, "s2", 1)])
    m.port_stats("s1", 1, 0.0, rx_bytes=0, tx_bytes=0)
    m.port_stats("s1", 1, 1.0, rx_bytes=0, tx_bytes=125_000)
    row = link(m.snapshot(1.0), "s1", "s2")
    assert row["capacity_source"] == "unknown"
    assert row["a_to_b"]["rate_mbps"] == pytest.approx(1.0)
    assert row["a_to_b"]["utilisation"] is None and row["a_to_b"]["available_mbps"] is None


def test_capacity_change_is_reflected_immediately_both_directions():
    m = line_maps()
    for t, tx in ((0.0, 0), (1.0, 2_500_000)):  # 20 Mbit/s each way
        m.port_stats("s1", 2, t, rx_bytes=0, tx_bytes=tx)
        m.port_stats("s2", 2, t, rx_bytes=0, tx_bytes=tx)
    [ev] = m.set_capacity("s2", "s1", 25.0, 1.5, source="reshaped")
    assert ev["kind"] == "capacity_changed" and ev["old_mbps"] == 50.0 and ev["new_mbps"] == 25.0
    row = link(m.snapshot(1.5), "s1", "s2")
    assert row["capacity_mbps"] == 25.0 and row["capacity_source"] == "reshaped"
    for d in (row["a_to_b"], row["b_to_a"]):
        assert d["utilisation"] == pytest.approx(0.8)
        assert d["available_mbps"] == pytest.approx(5.0)
    assert m.set_capacity("s1", "s2", 25.0, 2.0, source="reshaped") == []  # no change, no event
    with pytest.raises(MapsError, match="no link s1-s9"):
        m.set_capacity("s1", "s9", 10.0, 2.0)


def test_counter_reset_restarts_from_that_sample():
    m = line_maps()
    m.port_stats("s1", 2, 0.0, rx_bytes=0, tx_bytes=1_000_000)
    m.port_stats("s1", 2, 1.0, rx_bytes=0, tx_bytes=2_250_000)  # 10 Mbit/s
    m.port_stats("s1", 2, 2.0, rx_bytes=0, tx_bytes=100)  # port re-created: counters restart
    d = link(m.snapshot(2.0), "s1", "s2")["a_to_b"]
    assert d["rate_mbps"] == pytest.approx(10.0) and d["age_s"] == pytest.approx(1.0)  # old rate, ageing
    m.port_stats("s1", 2, 4.0, rx_bytes=0, tx_bytes=100 + 1_250_000)  # 5 Mbit/s since the reset
    d = link(m.snapshot(4.0), "s1", "s2")["a_to_b"]
    assert d["rate_mbps"] == pytest.approx(5.0) and d["age_s"] == 0.0


def test_duplicate_and_reordered_timestamps_are_ignored():
    m = line_maps()
    m.port_stats("s1", 2, 0.0, rx_bytes=0, tx_bytes=0)
    m.port_stats("s1", 2, 1.0, rx_bytes=0, tx_bytes=1_250_000)  # 10 Mbit/s
    m.port_stats("s1", 2, 1.0, rx_bytes=0, tx_bytes=9_999_999)  # same time: no division by zero
    m.port_stats("s1", 2, 0.5, rx_bytes=0, tx_bytes=1)  # late reply
    m.port_stats("s1", 2, 2.0, rx_bytes=0, tx_bytes=2_500_000)
    assert link(m.snapshot(2.0), "s1", "s2")["a_to_b"]["rate_mbps"] == pytest.approx(10.0)


def test_direction_mapping_via_host_and_switch_ends():
    m = line_maps()
    # s1 port 1 faces h1: its rx is h1 -> s1, its tx is s1 -> h1
    m.port_stats("s1", 1, 0.0, rx_bytes=0, tx_bytes=0)
    m.port_stats("s1", 1, 1.0, rx_bytes=1_250_000, tx_bytes=250_000)
    # s2 port 1 faces h2 (link given as s2 -> h2)
    m.port_stats("s2", 1, 0.0, rx_bytes=0, tx_bytes=0)
    m.port_stats("s2", 1, 1.0, rx_bytes=500_000, tx_bytes=3_750_000)
    # core: s1->s2 from s1's tx, s2->s1 from s2's tx (not from the receiving port)
    m.port_stats("s1", 2, 0.0, rx_bytes=0, tx_bytes=0)
    m.port_stats("s1", 2, 1.0, rx_bytes=999_999_999, tx_bytes=625_000)
    m.port_stats("s2", 2, 0.0, rx_bytes=0, tx_bytes=0)
    m.port_stats("s2", 2, 1.0, rx_bytes=0, tx_bytes=125_000)
    snap = m.snapshot(1.0)
    h1 = link(snap, "h1", "s1")
    assert (h1["a"], h1["b"]) == ("h1", "s1")
    assert h1["a_to_b"]["rate_mbps"] == pytest.approx(10.0)  # h1 -> s1 = rx of s1:1
    assert h1["b_to_a"]["rate_mbps"] == pytest.approx(2.0)  # s1 -> h1 = tx of s1:1
    h2 = link(snap, "s2", "h2")
    assert h2["a_to_b"]["rate_mbps"] == pytest.approx(30.0)  # s2 -> h2 = tx of s2:1
    assert h2["b_to_a"]["rate_mbps"] == pytest.approx(4.0)  # h2 -> s2 = rx of s2:1
    core = link(snap, "s1", "s2")
    assert core["a_to_b"]["rate_mbps"] == pytest.approx(5.0)
    assert core["b_to_a"]["rate_mbps"] == pytest.approx(1.0)


def test_latency_ewma_and_its_age():
    m = line_maps(ewma=0.25)
    assert link(m.snapshot(0.0), "s1", "s2")["latency_ms"] is None
    m.latency_sample("s1", "s2", 8.0, 1.0)
    m.latency_sample("s2", "s1", 4.0, 2.0)  # either order names the link
    row = link(m.snapshot(3.0), "s1", "s2")
    assert row["latency_ms"] == pytest.approx(0.25 * 4.0 + 0.75 * 8.0)  # 7.0
    assert row["latency_age_s"] == pytest.approx(1.0)
    assert row["delay_ms"] == 5.0  # configured value is reported alongside, untouched
    events = m.tick(2.0 + 10 * IV)
    assert [e["kind"] for e in events] == ["latency_expired"]
    assert link(m.snapshot(12.0), "s1", "s2")["latency_ms"] is None


# --- node reports, ages and status --------------------------------------------

def test_node_down_after_2_5_intervals_and_not_before():
    m = NetworkMaps(report_interval_s=2.0)
    [joined] = report(m, "h1", 100.0, samples=50)
    assert joined["kind"] == "node_joined" and joined["node"] == "h1"
    assert m.tick(104.99) == []  # 2.495 intervals
    assert m.snapshot(104.99)["nodes"]["h1"]["status"] == "stale"
    [down] = m.tick(105.0)
    assert down["kind"] == "node_down" and down["node"] == "h1"
    assert down["age_s"] == pytest.approx(5.0)
    assert "no report for 5.0 s" in down["reason"] and "2.5 report intervals" in down["reason"]
    assert m.tick(106.0) == []  # said once
    assert m.snapshot(106.0)["drrt"]["knowledge"]["h1"]["status"] == "down"


def test_node_up_after_returning():
    m = NetworkMaps(report_interval_s=IV)
    report(m, "h1", 0.0)
    m.tick(3.0)
    events = report(m, "h1", 4.0)
    assert [e["kind"] for e in events] == ["node_up"]
    assert events[0]["was"] == "down" and events[0]["after_s"] == pytest.approx(4.0)
    assert m.snapshot(4.0)["nodes"]["h1"]["status"] == "fresh"
    assert m.snapshot(4.0)["nodes"]["h1"]["reports"] == 2
    assert report(m, "h1", 5.0) == []  # a regular report says nothing


def test_knowledge_changed_event_lists_the_changes():
    m = NetworkMaps(report_interval_s=IV)
    report(m, "h1", 0.0, samples=10, label_hist=[5, 5], load=0.1)
    assert report(m, "h1", 1.0, samples=10, label_hist=[5, 5], load=0.9) == []  # load is not knowledge
    [ev] = report(m, "h1", 2.0, roles=("mpvu", "data"), samples=12, label_hist=[5, 7])
    assert ev["kind"] == "knowledge_changed"
    assert ev["changes"] == {"roles": [["data"], ["data", "mpvu"]], "samples": [10, 12],
                             "label_hist": [[5, 5], [5, 7]]}


def test_stale_between_1_5_intervals_and_down():
    m = NetworkMaps(report_interval_s=IV)
    report(m, "h1", 0.0)
    assert m.snapshot(1.5)["nodes"]["h1"]["status"] == "fresh"
    assert m.snapshot(1.51)["nodes"]["h1"]["status"] == "stale"
    assert m.snapshot(2.5)["nodes"]["h1"]["status"] == "down"


def test_expiry_removes_entries_but_keeps_the_node_listed():
    m = line_maps()
    report(m, "h1", 0.0, roles=("data", "compute", "inference"), samples=5, capacity=2.0, models=[3])
    m.port_stats("s1", 2, 0.0, rx_bytes=0, tx_bytes=0)
    kinds = [e["kind"] for e in m.tick(10.0)]  # straight past down to expired
    assert kinds == ["node_down", "node_expired", "counters_expired"]
    snap = m.snapshot(10.0)
    assert snap["nodes"]["h1"]["status"] == "expired"
    assert snap["drrt"]["knowledge"] == {} and snap["drrt"]["resources"]["compute"] == {}
    assert snap["qrrt"]["knowledge"] == {} and snap["qrrt"]["resources"] == {}
    assert m.tick(11.0) == []
    events = report(m, "h1", 12.0, roles=("data",), samples=9)
    assert [(e["kind"], e.get("was")) for e in events] == [("node_up", "expired")]  # no stale diff
    assert m.snapshot(12.0)["drrt"]["knowledge"]["h1"]["samples"] == 9


def test_snapshot_without_tick_hides_expired_entries():
    m = NetworkMaps(report_interval_s=IV)
    report(m, "h1", 0.0)
    snap = m.snapshot(10.0)
    assert snap["nodes"]["h1"]["status"] == "expired" and snap["drrt"]["knowledge"] == {}


def test_unknown_role_is_refused_with_the_known_ones():
    m = NetworkMaps(report_interval_s=IV)
    with pytest.raises(MapsError, match="unknown role.*trainer.*known roles: data"):
        report(m, "h1", 0.0, roles=("DATA", "trainer"))
    with pytest.raises(MapsError, match="report_interval_s"):
        NetworkMaps(report_interval_s=0)


# --- snapshot, reachability, planners' view -----------------------------------

def test_snapshot_is_json_and_has_the_documented_keys():
    m = line_maps()
    report(m, "h1", 0.0, roles=("data", "compute"), samples=100, label_hist=[60, 40],
           verification_samples=0, capacity=4.0, load=0.5, queue_len=1, noise_epsilon=1.5)
    report(m, "h2", 0.0, roles=("inference", "mpvu"), models=[1, 2], service_ms=12.0,
           verification_samples=30)
    m.port_stats("s1", 2, 0.0, rx_bytes=0, tx_bytes=0)
    m.port_stats("s1", 2, 1.0, rx_bytes=0, tx_bytes=10)
    snap = m.snapshot(1.0)
    assert json.loads(json.dumps(snap, allow_nan=False)) == snap
    assert set(snap) == {"t", "report_interval_s", "drrt", "qrrt", "nodes"}
    assert set(snap["drrt"]) == set(snap["qrrt"]) == {"knowledge", "resources", "reachability"}
    assert set(snap["drrt"]["knowledge"]) == {"h1", "h2"}
    assert set(snap["drrt"]["knowledge"]["h1"]) == {"roles", "samples", "label_hist", "noise_epsilon",
                                                   "verification_samples", "age_s", "status"}
    assert snap["drrt"]["knowledge"]["h1"]["noise_epsilon"] == 1.5
    assert set(snap["drrt"]["resources"]) == {"compute", "links"}
    assert set(snap["drrt"]["resources"]["compute"]) == {"h1"}
    assert set(snap["drrt"]["resources"]["compute"]["h1"]) == {"capacity", "load", "queue_len",
                                                               "age_s", "status"}
    row = link(snap, "s1", "s2")
    assert set(row) == {"a", "b", "a_port", "b_port", "capacity_mbps", "capacity_source", "up",
                        "delay_ms", "latency_ms", "latency_age_s", "a_to_b", "b_to_a"}
    assert set(row["a_to_b"]) == set(row["b_to_a"]) == {"rate_mbps", "utilisation", "available_mbps",
                                                        "packets_per_s", "dropped_per_s", "age_s"}
    assert snap["qrrt"]["knowledge"] == {"h2": {"models": [1, 2], "age_s": 1.0, "status": "fresh"}}
    assert set(snap["qrrt"]["resources"]["h2"]) == {"load", "queue_len", "service_ms", "age_s", "status"}
    assert snap["qrrt"]["reachability"] == snap["drrt"]["reachability"]
    assert set(snap["drrt"]["reachability"]) == {"up_links", "down_links", "components",
                                                 "main_component", "hosts_reachable"}
    assert set(snap["nodes"]["h2"]) == {"roles", "last_report_t", "age_s", "status", "reports"}
    assert snap["nodes"]["h2"]["roles"] == ["mpvu", "inference"]  # canonical role order


def test_reachability_components_when_a_link_goes_down():
    m = line_maps()
    reach = m.snapshot(0.0)["drrt"]["reachability"]
    assert reach["components"] == [["h1", "h2", "s1", "s2"]]
    assert reach["up_links"] == 3 and reach["down_links"] == []
    assert reach["hosts_reachable"] == {"h1": True, "h2": True}
    [ev] = m.link_state("s2", "s1", False, 5.0, cause="lldp_timeout")
    assert (ev["kind"], ev["a"], ev["b"], ev["cause"]) == ("link_down", "s1", "s2", "lldp_timeout")
    assert m.link_state("s1", "s2", False, 5.5) == []  # already down
    reach = m.snapshot(6.0)["drrt"]["reachability"]
    assert reach["components"] == [["h1", "s1"], ["h2", "s2"]]
    assert reach["down_links"] == [{"a": "s1", "b": "s2", "cause": "lldp_timeout", "down_for_s": 1.0}]
    assert reach["up_links"] == 2
    # one host on each side, one switch each: the tie goes to the first component
    assert reach["main_component"] == 0 and reach["hosts_reachable"] == {"h1": True, "h2": False}
    assert link(m.snapshot(6.0), "s1", "s2")["up"] is False
    [ev] = m.link_state("s1", "s2", True, 7.0, cause="lldp")
    assert ev["kind"] == "link_up"
    assert m.snapshot(7.0)["drrt"]["reachability"]["components"] == [["h1", "h2", "s1", "s2"]]


def test_link_configured_down_and_unconfigured_link_discovered():
    m = NetworkMaps(report_interval_s=IV)
    m.set_links([LinkInfo("s1", 1, "s2", 1, up=False), LinkInfo("h1", None, "s1", 2)])
    assert m.snapshot(0.0)["drrt"]["reachability"]["components"] == [["h1", "s1"], ["s2"]]
    [ev] = m.link_state("s2", "s3", True, 1.0, cause="lldp")
    assert ev["configured"] is False
    assert m.link_state("s4", "s5", False, 1.0) == []  # never known: nothing goes down
    reach = m.snapshot(1.0)["drrt"]["reachability"]
    assert reach["components"] == [["h1", "s1"], ["s2", "s3"]]  # equal sizes: by first name
    assert reach["main_component"] == 0 and reach["hosts_reachable"] == {"h1": True}


def test_alive_nodes_filters_by_role_and_status():
    m = NetworkMaps(report_interval_s=IV)
    report(m, "h1", 0.0, roles=("data",), samples=10, label_hist=[10])
    report(m, "h2", 2.0, roles=("data", "mpvu"), samples=20)
    report(m, "h3", 2.0, roles=("inference",), models=[4])
    report(m, "h4", 3.0, roles=("data",), samples=30)
    alive = m.alive_nodes("data", 3.0)  # h1 is down (3 intervals old); h2 and h4 are fresh
    assert sorted(alive) == ["h2", "h4"]
    assert alive["h4"]["samples"] == 30 and alive["h4"]["status"] == "fresh"
    assert m.alive_nodes("data", 3.6)["h2"]["status"] == "stale"
    assert sorted(m.alive_nodes("mpvu", 3.0)) == ["h2"]
    assert m.alive_nodes("inference", 3.0)["h3"]["models"] == [4]
    with pytest.raises(MapsError, match="unknown role"):
        m.alive_nodes("oracle", 3.0)


def test_module_is_pure_policy():
    """No os_ken, no mininet, no clock: the DCC app and tests feed it."""
    code = ("import sys, controllers.maps as m; "
            "print([k for k in sys.modules if k.split('.')[0] in ('os_ken', 'mininet')]); "
            "print('time' in vars(m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split("\n")
    assert out[:2] == ["[]", "False"]
