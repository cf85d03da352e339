"""QIRCE / Q-FAM (controllers/qirce.py): query routing with reasons, load spreading,
failover, privacy, accuracy, feedback and replica placement; pure, on crafted maps."""
import json
from collections import Counter

import pytest

from controllers.maps import LinkInfo, NetworkMaps
from controllers.qirce import Query, QueryCost, QueryRouter, ReplicaInfo, place_replicas
from testbed.network import plan_ports
from topologies.model import Link, Topology

NOW = 1000.0
MBPS = 100.0


def star_of_stars():
    """h1 (client) and h2 on s1; h3, h4 on s2 (10 ms from s1); h5 on s3 (30 ms from s1).
    Host links: 1 ms. Every link 100 Mbit/s."""
    links = [Link("h1", "s1", MBPS, 1), Link("h2", "s1", MBPS, 1), Link("s1", "s2", MBPS, 10),
             Link("h3", "s2", MBPS, 1), Link("h4", "s2", MBPS, 1), Link("s1", "s3", MBPS, 30),
             Link("h5", "s3", MBPS, 1), Link("h6", "s3", MBPS, 1)]
    return Topology("star-of-stars", ["s1", "s2", "s3"], [f"h{i}" for i in range(1, 7)], links)


def inference(queue_len=0, service_ms=10.0, models=(1,), **kw):
    return dict(roles=["inference"], models=list(models), queue_len=queue_len, service_ms=service_ms, **kw)


def maps_of(topo, reports: dict, at: dict | None = None) -> NetworkMaps:
    """Maps of ``topo`` with a report from each node of ``reports`` (at NOW, or at[node])."""
    m = NetworkMaps(report_interval_s=1.0)
    m.set_links([LinkInfo(a, None if a.startswith("h") else ap, b, None if b.startswith("h") else bp,
                          ln.bw_mbit, ln.delay_ms)
                 for ln, (a, ap, b, bp) in zip(topo.links, plan_ports(topo))])
    for n, r in reports.items():
        m.node_report(n, (at or {}).get(n, NOW), **r)
    return m


def snap(reports, at=None, topo=None):
    return maps_of(topo or star_of_stars(), {"h1": dict(roles=["client"]), **reports}, at).snapshot(NOW)


def reps(*nodes, model=1, accuracy=0.9):
    return [ReplicaInfo(n, model, accuracy) for n in nodes]


def q(i=1, **kw):
    return Query(**{"query_id": i, "client": "h1", "model_id": 1, **kw})


def network_ms(one_way_ms, links):
    """What the router should predict for the network: SYN/SYN-ACK + query/answer round
    trips, plus each message serialised on each link of its path."""
    c = QueryCost()
    tx = links * ((256 + c.query_overhead_bytes) + c.result_bytes) * 8 / (MBPS * 1e3)
    return 2 * (2 * one_way_ms) + tx


# ---- wire sizes ---------------------------------------------------------------------------------
def test_message_sizes_match_what_the_wire_encodes():
    from nodes import wire
    from nodes.wire import Message, MsgType as MT, Tlv

    key = b"k" * 32
    query = Message(MT.INFERENCE_QUERY, model_id=1, seq=1, body=wire.InferenceQuery([0.5] * 64),
                    tlvs={Tlv.MAX_LATENCY: 50, Tlv.MIN_ACCURACY: 0.9, Tlv.PRIVACY_LEVEL: wire.Privacy.TRUSTED})
    result = Message(MT.INFERENCE_RESULT, flags=wire.REPLY, model_id=1, seq=1, body=wire.InferenceResult(3, 0.9, 4.0))
    c = QueryCost()
    assert len(wire.encode(query, key, 1)) == 64 * 4 + c.query_overhead_bytes
    assert len(wire.encode(result, key, 1)) == c.result_bytes


# ---- choosing the best --------------------------------------------------------------------------
def test_network_against_queue_trade_off():
    r = QueryRouter(spread="best")
    # h2 is next door but has 8 queries queued (80 ms); h3 is 10 ms of switch link away, idle
    d = r.route(q(), snap({"h2": inference(queue_len=8), "h3": inference()}), reps("h2", "h3"), NOW)
    assert d.feasible and d.server == "h3", d.reasons
    assert d.path == ["h1", "s1", "s2", "h3"]
    c = {x["server"]: x for x in d.candidates}
    assert c["h3"]["network_ms"] == pytest.approx(network_ms(12, 3))
    assert c["h2"]["queue_ms"] == pytest.approx(80) and c["h2"]["network_ms"] == pytest.approx(network_ms(2, 2))
    assert c["h3"]["predicted_ms"] == pytest.approx(c["h3"]["network_ms"] + 0 + 10)
    assert c["h3"]["chosen"] and not c["h2"]["chosen"]
    # with only 2 queued, next door wins
    d = r.route(q(), snap({"h2": inference(queue_len=2), "h3": inference()}), reps("h2", "h3"), NOW)
    assert d.server == "h2", d.reasons
    assert d.predicted_ms == pytest.approx(network_ms(2, 2) + 20 + 10)


