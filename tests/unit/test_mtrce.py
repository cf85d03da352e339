"""Unit tests for the MTRCE policies (controllers/mtrce.py) on hand-built DRRT snapshots."""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controllers.maps import LinkInfo, NetworkMaps
from controllers.mtrce import (MAX_STOPS, POLICIES, GreedyCoveragePerCost, Plan, SearchPolicy,
                               TrainingRequest, cost_itinerary, get_policy)
from controllers.tfam import CostModel, expected_accuracy

ROOT = Path(__file__).resolve().parents[2]
# Fixed numbers, so the tests do not move when the calibrated defaults do.
COST = CostModel(train_s_per_sample_epoch=1e-3, verify_s=0.01, acc_max=0.9, acc_samples_scale=800.0)
ALL = list(range(10))


# ---- snapshot builder ------------------------------------------------------------------------
def is_switch(n: str) -> bool:
    return re.fullmatch(r"s[1-9][0-9]*", n) is not None


def link(a, b, mbps=100.0, delay_ms=1.0, *, up=True, avail=None, avail_back=None, latency_ms=None):
    """One DRRT link row (maps.py docstring shape). ``avail``/``avail_back``: measured
    available Mbit/s a->b / b->a (None: not measured)."""
    def direction(av):
        used = None if av is None or mbps is None else mbps - av
        return {"rate_mbps": used, "utilisation": None if used is None else used / mbps,
                "available_mbps": av, "packets_per_s": None if av is None else 10.0,
                "dropped_per_s": None if av is None else 0.0, "age_s": None if av is None else 0.5}
    return {"a": a, "b": b, "a_port": 1 if is_switch(a) else None, "b_port": 2 if is_switch(b) else None,
            "capacity_mbps": mbps, "capacity_source": "config" if mbps is not None else "unknown",
            "up": up, "delay_ms": delay_ms, "latency_ms": latency_ms, "latency_age_s": None,
            "a_to_b": direction(avail), "b_to_a": direction(avail_back)}


def data(samples, labels=ALL, *, capacity=1.0, load=0.0, queue_len=0, status="fresh", n_classes=10):
    """A data node's report: ``samples`` spread evenly over ``labels``."""
    hist = [0] * n_classes
    for i, lab in enumerate(labels):
        hist[lab] = samples // len(labels) + (1 if i < samples % len(labels) else 0)
    return {"samples": samples, "hist": hist, "capacity": capacity, "load": load,
            "queue_len": queue_len, "status": status}


def snapshot_of(links, data_nodes, *, mpvus=("h9",), mpvu_status="fresh", clients=("h1",), now=100.0):
    """A NetworkMaps.snapshot()-shaped dict from link rows and {node: data(...)}."""
    ages = {"fresh": 1.0, "stale": 4.0, "down": 7.0}
    know, compute, nodes = {}, {}, {}
    for n, d in data_nodes.items():
        know[n] = {"roles": ["data"], "samples": d["samples"], "label_hist": list(d["hist"]),
                   "noise_epsilon": None, "verification_samples": 0, "age_s": ages[d["status"]],
                   "status": d["status"]}
        if d["capacity"] > 0:
            compute[n] = {"capacity": d["capacity"], "load": d["load"], "queue_len": d["queue_len"],
                          "age_s": ages[d["status"]], "status": d["status"]}
    for m in mpvus:
        know[m] = {"roles": ["mpvu"], "samples": 0, "label_hist": [], "noise_epsilon": None,
                   "verification_samples": 450, "age_s": ages[mpvu_status], "status": mpvu_status}
    for n in [*clients, *know]:
        roles = know[n]["roles"] if n in know else ["client"]
        st_ = know[n]["status"] if n in know else "fresh"
        nodes[n] = {"roles": roles, "last_report_t": now - ages[st_], "age_s": ages[st_],
                    "status": st_, "reports": 10}
    g = nx.Graph()
    for row in links:
        g.add_nodes_from([row["a"], row["b"]])
        if row["up"]:
            g.add_edge(row["a"], row["b"])
    g.add_nodes_from(nodes)
    comps = sorted((sorted(c) for c in nx.connected_components(g)), key=lambda c: -len(c))
    reach = {"up_links": sum(r["up"] for r in links),
             "down_links": [{"a": r["a"], "b": r["b"], "cause": "test", "down_for_s": 1.0}
                            for r in links if not r["up"]],
             "components": comps, "main_component": 0 if comps else None,
             "hosts_reachable": {h: h in comps[0] for h in g if not is_switch(h)}}
    return {"t": now, "report_interval_s": 2.0,
            "drrt": {"knowledge": know, "resources": {"compute": compute, "links": links},
                     "reachability": reach},
            "qrrt": {"knowledge": {}, "resources": {}, "reachability": reach},
            "nodes": nodes}


