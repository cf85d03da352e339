"""QIRCE routing speed: decisions per second against QRRTs of 10, 100 and 1000 inference nodes.

Usage: .venv/bin/python bench/bench_qirce.py [--sizes 10 100 1000] [--seconds 1.0] [--clients 10]

Each QRRT is a real ``NetworkMaps.snapshot()``: a tree of switches (a core, aggregation
switches, edge switches with 10 hosts each), shaped links of 10 to 1000 Mbit/s with 0.5-20 ms
delay (hosts: 1000 Mbit/s, 0.1 ms), one inference node per host, every one hosting model 1
(the worst case: every node is a candidate) with 0-5 queries queued, 2-20 ms service time
and an MPVU verdict of 0.80-0.95; ``--clients`` more hosts send the queries (public, at most
500 ms, at least 0.85 accuracy, so about half the replicas qualify), the default p2c spread.

Two figures per size:

- ``warm``: queries from the clients in turn against one snapshot, as between two reports:
  the router keeps the graph and each client's shortest-path trees (built by one untimed
  query per client first), so a decision costs one pass over the replicas;
- ``cold``: a new snapshot dict for every decision (a copy, so nothing is shared), as if the
  maps changed before every query: graph and Dijkstra trees are rebuilt each time.

Each figure runs for at least ``--seconds`` (and 20 decisions). Prints a table, then one
JSON line per figure: {"bench": "qirce", "inference_nodes", "mode", "decisions", "seconds",
"decisions_per_s", "ms_per_decision", "feasible_share"}
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from controllers.maps import LinkInfo, NetworkMaps  # noqa: E402
from controllers.qirce import Query, QueryRouter, ReplicaInfo  # noqa: E402

NOW = 2.0


def world(n_inference: int, n_clients: int, seed: int = 0):
    """(snapshot, replicas, clients) of a tree with ``n_inference`` inference hosts."""
    rng = np.random.default_rng([seed, n_inference])
    n_hosts = n_inference + n_clients
    n_edge = math.ceil(n_hosts / 10)
    n_agg = max(1, math.ceil(n_edge / 10))
    ports: dict[str, int] = {}

    def port(sw: str) -> int:
        ports[sw] = ports.get(sw, 0) + 1
        return ports[sw]

    def switch_link(a: str, b: str) -> LinkInfo:
        return LinkInfo(a, port(a), b, port(b), float(rng.choice([10.0, 100.0, 1000.0])),
                        float(rng.uniform(0.5, 20.0)))

    links = [switch_link("s1", f"s{2 + a}") for a in range(n_agg)]
    edges = [f"s{2 + n_agg + e}" for e in range(n_edge)]
    links += [switch_link(f"s{2 + e % n_agg}", sw) for e, sw in enumerate(edges)]
    hosts = [f"h{i}" for i in range(1, n_hosts + 1)]
    for i, h in enumerate(hosts):
        sw = edges[i // 10]
        links.append(LinkInfo(h, None, sw, port(sw), 1000.0, 0.1))
    maps = NetworkMaps(report_interval_s=1.0)
    maps.set_links(links)
    # clients spread over the tree: every (n_hosts / n_clients)-th host
    step = max(1, n_hosts // n_clients)
    clients = hosts[::step][:n_clients]
    servers = [h for h in hosts if h not in clients][:n_inference]
    replicas = []
    for h in servers:
        maps.node_report(h, NOW - 0.5, roles=["inference"], models=[1], queue_len=int(rng.integers(0, 6)),
                         service_ms=float(rng.uniform(2.0, 20.0)), load=float(rng.uniform(0, 1)))
        replicas.append(ReplicaInfo(h, 1, round(float(rng.uniform(0.80, 0.95)), 3)))
    for c in clients:
        maps.node_report(c, NOW - 0.5, roles=["client"])
    return maps.snapshot(NOW), replicas, clients


def measure(n: int, mode: str, seconds: float, n_clients: int) -> dict:
    snap, replicas, clients = world(n, n_clients)
    router = QueryRouter(seed=0)
    if mode == "warm":  # one untimed query per client builds the graph and its path trees
        for i, c in enumerate(clients):
            router.route(Query(-1 - i, c, 1), snap, replicas, NOW)
    decisions = feasible = 0
    spent = 0.0
    while spent < seconds or decisions < 20:
        s = copy.deepcopy(snap) if mode == "cold" else snap  # copying is not timed
        q = Query(decisions, clients[decisions % len(clients)], 1, max_latency_ms=500.0, min_accuracy=0.85)
        t = time.perf_counter()
        d = router.route(q, s, replicas, NOW + decisions * 1e-3)
        spent += time.perf_counter() - t
        decisions += 1
        feasible += d.feasible
    return {"bench": "qirce", "inference_nodes": n, "mode": mode, "decisions": decisions,
            "seconds": round(spent, 3), "decisions_per_s": round(decisions / spent, 1),
            "ms_per_decision": round(spent / decisions * 1000, 3), "feasible_share": round(feasible / decisions, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--seconds", type=float, default=1.0, help="routing time per figure (at least)")
    ap.add_argument("--clients", type=int, default=10, help="hosts sending the queries")
    args = ap.parse_args(argv)
    figures = [measure(n, mode, args.seconds, args.clients) for n in args.sizes for mode in ("warm", "cold")]
    print(f"QIRCE routing decisions, python {platform.python_version()} on {platform.machine()}, "
          f"{args.clients} clients, p2c")
    print(f"{'inference nodes':>16}{'mode':>6}{'decisions':>11}{'decisions/s':>13}{'ms/decision':>13}{'feasible':>10}")
    for f in figures:
        print(f"{f['inference_nodes']:>16}{f['mode']:>6}{f['decisions']:>11}{f['decisions_per_s']:>13.1f}"
              f"{f['ms_per_decision']:>13.3f}{f['feasible_share']:>10.2f}")
    for f in figures:
        print(json.dumps(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