def test_measured_latency_and_load_change_the_path_taken():
    topo = Topology("two-ways", ["s1", "s2", "s3"], ["h1", "h2"],
                    [Link("h1", "s1", MBPS, 1), Link("s1", "s2", MBPS, 1), Link("s2", "s3", MBPS, 1),
                     Link("s1", "s3", MBPS, 5), Link("h2", "s3", MBPS, 1)])
    m = maps_of(topo, {"h1": dict(roles=["client"]), "h2": inference()})
    d = QueryRouter().route(q(), m.snapshot(NOW), reps("h2"), NOW)
    assert d.path == ["h1", "s1", "s2", "s3", "h2"]
    m.latency_sample("s1", "s2", 20.0, NOW)
    d = QueryRouter().route(q(), m.snapshot(NOW), reps("h2"), NOW)
    assert d.path == ["h1", "s1", "s3", "h2"]
    assert d.candidates[0]["network_ms"] == pytest.approx(network_ms(7, 3))


def test_unknown_service_time_is_assumed_and_said():
    d = QueryRouter().route(q(), snap({"h3": inference(service_ms=0.0)}), reps("h3"), NOW)
    assert d.candidates[0]["service_ms"] == QueryCost().default_service_ms
    assert any("answered nothing yet" in x for x in d.reasons)


# ---- Q-FAM: infeasible, with reasons --------------------------------------------------------------
def test_no_replica_of_the_model():
    d = QueryRouter().route(q(model_id=3), snap({"h3": inference()}), reps("h3"), NOW)
    assert not d.feasible and d.server is None
    assert d.reasons[0].startswith("model 3 has no replica")


def test_every_replica_too_slow_names_the_parts():
    d = QueryRouter().route(q(max_latency_ms=50), snap({"h3": inference(queue_len=1), "h5": inference()}),
                            reps("h3", "h5"), NOW)
    assert not d.feasible
    head = d.reasons[0]
    assert head.startswith("every replica of model 1 predicts more than 50 ms (h3: 68 ms = 48 ms network "
                           "+ 10 ms queue + 10 ms service"), head
    assert "h5: 138 ms" in head
    assert all(c["kind"] == "latency" for c in d.candidates)
    # a looser limit is met
    assert QueryRouter().route(q(max_latency_ms=70), snap({"h3": inference(queue_len=1)}), reps("h3"), NOW).feasible


def test_trusted_query_goes_only_to_trusted_servers():
    s = snap({"h3": inference(), "h5": inference()})
    d = QueryRouter().route(q(privacy="trusted"), s, reps("h3", "h5"), NOW)
    assert not d.feasible
    assert d.reasons[0].startswith("no trusted replica of model 1 for a sensitive query from h1 "
                                   "(h1 trusts no inference server)")
    r = QueryRouter(trusted={"h1": {"h5"}})
    d = r.route(q(privacy="trusted"), s, reps("h3", "h5"), NOW)
    assert d.feasible and d.server == "h5"      # slower than h3, but the only one trusted
    assert any("h1 does not trust h3" in x for x in d.reasons)
    assert r.route(q(privacy="public"), s, reps("h3", "h5"), NOW).server == "h3"
    assert r.failover_order(q(privacy="trusted"), s, reps("h3", "h5"), NOW) == ["h5"]


def test_local_query_stays_on_the_client():
    s = snap({"h3": inference()})
    r = QueryRouter(trusted={"h1": {"h3"}})  # trust does not make h3 local
    d = r.route(q(privacy="local"), s, reps("h3"), NOW)
    assert not d.feasible
    assert d.reasons[0].startswith("no replica of model 1 on h1 itself for a 'local' query from h1")
    s = snap({"h1": dict(roles=["client", "inference"], models=[1], service_ms=4.0), "h3": inference(service_ms=1.0)})
    d = r.route(q(privacy="local"), s, reps("h1", "h3"), NOW)
    assert d.feasible and d.server == "h1" and d.path == ["h1"]
    assert d.predicted_ms == pytest.approx(4.0)  # no network at all