def req(**kw) -> TrainingRequest:
    base = dict(task_id=7, client="h1", model_bytes=20_000, target_accuracy=0.8, deadline_s=600.0)
    return TrainingRequest(**{**base, **kw})


def line(n_switches=4, mbps=100.0, delay_ms=5.0):
    """s1 - s2 - ... - sn; h1 (client) and h9 (MPVU) on s1, h(i+1) on s(i)."""
    links = [link(f"s{i}", f"s{i + 1}", mbps, delay_ms) for i in range(1, n_switches)]
    links += [link("h1", "s1", 1000.0, 0.1), link("h9", "s1", 1000.0, 0.1)]
    links += [link(f"h{i + 1}", f"s{i}", 1000.0, 0.1) for i in range(1, n_switches + 1)]
    return links


def plan(policy, r, snap, cost=COST):
    return get_policy(policy).plan(r, snap, snap["t"], cost)


def up_edges(snap) -> set[frozenset]:
    return {frozenset((r["a"], r["b"])) for r in snap["drrt"]["resources"]["links"] if r["up"]}


def check_hop(h, snap, src, dst):
    assert h.src == src and h.dst == dst
    assert h.path[0] == src and h.path[-1] == dst
    ups = up_edges(snap)
    for a, b in zip(h.path, h.path[1:]):
        assert frozenset((a, b)) in ups, f"{a}-{b} of {h.path} is not an up link"
    assert all(is_switch(n) for n in h.path[1:-1]), f"a host forwards in {h.path}"


def parts(p: Plan) -> tuple[float, int]:
    """Seconds and bytes of a plan added up from its stops and hops (independently of legs())."""
    k, laps, end = len(p.stops), p.laps, p.end_after
    s = b = 0
    for lap in range(1, laps + 1):
        for i, stop in enumerate(p.stops[: end if lap == laps else k]):
            hop = stop.hop if lap == 1 or i else p.lap_hop
            s += hop.est_seconds + stop.est_train_s + stop.est_verify_s + (stop.est_wait_s if lap == 1 else 0)
            b += hop.bytes + (stop.verify_hop.bytes if stop.verify_hop else 0)
    if p.return_hop:
        s += p.return_hop.est_seconds
        b += p.return_hop.bytes
    return s, b


# ---- policies -----------------------------------------------------------------------------------
def test_get_policy_knows_three_and_names_them_on_a_typo():
    assert {n: type(get_policy(n)).name for n in POLICIES} == {"greedy": "greedy", "search": "search",
                                                               "naive": "naive"}
    with pytest.raises(ValueError, match="greedy, naive, search"):
        get_policy("gredy")


def test_greedy_covers_required_labels_even_when_the_target_needs_less():
    # h2 next door reaches the target alone; only far h5 holds labels 8 and 9
    snap = snapshot_of(line(), {"h2": data(3000, range(8)), "h5": data(50, [8, 9])})
    free = plan("greedy", req(target_accuracy=0.5), snap)
    assert free.itinerary() == ["h2"] and free.feasible
    p = plan("greedy", req(target_accuracy=0.5, required_labels=(8, 9)), snap)
    assert "h5" in p.itinerary()
    assert {8, 9} <= set(p.labels_covered)
    assert p.feasible, p.reasons


def test_greedy_order_follows_coverage_per_cost_from_the_current_position():
    # every node holds labels nobody else has: the nearest first, then onwards down the line
    split = {"h2": [0, 1, 2], "h3": [3, 4, 5], "h4": [6, 7], "h5": [8, 9]}
    snap = snapshot_of(line(), {h: data(300, labels) for h, labels in split.items()})
    p = plan("greedy", req(target_accuracy=0.8), snap)
    assert p.itinerary() == ["h2", "h3", "h4", "h5"]
    # h3 moved behind a slow, long link: it has the most new labels but comes last
    links = [r for r in line() if {r["a"], r["b"]} != {"h3", "s2"}] + [link("h3", "s1", 0.5, 400.0)]
    snap = snapshot_of(links, {h: data(300, labels) for h, labels in split.items()})
    assert plan("greedy", req(target_accuracy=0.8), snap).itinerary() == ["h2", "h4", "h5", "h3"]


def test_one_nodes_data_again_and_again_beats_travel_only_while_it_is_enough():
    # all labels next door: training there lap after lap is the cheapest way to 0.85 ...
    snap = snapshot_of(line(), {"h2": data(300), "h5": data(300)})
    p = plan("greedy", req(target_accuracy=0.85), snap)
    assert p.itinerary() == ["h2"] and p.laps > 1 and p.feasible
    # ... but 20 samples seen again and again cannot get there
    snap = snapshot_of(line(), {"h2": data(20), "h5": data(300)})
    assert "h5" in plan("greedy", req(target_accuracy=0.85), snap).itinerary()


def two_regions():
    """h2 close to the client on one side (small, 8 labels), h3 and h4 far on the other (big)."""
    links = [link("h1", "s1", 1000, 0.1), link("h9", "s1", 1000, 0.1),
             link("s1", "s2", 1000, 100.0), link("h2", "s2", 1000, 0.1),
             link("s1", "s3", 1000, 300.0), link("h3", "s3", 1000, 0.1), link("h4", "s3", 1000, 0.1)]
    return snapshot_of(links, {"h2": data(300, range(8)), "h3": data(1500), "h4": data(1500)})


def test_search_is_strictly_better_than_greedy_on_a_crafted_case():
    # h2 alone cannot reach 0.82 (8 labels), so the model must go far anyway; greedy grabs
    # cheap h2 first and pays the detour, the best plan leaves h2 out
    snap = two_regions()
    r = req(target_accuracy=0.82)
    g, s = plan("greedy", r, snap), plan("search", r, snap)
    assert g.itinerary()[0] == "h2"
    assert s.itinerary() and "h2" not in s.itinerary()
    assert s.feasible and g.feasible
    assert s.est_seconds < g.est_seconds - 0.5


def brute_force(r, snap, nodes):
    best = None
    for k in range(1, len(nodes) + 1):
        for order in itertools.permutations(nodes, k):
            p = cost_itinerary(r, snap, snap["t"], list(order), COST)
            key = (not p.feasible, p.est_seconds)
            if best is None or key < best[0]:
                best = (key, p)
    return best[1]


@pytest.mark.parametrize("seed", range(6))
def test_search_matches_brute_force_and_is_no_worse_than_greedy(seed):
    import random
    rnd = random.Random(seed)
    links = [link("h1", "s1", 1000, 0.1), link("h9", f"s{rnd.randint(1, 3)}", 1000, 0.1)]
    links += [link("s1", "s2", rnd.choice([5, 50, 500]), rnd.uniform(1, 50)),
              link("s2", "s3", rnd.choice([5, 50, 500]), rnd.uniform(1, 50)),
              link("s1", "s3", rnd.choice([5, 50, 500]), rnd.uniform(1, 50))]
    nodes = ["h2", "h3", "h4", "h5"]
    dn = {}
    for h in nodes:
        links.append(link(h, f"s{rnd.randint(1, 3)}", 1000, 0.1))
        dn[h] = data(rnd.randint(100, 1200), rnd.sample(ALL, rnd.randint(3, 10)),
                     capacity=rnd.choice([0.25, 0.5, 1.0]), queue_len=rnd.randint(0, 2))
    snap = snapshot_of(links, dn)
    r = req(target_accuracy=rnd.choice([0.5, 0.7, 0.8]), model_bytes=rnd.choice([20_000, 2_000_000]))
    s, g = plan("search", r, snap), plan("greedy", r, snap)
    best = brute_force(r, snap, nodes)
    assert s.feasible == best.feasible
    assert s.est_seconds == pytest.approx(best.est_seconds, rel=1e-9)
    assert (not s.feasible, s.est_seconds) <= (not g.feasible, g.est_seconds + 1e-9)


def detour():
    """h1 - s1 - s2 - h2 over a 1 Mbit/s link (2 switch hops), or s1 - s3 - s4 - s2 at 1 Gbit/s."""
    links = [link("h1", "s1", 1000, 0.1), link("h9", "s1", 1000, 0.1), link("h2", "s2", 1000, 0.1),
             link("s1", "s2", 1.0, 1.0),
             link("s1", "s3", 1000, 1.0), link("s3", "s4", 1000, 1.0), link("s4", "s2", 1000, 1.0)]
    return snapshot_of(links, {"h2": data(1000)})


def test_naive_takes_the_fewest_hops_and_greedy_the_fastest_path():
    snap = detour()
    r = req(model_bytes=1_000_000, target_accuracy=0.6)
    n, g = plan("naive", r, snap), plan("greedy", r, snap)
    assert n.stops[0].hop.path == ["h1", "s1", "s2", "h2"]
    assert n.stops[0].hop.bottleneck_mbps == 1.0
    assert g.stops[0].hop.path == ["h1", "s1", "s3", "s4", "s2", "h2"]
    assert g.stops[0].hop.bottleneck_mbps == 1000
    assert n.stops[0].hop.est_seconds > 8 > 1 > g.stops[0].hop.est_seconds