def test_min_accuracy_filters_by_verdict_and_refuses_unknown():
    s = snap({"h3": inference(), "h4": inference()})
    rs = [ReplicaInfo("h3", 1, 0.82), ReplicaInfo("h4", 1, None)]
    d = QueryRouter().route(q(min_accuracy=0.9), s, rs, NOW)
    assert not d.feasible
    assert d.reasons[0] == ("no replica of model 1 is verified at accuracy >= 0.9 "
                            "(best verdict 0.82 at h3; no verdict at h4)")
    assert any("h4's replica of model 1 has no MPVU verdict" in x for x in d.reasons)
    rs.append(ReplicaInfo("h5", 1, 0.95))
    d = QueryRouter().route(q(min_accuracy=0.9), snap({"h3": inference(), "h4": inference(), "h5": inference()}),
                            rs, NOW)
    assert d.server == "h5"
    # without min_accuracy the unverified replica is fine
    assert QueryRouter(spread="best").route(q(), s, rs[1:2], NOW).server == "h4"


def test_down_expired_and_not_hosting_replicas_are_ignored():
    s = snap({"h2": inference(), "h3": inference(), "h4": inference(models=[2]), "h5": inference()},
             at={"h2": NOW - 3.0, "h3": NOW - 20.0})   # h2 down (3 intervals), h3 expired
    d = QueryRouter().route(q(), s, reps("h2", "h3", "h4", "h5"), NOW)
    assert d.feasible and d.server == "h5", d.reasons
    why = {c["server"]: c["rejected"] for c in d.candidates}
    assert why["h2"].startswith("h2 is down")
    assert "no QRRT entry" in why["h3"]
    assert why["h4"] == "h4 does not report model 1 (it reports [2])"
    d = QueryRouter().route(q(), s, reps("h2", "h3", "h4"), NOW)
    assert not d.feasible
    assert d.reasons[0] == ("no replica of model 1 that meets the query's requirements can serve h1 now: "
                            "3 down or not hosting it")


def test_unreachable_replica():
    m = maps_of(star_of_stars(), {"h1": dict(roles=["client"]), "h3": inference(), "h5": inference()})
    m.link_state("s1", "s2", False, NOW, cause="port down")
    d = QueryRouter().route(q(), m.snapshot(NOW), reps("h3", "h5"), NOW)
    assert d.server == "h5"
    assert {c["server"]: c["kind"] for c in d.candidates}["h3"] == "path"


# ---- load spreading --------------------------------------------------------------------------------
def test_p2c_balances_two_equal_replicas_and_spares_a_worse_one():
    s = snap({"h3": inference(), "h4": inference(), "h5": inference()})
    r = QueryRouter(seed=1)
    got = Counter(r.route(q(i), s, reps("h3", "h4", "h5"), NOW + i * 0.01).server for i in range(1000))
    assert got["h5"] == 0                      # 138 ms against 58 ms: outside the tolerance
    assert 400 <= got["h3"] <= 600 and got["h3"] + got["h4"] == 1000, got
    best = Counter(QueryRouter(spread="best").route(q(i), s, reps("h3", "h4", "h5"), NOW).server for i in range(50))
    assert best == {"h3": 50}                   # no spreading: the first by name of the tie


def test_random_spread_stays_within_tolerance():
    s = snap({"h2": inference(queue_len=2), "h3": inference(), "h4": inference(), "h5": inference()})
    r = QueryRouter(seed=3, spread="random")
    got = Counter(r.route(q(i), s, reps("h2", "h3", "h4", "h5"), NOW).server for i in range(600))
    # h2: 38 ms; h3, h4: 58 ms, over 38 x 1.25 + 2 = 49.5 ms; h5: 138 ms
    assert got == {"h2": 600}
    r = QueryRouter(seed=3, spread="random", tolerance=0.6)  # 38 * 1.6 + 2 = 62.8: h3 and h4 join
    got = Counter(r.route(q(i), s, reps("h2", "h3", "h4", "h5"), NOW).server for i in range(600))
    assert set(got) == {"h2", "h3", "h4"} and min(got.values()) > 120, got


def test_same_seed_same_decisions():
    s = snap({"h3": inference(), "h4": inference(), "h2": inference(queue_len=3)})
    rs = reps("h2", "h3", "h4")

    def run(seed, spread="p2c"):
        r = QueryRouter(seed=seed, spread=spread, tolerance=0.6)
        return [r.route(q(i), s, rs, NOW + i * 0.3).server for i in range(200)]
    assert run(7) == run(7)
    assert run(7, "random") == run(7, "random")
    assert run(7, "random") != run(8, "random")