def test_measured_available_rate_steers_the_path_per_direction():
    # the short link has capacity but is busy towards s2 only
    snap = detour()
    rows = snap["drrt"]["resources"]["links"]
    rows[3] = link("s1", "s2", 1000.0, 1.0, avail=2.0, avail_back=990.0)
    r = req(model_bytes=1_000_000, target_accuracy=0.6)
    p = plan("greedy", r, snap)
    assert p.stops[0].hop.path == ["h1", "s1", "s3", "s4", "s2", "h2"]   # around the busy direction
    assert p.return_hop.path == ["h2", "s2", "s1", "h1"]                 # the free direction back
    saturated = link("s1", "s2", 1000.0, 1.0, avail=0.0, avail_back=0.0)
    rows[3] = saturated
    rows[4] = link("s1", "s3", 1000, 1.0, up=False)
    p = plan("greedy", r, snap)
    assert p.stops[0].hop.path == ["h1", "s1", "s2", "h2"]
    assert p.stops[0].hop.bottleneck_mbps == pytest.approx(100.0)        # a 10% share assumed
    assert any("saturated" in n for n in p.stops[0].hop.notes)


def test_unknown_capacity_assumes_100_mbit_and_says_so_in_the_hop():
    links = [link("h1", "s1", None, 0.1), link("h9", "s1", None, 0.1), link("h2", "s1", None, 0.1)]
    p = plan("greedy", req(target_accuracy=0.6), snapshot_of(links, {"h2": data(2000)}))
    assert p.stops[0].hop.bottleneck_mbps == 100.0
    assert "link h1-s1: rate unknown, assumed 100 Mbit/s" in p.stops[0].hop.notes
    assert "link h1-s1: rate unknown, assumed 100 Mbit/s" in p.reasons


def test_latency_is_measured_then_configured_then_zero():
    snap = snapshot_of([link("h1", "s1", 1000, 0.0), link("h9", "s1", 1000, 0.0),
                        link("h2", "s1", 1000, 40.0, latency_ms=10.0)], {"h2": data(2000)})
    assert plan("greedy", req(target_accuracy=0.6), snap).stops[0].hop.latency_ms == 10.0
    snap["drrt"]["resources"]["links"][2]["latency_ms"] = None
    assert plan("greedy", req(target_accuracy=0.6), snap).stops[0].hop.latency_ms == 40.0
    snap["drrt"]["resources"]["links"][2]["delay_ms"] = None
    assert plan("greedy", req(target_accuracy=0.6), snap).stops[0].hop.latency_ms == 0.0


def test_naive_visits_every_usable_node_in_a_task_seeded_order():
    snap = snapshot_of(line(), {h: data(300) for h in ("h2", "h3", "h4", "h5")})
    orders = {tuple(plan("naive", req(task_id=t), snap).itinerary()) for t in range(12)}
    assert all(sorted(o) == ["h2", "h3", "h4", "h5"] for o in orders)
    assert len(orders) > 3
    assert plan("naive", req(task_id=3), snap).itinerary() == plan("naive", req(task_id=3), snap).itinerary()


def test_naive_caps_the_itinerary_at_what_the_wire_can_carry():
    links = [link("h1", "s1", 1000, 0.1), link("h9", "s1", 1000, 0.1)]
    links += [link(f"h{i}", "s1", 1000, 0.1) for i in range(10, 140)]
    p = plan("naive", req(target_accuracy=0.99), snapshot_of(links, {f"h{i}": data(20) for i in range(10, 140)}))
    assert len(p.stops) == MAX_STOPS
    assert f"naive visits the first {MAX_STOPS} of 130 data nodes (an itinerary holds at most {MAX_STOPS})" in p.reasons


# ---- feasibility -------------------------------------------------------------------------------
def test_labels_held_by_nobody_reachable():
    snap = snapshot_of(line(), {"h2": data(2000, range(7)), "h3": data(2000, [8])})
    p = plan("greedy", req(required_labels=(7, 8, 9)), snap)
    assert not p.feasible
    assert p.reasons[0] == "labels 7 and 9 are held by no reachable data node"
    assert p.stops, "an infeasible answer still carries the best plan"


def test_deadline_exceeded():
    # one stop, training 4100 samples at 0.1 s each: about 410 s
    snap = snapshot_of([link("h1", "s1", 1000, 0.0), link("h9", "s1", 1000, 0.0),
                        link("h2", "s1", 1000, 0.0)], {"h2": data(4100)})
    cost = CostModel(train_s_per_sample_epoch=0.1, verify_s=0.0, acc_max=0.9, acc_samples_scale=800.0)
    p = get_policy("greedy").plan(req(deadline_s=300.0), snap, 100.0, cost)
    assert 410 <= p.est_seconds < 410.5
    assert not p.feasible
    assert p.reasons[0] == "estimated 410 s exceeds the deadline of 300 s"
    assert get_policy("greedy").plan(req(deadline_s=420.0), snap, 100.0, cost).feasible
    assert "the deadline has passed" in get_policy("greedy").plan(req(deadline_s=-1.0), snap, 100.0, cost).reasons


def test_byte_budget():
    # client -> h2, h2 -> MPVU, h2 -> client: three transfers of about 4.03 MB
    snap = snapshot_of(line(), {"h2": data(3000)})
    r = req(model_bytes=4_030_000, target_accuracy=0.6, byte_budget=5_000_000)
    p = plan("greedy", r, snap)
    assert p.est_bytes == 3 * COST.transfer_bytes(4_030_000)
    assert not p.feasible
    assert p.reasons[0] == "the plan moves 12.1 MB, over the byte budget of 5 MB"
    assert plan("greedy", req(model_bytes=4_030_000, target_accuracy=0.6, byte_budget=13_000_000), snap).feasible


def test_search_keeps_to_the_byte_budget_when_greedy_does_not():
    # greedy takes near h2 then far h3; two laps on h3 alone move fewer bytes
    links = [link("h1", "s1", 1000, 0.1), link("h9", "s2", 1000, 0.1), link("s1", "s2", 1000, 1.0),
             link("h2", "s1", 1000, 0.1), link("h3", "s2", 1000, 0.1)]
    snap = snapshot_of(links, {"h2": data(400), "h3": data(1000)})
    t = COST.transfer_bytes(20_000)
    r = req(target_accuracy=0.75, byte_budget=5 * t)
    s = plan("search", r, snap)
    assert s.feasible, s.reasons
    assert s.est_bytes <= 5 * t


def test_no_mpvu_is_up():
    snap = snapshot_of(line(), {"h2": data(3000)}, mpvu_status="down")
    p = plan("greedy", req(target_accuracy=0.6), snap)
    assert not p.feasible and p.reasons[0] == "no MPVU is up"
    assert p.mpvu is None and p.stops[0].verify_hop is None
    named = plan("greedy", req(target_accuracy=0.6, mpvu="h9"), snap)
    assert named.reasons[0] == "MPVU h9 is down"


def test_client_cannot_reach_any_data_node():
    links = line()
    links[3] = link("h1", "s1", 1000.0, 0.1, up=False)
    p = plan("greedy", req(), snapshot_of(links, {"h2": data(3000), "h3": data(100)}))
    assert not p.feasible and p.stops == []
    assert "client h1 is on no up link in the maps" in p.reasons
    links.append(link("h1", "s9", 1000.0, 0.1))
    p = plan("greedy", req(), snapshot_of(links, {"h2": data(3000), "h3": data(100)}))
    assert p.reasons[0] == "client h1 cannot reach any data node"
    assert "h2 cannot be reached from h1" in p.reasons


def test_accuracy_stays_below_target_after_max_laps():
    # 8 of 10 labels: the expected ceiling is 0.9 * 0.8 = 0.72
    snap = snapshot_of(line(), {"h2": data(1000, range(8))})
    p = plan("greedy", req(target_accuracy=0.85), snap)
    assert not p.feasible
    assert p.reasons[0] == "expected accuracy 0.72 after 10 laps stays below the target 0.85"
    assert p.laps == 10


def test_laps_are_the_fewest_that_reach_the_target():
    snap = snapshot_of(line(), {"h2": data(300), "h3": data(300)})
    p = plan("greedy", req(target_accuracy=0.8), snap)
    per_lap = 600
    laps = next(L for L in range(1, 11) if expected_accuracy(L * per_lap, 1.0, COST, distinct=600) >= 0.8)
    assert laps > 1 and p.laps == laps
    done = (laps - 1) * per_lap + 300 * p.end_after
    assert expected_accuracy(done, 1.0, COST, distinct=600) >= 0.8 > expected_accuracy(done - 300, 1.0, COST,
                                                                                       distinct=600)
    assert p.expected_accuracy == expected_accuracy(done, 1.0, COST, distinct=600)
    assert p.lap_hop.src == p.stops[-1].node and p.lap_hop.dst == p.stops[0].node
    assert p.return_hop.src == p.stops[p.end_after - 1].node and p.return_hop.dst == "h1"