# ---- failover and feedback ---------------------------------------------------------------------------
def test_exclude_gives_the_next_best():
    s = snap({"h3": inference(), "h4": inference(queue_len=1), "h5": inference()})
    r = QueryRouter(spread="best")
    rs = reps("h3", "h4", "h5")
    assert r.failover_order(q(), s, rs, NOW) == ["h3", "h4", "h5"]
    assert r.route(q(), s, rs, NOW, exclude={"h3"}).server == "h4"
    assert r.route(q(), s, rs, NOW, exclude={"h3", "h4"}).server == "h5"
    d = r.route(q(), s, rs, NOW, exclude={"h3", "h4", "h5"})
    assert not d.feasible and "3 excluded" in d.reasons[0]
    assert r.failover_order(q(max_latency_ms=100), s, rs, NOW, exclude={"h3"}) == ["h4"]


def test_observed_latency_and_failures_feed_back():
    s = snap({"h3": inference(), "h4": inference(queue_len=1)})
    rs = reps("h3", "h4")
    r = QueryRouter(spread="best")
    d = r.route(q(), s, rs, NOW)
    assert d.server == "h3"
    for i in range(10):  # h3 answers far slower than predicted (58 ms): 150 ms
        r.record_outcome("h3", 150.0, True, NOW + i)
    d = r.route(q(), s, rs, NOW + 10)
    assert d.server == "h4", d.reasons
    h3 = next(c for c in d.candidates if c["server"] == "h3")
    assert h3["feedback_ms"] > 50 and "from recent outcomes" in QueryRouter._breakdown(h3)
    # the memory fades: a minute later the reports speak again
    assert r.route(q(), s, rs, NOW + 100).server == "h3"
    # failures: h3 is kept for failover only
    r2 = QueryRouter(spread="best")
    for i in range(3):
        r2.record_outcome("h3", None, False, NOW)
    d = r2.route(q(), s, rs, NOW)
    assert d.server == "h4" and any("failed recently" in x for x in d.reasons)
    assert r2.failover_order(q(), s, rs, NOW) == ["h4", "h3"]
    assert r2.route(q(), s, rs, NOW, exclude={"h4"}).server == "h3"


# ---- output and input --------------------------------------------------------------------------------
def test_decisions_are_json_ready():
    s = snap({"h3": inference(), "h4": inference(), "h5": inference(models=[2])})
    for query in (q(), q(max_latency_ms=10), q(privacy="local"), q(model_id=9)):
        d = QueryRouter().route(query, s, reps("h3", "h4", "h5"), NOW)
        out = d.to_dict()
        assert json.loads(json.dumps(out, allow_nan=False)) == out
        assert set(out) == {"query_id", "feasible", "server", "path", "predicted_ms", "reasons", "candidates"}


def test_bad_input_is_refused_with_the_field_named():
    with pytest.raises(ValueError, match="privacy"):
        q(privacy="secret")
    with pytest.raises(ValueError, match="min_accuracy"):
        q(min_accuracy=1.5)
    with pytest.raises(ValueError, match="spread"):
        QueryRouter(spread="round-robin")
    with pytest.raises(ValueError, match="trusted"):
        QueryRouter(trusted={"h1": "h3"})
    from nodes.wire import Privacy
    assert q(privacy=Privacy.TRUSTED).privacy == "trusted"


# ---- placement -----------------------------------------------------------------------------------------
def test_placement_goes_near_the_heavy_sources():
    s = snap({"h2": inference(), "h3": inference(), "h4": inference(), "h5": inference(),
              "h6": dict(roles=["client"])})
    cands = ["h2", "h3", "h5"]
    chosen, why = place_replicas(1, {"h1": 100.0, "h6": 1.0}, s, cands, k=1)
    assert chosen == ["h2"], why         # next to the heavy client h1
    chosen, why = place_replicas(1, {"h1": 1.0, "h6": 100.0}, s, cands, k=1)
    assert chosen == ["h5"], why         # next to the heavy client h6
    chosen, why = place_replicas(1, {"h1": 100.0, "h6": 1.0}, s, cands, k=2)
    assert chosen == ["h2", "h5"], why   # the second serves the light source, not h3 in between
    assert why[1].startswith("h5 added: mean latency") and why[1].endswith("now nearest for h6 (1 q/s) at 8.1 ms")
    chosen, why = place_replicas(1, {"h1": 1.0}, s, ["h2", "h9"], k=3)
    assert chosen == ["h2"]
    assert any("h9 skipped" in x for x in why) and any("only 1 live" in x for x in why)