def test_excluded_down_empty_and_computeless_nodes_are_skipped_with_reasons():
    dn = {"h2": data(500), "h3": data(500), "h4": data(500, capacity=0.0), "h5": data(500, status="down")}
    dn["h3"]["samples"] = 0
    links = line(5)
    snap = snapshot_of(links, {**dn, "h6": data(500)})
    p = plan("greedy", req(exclude=frozenset({"h6"}), target_accuracy=0.85), snap)
    assert p.itinerary() == ["h2"]
    for reason in ("h3 reports no samples", "h4 holds data but has no compute",
                   "h5 is down (no report for 7 s)", "h6 is excluded by the request"):
        assert reason in p.reasons


def test_start_is_honoured_when_replanning():
    snap = snapshot_of(line(), {h: data(300) for h in ("h2", "h3", "h4", "h5")})
    fresh = plan("greedy", req(target_accuracy=0.6), snap)
    again = plan("greedy", req(target_accuracy=0.6, start="h5"), snap)
    assert fresh.stops[0].hop.src == "h1" and fresh.itinerary()[0] == "h2"
    assert again.stops[0].hop.src == "h5" and again.itinerary()[0] == "h5"
    assert again.stops[0].hop.path == ["h5"] and again.stops[0].hop.bytes == 0
    assert again.return_hop.dst == "h1"
    # the MPVU at the far end too: from h5 the next stop is h4, from the client h2
    links = [r for r in line() if {r["a"], r["b"]} != {"h9", "s1"}] + [link("h9", "s4", 1000, 0.1)]
    snap = snapshot_of(links, {h: data(300, range(9)) for h in ("h2", "h3", "h4", "h5")})
    moved = plan("greedy", req(target_accuracy=0.6, start="h5", exclude=frozenset({"h5"})), snap)
    assert moved.stops[0].hop.src == "h5" and moved.itinerary()[0] == "h4"
    assert moved.stops[0].hop.path == ["h5", "s4", "s3", "h4"]


def test_load_and_capacity_slow_a_stop_down():
    snap = snapshot_of(line(), {"h2": data(1000), "h3": data(1000, capacity=0.5, queue_len=2, load=1.0)})
    p = plan("naive", req(target_accuracy=0.89), snap)
    s = {x.node: x for x in p.stops}
    assert s["h3"].est_train_s == pytest.approx(2 * s["h2"].est_train_s)
    assert s["h3"].est_wait_s == pytest.approx(2.5 * s["h3"].est_train_s)
    assert s["h2"].est_wait_s == 0


# ---- properties of every plan ------------------------------------------------------------------
def test_same_input_gives_the_same_plan():
    snap = two_regions()
    for name in POLICIES:
        a, b = (plan(name, req(target_accuracy=0.82), snap).to_dict() for _ in range(2))
        assert a.pop("planning_ms") > 0 and b.pop("planning_ms") > 0
        assert a == b


def test_the_plan_does_not_depend_on_hash_seeds():
    code = ("import json, sys; sys.path[:0] = ['tests/unit', '.']; import test_mtrce as t;"
            "print(json.dumps({n: t.plan(n, t.req(target_accuracy=0.8), t.snapshot_of(t.line(),"
            " {h: t.data(300, t.ALL[i:] + t.ALL[:i]) for i, h in enumerate(['h2','h3','h4','h5'])}))"
            ".itinerary() for n in t.POLICIES}))")
    outs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2, 3)}
    assert len(outs) == 1


def test_plan_json_round_trip():
    snap = snapshot_of(line(), {"h2": data(300), "h3": data(300, [1, 2])})
    for name in POLICIES:
        p = plan(name, req(target_accuracy=0.8, byte_budget=10), snap)
        d = json.loads(json.dumps(p.to_dict()))
        assert d == p.to_dict()
        assert Plan.from_dict(d) == p


def test_a_real_networkmaps_snapshot_plans():
    maps = NetworkMaps(report_interval_s=2.0)
    maps.set_links([LinkInfo("s1", 1, "s2", 1, 10.0, 5.0), LinkInfo("h1", None, "s1", 2),
                    LinkInfo("h2", None, "s2", 2), LinkInfo("h3", None, "s2", 3), LinkInfo("h9", None, "s1", 3)])
    maps.port_stats("s1", 1, 0.0, rx_bytes=0, tx_bytes=0)
    maps.port_stats("s1", 1, 1.0, rx_bytes=0, tx_bytes=1_000_000)  # 8 of 10 Mbit/s used s1 -> s2
    maps.node_report("h1", 1.0, roles=["client"])
    maps.node_report("h2", 1.0, roles=["data"], samples=600, label_hist=[60] * 10, capacity=1.0)
    maps.node_report("h3", 1.0, roles=["data"], samples=600, label_hist=[60] * 10)
    maps.node_report("h9", 1.0, roles=["mpvu"], verification_samples=450)
    snap = maps.snapshot(2.0)
    p = GreedyCoveragePerCost().plan(req(target_accuracy=0.6), snap, 2.0, COST)
    assert p.feasible, p.reasons
    assert p.itinerary() == ["h2"] and p.mpvu == "h9"
    assert p.stops[0].hop.bottleneck_mbps == pytest.approx(2.0)
    assert p.return_hop.bottleneck_mbps == 10.0
    assert "h3 holds data but has no compute" in p.reasons


@st.composite
def small_networks(draw):
    n_sw = draw(st.integers(1, 4))
    sw = [f"s{i}" for i in range(1, n_sw + 1)]
    links = []
    for i in range(1, n_sw):  # a random tree, then extra links
        links.append(link(sw[draw(st.integers(0, i - 1))], sw[i], draw(st.sampled_from([1.0, 10.0, 100.0, None])),
                          draw(st.floats(0, 50)), up=draw(st.booleans()) or draw(st.booleans())))
    for a, b in itertools.combinations(sw, 2):
        if draw(st.integers(0, 3)) == 0 and not any({a, b} == {r["a"], r["b"]} for r in links):
            links.append(link(a, b, draw(st.sampled_from([1.0, 100.0])), draw(st.floats(0, 20)),
                              avail=draw(st.sampled_from([None, 0.0, 0.5, 50.0]))))
    hosts = ["h1", "h9"] + [f"h{i}" for i in range(2, 2 + draw(st.integers(1, 5)))]
    for h in hosts:
        links.append(link(h, draw(st.sampled_from(sw)), 1000.0, 0.1, up=draw(st.integers(0, 9)) > 0))
    if draw(st.booleans()):  # a multi-homed host: it must never forward
        links.append(link(hosts[-1], draw(st.sampled_from(sw)), 1000.0, 0.1))
    dn = {}
    for h in hosts[2:]:
        dn[h] = data(draw(st.integers(0, 900)), draw(st.lists(st.integers(0, 9), min_size=1, max_size=10, unique=True)),
                     capacity=draw(st.sampled_from([0.0, 0.5, 1.0])), queue_len=draw(st.integers(0, 2)),
                     load=draw(st.floats(0, 1)), status=draw(st.sampled_from(["fresh", "stale", "down"])))
    r = req(target_accuracy=draw(st.sampled_from([0.3, 0.7, 0.85])),
            model_bytes=draw(st.sampled_from([1000, 20_000, 600_000])),
            required_labels=draw(st.none() | st.tuples(st.integers(0, 9))),
            byte_budget=draw(st.none() | st.integers(0, 3_000_000)),
            start=draw(st.none() | st.sampled_from(hosts)),
            exclude=frozenset(draw(st.lists(st.sampled_from(hosts), max_size=2))))
    return snapshot_of(links, dn), r


def usable(snap, r) -> set[str]:
    g = nx.Graph()
    g.add_edges_from((x["a"], x["b"]) for x in snap["drrt"]["resources"]["links"] if x["up"])
    start = r.start or r.client
    out = set()
    for n, k in snap["drrt"]["knowledge"].items():
        c = snap["drrt"]["resources"]["compute"].get(n)
        if ("data" in k["roles"] and k["status"] in ("fresh", "stale") and k["samples"] > 0 and c
                and c["capacity"] > 0 and n not in r.exclude and start in g and n in g
                and nx.has_path(g, start, n)):
            out.add(n)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_networks(), st.sampled_from(sorted(POLICIES)))
def test_every_plan_is_made_of_valid_hops_and_adds_up(net, name):
    snap, r = net
    p = plan(name, r, snap)
    nodes = p.itinerary()
    assert len(set(nodes)) == len(nodes)
    assert set(nodes) <= usable(snap, r)
    prev = r.start or r.client
    for s in p.stops:
        check_hop(s.hop, snap, prev, s.node)
        if s.verify_hop is not None:
            check_hop(s.verify_hop, snap, s.node, p.mpvu)
        prev = s.node
    if p.lap_hop is not None:
        check_hop(p.lap_hop, snap, nodes[-1], nodes[0])
    if p.return_hop is not None:
        check_hop(p.return_hop, snap, nodes[p.end_after - 1], r.client)
    if nodes:
        seconds, nbytes = parts(p)
        assert p.est_bytes == nbytes
        assert p.est_seconds == pytest.approx(seconds, rel=1e-9, abs=1e-9)
        assert 1 <= p.laps <= r.max_laps and 1 <= p.end_after <= len(nodes)
    if not p.feasible:
        assert p.reasons
    assert p.planning_ms > 0
    if p.feasible:
        assert r.required_labels is None or set(r.required_labels) <= set(p.labels_covered)
        assert p.expected_accuracy >= r.target_accuracy - 1e-9
        assert p.est_seconds <= r.deadline_s
        assert r.byte_budget is None or p.est_bytes <= r.byte_budget
    if name == "search" and nodes:
        g = plan("greedy", r, snap)
        # never worse than greedy when greedy finds a feasible plan (when neither is
        # feasible, search ranks plans by how close they get, not by their seconds)
        if g.feasible:
            assert p.feasible and p.est_seconds <= g.est_seconds + 1e-9


def crowded_two_regions(extra: int):
    """two_regions() with ``extra`` more small 8-label nodes next to h2."""
    snap = two_regions()
    rows = snap["drrt"]["resources"]["links"]
    dn = {"h2": data(300, range(8)), "h3": data(1500), "h4": data(1500)}
    for i in range(10, 10 + extra):
        rows.append(link(f"h{i}", "s2", 1000, 0.1))
        dn[f"h{i}"] = data(100 + i, range(8))
    return snapshot_of(rows, dn)


def test_search_beyond_the_exact_limit_runs_a_beam_and_still_beats_greedy():
    snap = crowded_two_regions(10)  # 13 candidates: more than exact_limit, fewer than max_candidates
    r = req(target_accuracy=0.82)
    g, s = plan("greedy", r, snap), plan("search", r, snap)
    assert s.feasible and s.est_seconds < g.est_seconds - 0.5
    assert s.est_seconds <= cost_itinerary(r, snap, snap["t"], ["h3", "h4"], COST).est_seconds
    assert not any(x.startswith("search") for x in s.reasons)


def test_search_says_when_it_limited_itself():
    snap = crowded_two_regions(20)
    r = req(target_accuracy=0.82)
    s = plan("search", r, snap)
    assert "search considered 16 of 23 candidate data nodes (the greedy plan's stops, then the best " \
           "by gain per second)" in s.reasons
    capped = SearchPolicy(max_evaluations=5).plan(r, snap, snap["t"], COST)
    assert "search stopped after 5 itineraries (max_evaluations); the plan is the best found, " \
           "not proven best" in capped.reasons
    g = plan("greedy", r, snap)
    assert (not capped.feasible, capped.est_seconds) <= (not g.feasible, g.est_seconds)
    with pytest.raises(ValueError, match="exact_limit"):
        SearchPolicy(exact_limit=20, max_candidates=16)


def test_a_skewed_shard_does_not_count_as_covering_its_rare_labels():
    # h2 has every label, but 9 of them with 1 sample among 300: alone it cannot get far
    skewed = data(300)
    skewed["hist"] = [291] + [1] * 9
    snap = snapshot_of(line(), {"h2": skewed, "h5": data(300)})
    p = plan("greedy", req(target_accuracy=0.7), snap)
    assert "h5" in p.itinerary()
    alone = cost_itinerary(req(target_accuracy=0.7), snap, snap["t"], ["h2"], COST)
    assert not alone.feasible and alone.expected_accuracy < 0.3


def test_policies_choose_epochs_per_stop_when_allowed():
    """With max_epochs above local_epochs a plan may train a stop longer to save laps
    (transfers and verifications): here three epochs at h2 and two at h3 reach the
    target in one lap instead of three, faster and with fewer bytes; without it every
    stop trains local_epochs."""
    import dataclasses
    snap = snapshot_of(line(), {"h2": data(300, [0, 1, 2, 3, 4]), "h3": data(800, [5, 6, 7, 8, 9]),
                                "h4": data(600, [1, 2, 3])})
    for pol in ("greedy", "search"):
        base = get_policy(pol).plan(req(target_accuracy=0.85, deadline_s=100), snap, 100.0, COST)
        assert [s.epochs for s in base.stops] == [1] * len(base.stops) and base.laps == 3
        more = get_policy(pol).plan(dataclasses.replace(req(target_accuracy=0.85, deadline_s=100), max_epochs=3),
                                    snap, 100.0, COST)
        assert more.feasible and more.itinerary() == base.itinerary()
        assert [s.epochs for s in more.stops] == [3, 2] and more.laps == 1
        assert more.est_seconds < base.est_seconds and more.est_bytes < base.est_bytes
        assert all(1 <= s.epochs <= 3 for s in more.stops)


def test_max_epochs_is_validated():
    with pytest.raises(ValueError, match="max_epochs"):
        TrainingRequest(1, "h1", 10, 0.5, 10.0, local_epochs=2, max_epochs=1)
