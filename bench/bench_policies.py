"""MTRCE policies head to head in emulation: greedy vs search vs naive on three topologies.

Usage (root; 6-8 min per seed on a 2-core machine):
    .venv/bin/python bench/bench_policies.py [--out /tmp] [--seeds 1] [--policies greedy search naive]
        [--topologies fattree4 abilene geant] [--regen] [--check-only]

Topologies (one generated, two from topohub), written as topology YAML files under
``experiments/policies/`` (``--regen`` rewrites them and their specs; they are written
when missing) so that every link can have its own bandwidth:

- ``fattree4``: ``fattree(k=4)`` (20 switches, 16 hosts)
- ``abilene``: topohub ``sndlib/abilene`` (12 switches, one host each)
- ``geant``: topohub ``sndlib/geant`` (22 switches, one host each)

The same rules for all three (deterministic, seeded by the topology name):

- placement: client and MPVU on the two ends of a longest host-to-host shortest path
  (hop count; ties in natural order); 7 data nodes by farthest-point sampling from
  them, so the data is spread over the network; digits, Dirichlet(0.3) shards.
- links: host links 100 Mbit/s; a third of the switch-switch links 5 Mbit/s, the rest
  100 Mbit/s, the slow ones drawn so that the 100 Mbit/s links alone still connect
  every switch (a fast detour always exists: route choice matters); 2 data nodes
  sit behind a 10 Mbit/s host link and 2 others are throttled to capacity 0.25, so
  which stops to visit matters too. Delay 0 (no netem on this kernel:
  ``links: {delay: 0, override: true}``).
- model: MLP [512, 512] (1.2 MB on the wire); one task, target 0.8, at most 4 laps,
  deadline 60 s: loose enough that T-FAM accepts every policy's plan (with 30 s it
  refused naive's, whose estimate costs fewest-hop paths over 5 Mbit/s links), yet
  every task is over in well under a minute.

Every spec is checked with ``daitn check`` first (no root needed); then each
(topology, seed, policy) runs once with ``daitn run --set seed=S --set
controller.policy=P``. Per run it reads ``summary.json`` and ``events.jsonl`` and
reports: reached, time to target (the task's seconds), model bytes sent, hops,
T-FAM's estimates vs actual (seconds, bytes), and, to explain the differences: the
planned stops and laps, the stops visited, the model transfers that crossed a
5 Mbit/s or 10 Mbit/s link and their seconds, and the hops whose installed path
differs from the one the plan costed. Prints a table; writes
``OUT/bench_policies.json`` and ``OUT/bench_policies.csv``; run directories under
``OUT/bench_policies_runs/``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import networkx as nx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import topologies  # noqa: E402

SPEC_DIR = ROOT / "experiments" / "policies"
PY = str(ROOT / ".venv" / "bin" / "python")
POLICIES = ("greedy", "search", "naive")

TOPOLOGIES = {
    "fattree4": {"generator": "fattree", "params": {"k": 4}},
    "abilene": {"zoo": "sndlib/abilene"},
    "geant": {"zoo": "sndlib/geant"},
}
N_DATA = 7
FAST_MBPS, SLOW_CORE_MBPS, SLOW_ACCESS_MBPS = 100.0, 5.0, 10.0
SLOW_CORE_FRACTION = 1 / 3
N_SLOW_ACCESS, N_THROTTLED, THROTTLE = 2, 2, 0.25
TASK = {"id": 1, "target_accuracy": 0.8, "deadline_s": 60, "max_laps": 4}
HIDDEN = [512, 512]
RUN_TIMEOUT_S = 150  # a run that hangs is killed (its directory says how far it got)


def natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(name))]


# ---- specs ------------------------------------------------------------------------------
def design(key: str) -> tuple[dict, dict]:
    """(topology YAML document, spec document) for topology ``key`` (module doc rules)."""
    base = topologies.resolve(TOPOLOGIES[key])
    rng = random.Random(f"bench_policies/{key}")
    g = base.graph()
    hosts = sorted(base.hosts, key=natural)
    dist = dict(nx.all_pairs_shortest_path_length(g))
    # client and MPVU: the two ends of a longest shortest path between hosts
    client, mpvu = max(((a, b) for a in hosts for b in hosts if natural(a) < natural(b)),
                       key=lambda ab: (dist[ab[0]][ab[1]], -int(ab[0][1:]), -int(ab[1][1:])))
    chosen, data = [client, mpvu], []
    while len(data) < N_DATA:
        left = [h for h in hosts if h not in chosen]
        best = max(left, key=lambda h: (min(dist[h][c] for c in chosen), -int(h[1:])))
        chosen.append(best)
        data.append(best)
    data.sort(key=natural)
    slow_access = sorted(rng.sample(data, N_SLOW_ACCESS), key=natural)
    throttled = sorted(rng.sample([h for h in data if h not in slow_access], N_THROTTLED), key=natural)

    # slow core links: a third of the switch-switch links, the fast ones staying connected
    sw_links = [(ln.a, ln.b) for ln in base.switch_links()]
    want = round(len(sw_links) * SLOW_CORE_FRACTION)
    order = list(sw_links)
    rng.shuffle(order)
    fast = nx.Graph()
    fast.add_nodes_from(base.switches)
    fast.add_edges_from(sw_links)
    slow = set()
    for a, b in order:
        if len(slow) >= want:
            break
        fast.remove_edge(a, b)
        if nx.is_connected(fast):
            slow.add((a, b))
        else:
            fast.add_edge(a, b)
    links = []
    for ln in base.links:
        if (ln.a, ln.b) in slow:
            bw = SLOW_CORE_MBPS
        elif ln.a in slow_access or ln.b in slow_access:
            bw = SLOW_ACCESS_MBPS
        else:
            bw = FAST_MBPS
        links.append({"a": ln.a, "b": ln.b, "bw": bw})
    topo_doc = {"name": f"{key}-hetbw", "switches": list(base.switches), "hosts": list(base.hosts),
                "links": links}
    if base.labels:
        topo_doc["labels"] = dict(base.labels)
    if base.positions:
        topo_doc["positions"] = {k: [float(x), float(y)] for k, (x, y) in base.positions.items()}

    nodes = {client: ["client"], mpvu: ["mpvu"], **{h: ["data"] for h in data}}
    spec_doc = {
        "name": f"policies-{key}",
        "seed": 1,
        "topology": {"file": f"topo_{key}.yaml"},
        "links": {"delay": 0, "override": True},
        "nodes": dict(sorted(nodes.items(), key=lambda kv: natural(kv[0]))),
        "hosts": {h: {"capacity": THROTTLE} for h in throttled},
        "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.3},
        "model": {"hidden": HIDDEN},
        "training": {"local_epochs": 1, "lr": 0.1, "batch_size": 4, "momentum": 0.5},
        "tasks": [{**TASK, "client": client}],
        "controller": {"policy": "greedy"},
    }
    return topo_doc, spec_doc


def header(key: str, topo_doc: dict, spec_doc: dict) -> str:
    slow = [f"{ln['a']}-{ln['b']}" for ln in topo_doc["links"] if ln["bw"] == SLOW_CORE_MBPS]
    acc = [f"{ln['a']}-{ln['b']}" for ln in topo_doc["links"] if ln["bw"] == SLOW_ACCESS_MBPS]
    return (f"# Written by bench/bench_policies.py --regen from {TOPOLOGIES[key]} (edit the rules there).\n"
            f"# {SLOW_CORE_MBPS:g} Mbit/s core links: {', '.join(slow)}\n"
            f"# {SLOW_ACCESS_MBPS:g} Mbit/s host links: {', '.join(acc)}\n")


def write_specs(keys, regen: bool) -> dict[str, Path]:
    SPEC_DIR.mkdir(parents=True, exist_ok=True)
    out = {}
    for key in keys:
        spec_path, topo_path = SPEC_DIR / f"{key}.yaml", SPEC_DIR / f"topo_{key}.yaml"
        if regen or not spec_path.exists() or not topo_path.exists():
            topo_doc, spec_doc = design(key)
            h = header(key, topo_doc, spec_doc)
            topo_path.write_text(h + yaml.safe_dump(topo_doc, sort_keys=False, default_flow_style=None,
                                                    width=110))
            spec_path.write_text(
                f"# Bench spec for bench/bench_policies.py (same rules on every topology; see its doc).\n"
                f"# The bench runs it with --set seed=S --set controller.policy=P.\n"
                + yaml.safe_dump(spec_doc, sort_keys=False, default_flow_style=None, width=110))
        out[key] = spec_path
    return out


def check(spec: Path, policies) -> None:
    for p in policies:
        r = subprocess.run([PY, "-m", "testbed.cli", "check", str(spec), "--set", f"controller.policy={p}"],
                           cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"daitn check failed for {spec} (policy {p}):\n{r.stdout}{r.stderr}")
    print(r.stdout.strip())


# ---- one run ---------------------------------------------------------------------------------
def read_jsonl(p: Path) -> list[dict]:
    out = []
    if p.exists():
        for line in p.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return out


def link_bw(topo_doc: dict) -> dict[frozenset, float]:
    return {frozenset((ln["a"], ln["b"])): ln["bw"] for ln in topo_doc["links"]}


def analyse(run_dir: Path, bw: dict) -> dict:
    """What the summary says, plus from events.jsonl: the plan, the paths, the slow transfers."""
    s = json.loads((run_dir / "summary.json").read_text())
    t = s["tasks"][0]
    est = t.get("estimate") or {}
    ev = read_jsonl(run_dir / "events.jsonl")
    feas = next((e for e in ev if e["kind"] == "feasibility" and e.get("task") == 1), {})
    plan = feas.get("plan") or {}
    hops = [e for e in ev if e["kind"] == "hop" and e.get("task") == 1]
    mpvu = plan.get("mpvu")

    def bottleneck(path):
        if not path or len(path) < 2:
            return None
        return min(bw.get(frozenset(p), FAST_MBPS) for p in zip(path, path[1:]))

    # each transfer's path: the latest hop event (at or before it) with that leg
    slow_n, slow_s, xfer_s = 0, 0.0, 0.0
    for x in (e for e in ev if e["kind"] == "transfer" and e.get("task") == 1):
        xfer_s += x.get("seconds") or 0.0
        path = None
        for h in hops:
            if h["t"] > x["t"]:
                break
            if (h["from"], h["to"]) == (x["src"], x["to"]):
                path = h.get("path")
            elif (h["to"], mpvu) == (x["src"], x["to"]):
                path = h.get("verify_path")
        b = bottleneck(path)
        if b is not None and b < FAST_MBPS:
            slow_n += 1
            slow_s += x.get("seconds") or 0.0
    # the paths the plan costed vs the ones the DCC installed (first lap's stops)
    planned = {}
    for st in plan.get("stops", []):
        planned[(st["hop"]["src"], st["hop"]["dst"])] = st["hop"]["path"]
        if st.get("verify_hop"):
            planned[(st["verify_hop"]["src"], st["verify_hop"]["dst"])] = st["verify_hop"]["path"]
    if plan.get("lap_hop"):
        planned[(plan["lap_hop"]["src"], plan["lap_hop"]["dst"])] = plan["lap_hop"]["path"]
    if plan.get("return_hop"):
        planned[(plan["return_hop"]["src"], plan["return_hop"]["dst"])] = plan["return_hop"]["path"]
    differ, slow_planned, slow_installed = [], 0, 0
    for h in hops:
        for (a, b), path in (((h["from"], h["to"]), h.get("path")), ((h["to"], mpvu), h.get("verify_path"))):
            p = planned.get((a, b))
            if p and path:
                slow_planned += (bottleneck(p) or FAST_MBPS) < FAST_MBPS
                slow_installed += (bottleneck(path) or FAST_MBPS) < FAST_MBPS
                if p != path:
                    differ.append({"leg": f"{a}->{b}", "planned": p, "installed": path,
                                   "planned_mbps": bottleneck(p), "installed_mbps": bottleneck(path)})
    # measured latency the plan used, per switch-switch link crossed (configured: 0 ms)
    lat, nlinks = 0.0, 0
    for st in plan.get("stops", []):
        for hp in (st["hop"], st.get("verify_hop")):
            if hp and len(hp["path"]) > 3:
                lat += hp.get("latency_ms") or 0.0
                nlinks += len(hp["path"]) - 3
    seen = set()
    differ = [d for d in differ if not (d["leg"] in seen or seen.add(d["leg"]))]
    return {
        "reached": t["reached"], "end_reason": t.get("end_reason"), "final_accuracy": t.get("final_accuracy"),
        "seconds": t.get("seconds"), "model_bytes_sent": t.get("model_bytes_sent"), "hops": t.get("hops"),
        "transfers": t.get("model_transfers"), "itinerary": t.get("itinerary"),
        "planned_itinerary": t.get("planned_itinerary"), "planned_laps": plan.get("laps"),
        "planned_end_after": plan.get("end_after"), "feasible": feas.get("feasible"),
        "plan_reasons": (feas.get("reasons") or [])[:4],
        "est_seconds": est.get("est_seconds"), "actual_seconds": est.get("actual_seconds"),
        "est_bytes": est.get("est_bytes"), "actual_bytes": est.get("actual_bytes"),
        "expected_accuracy": est.get("expected_accuracy"),
        "transfer_seconds": round(xfer_s, 3), "slow_transfers": slow_n, "slow_transfer_seconds": round(slow_s, 3),
        "legs_slow_as_planned": slow_planned, "legs_slow_as_installed": slow_installed,
        "paths_differ": differ, "replans": t.get("replans"),
        "plan_latency_ms_per_link": round(lat / nlinks, 2) if nlinks else None,
    }


def run_one(spec: Path, key: str, seed: int, policy: str, runs: Path, bw: dict) -> dict:
    out = runs / f"{key}-s{seed}-{policy}"
    cmd = [PY, "-m", "testbed.cli", "run", str(spec), "--out", str(out), "--set", f"seed={seed}",
           "--set", f"controller.policy={policy}", "--quiet"]
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        rc, err = r.returncode, (r.stderr or "")[-600:]
    except subprocess.TimeoutExpired:
        rc, err = None, f"killed after {RUN_TIMEOUT_S} s"
    wall = time.monotonic() - t0
    row = {"topology": key, "seed": seed, "policy": policy, "rc": rc, "wall_s": round(wall, 1),
           "run_dir": str(out)}
    if (out / "summary.json").exists():
        row.update(analyse(out, bw))
    else:
        row.update({"reached": None, "error": err.strip()})
    return row


# ---- report -------------------------------------------------------------------------------
def fmt(x, spec="{:.1f}"):
    return "-" if x is None else spec.format(x)


COLS = [("topology", 9, lambda r: r["topology"]), ("seed", 4, lambda r: str(r["seed"])),
        ("policy", 6, lambda r: r["policy"]),
        ("reached", 7, lambda r: "-" if r.get("reached") is None else ("yes" if r["reached"] else "NO")),
        ("acc", 5, lambda r: fmt(r.get("final_accuracy"), "{:.2f}")),
        ("time_s", 6, lambda r: fmt(r.get("seconds"))),
        ("MB_sent", 7, lambda r: fmt(None if r.get("model_bytes_sent") is None else r["model_bytes_sent"] / 1e6)),
        ("hops", 4, lambda r: fmt(r.get("hops"), "{}")),
        ("est_s", 6, lambda r: fmt(r.get("est_seconds"))), ("act_s", 6, lambda r: fmt(r.get("actual_seconds"))),
        ("est_MB", 6, lambda r: fmt(None if r.get("est_bytes") is None else r["est_bytes"] / 1e6)),
        ("act_MB", 6, lambda r: fmt(None if r.get("actual_bytes") is None else r["actual_bytes"] / 1e6)),
        ("slow_xfers", 10, lambda r: "-" if r.get("slow_transfers") is None
         else f"{r['slow_transfers']}/{r['transfers']}"),
        ("slow_xfer_s", 11, lambda r: fmt(r.get("slow_transfer_seconds"))),
        ("lat/link", 8, lambda r: fmt(r.get("plan_latency_ms_per_link"))),
        ("plan (laps)", 11, lambda r: "-" if r.get("planned_itinerary") is None
         else f"{'>'.join(x[1:] for x in r['planned_itinerary'])} ({r.get('planned_laps')})"),
        ("visited", 7, lambda r: "-" if r.get("itinerary") is None else ">".join(x[1:] for x in r["itinerary"]))]


def table(rows: list[dict]) -> str:
    cells = [[c[0] for c in COLS]] + [[c[2](r) for c in COLS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


CSV_FIELDS = ["topology", "seed", "policy", "rc", "reached", "end_reason", "final_accuracy", "seconds",
              "model_bytes_sent", "hops", "transfers", "est_seconds", "actual_seconds", "est_bytes",
              "actual_bytes", "expected_accuracy", "transfer_seconds", "slow_transfers",
              "slow_transfer_seconds", "plan_latency_ms_per_link", "legs_slow_as_planned", "legs_slow_as_installed", "planned_laps",
              "planned_itinerary", "itinerary", "wall_s", "run_dir"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp", help="directory for the JSON, CSV and run directories")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument("--topologies", nargs="+", default=list(TOPOLOGIES), choices=list(TOPOLOGIES))
    ap.add_argument("--regen", action="store_true", help="rewrite experiments/policies/*.yaml from the rules")
    ap.add_argument("--check-only", action="store_true", help="write and check the specs, run nothing")
    a = ap.parse_args(argv)

    specs = write_specs(a.topologies, a.regen)
    for key, spec in specs.items():
        check(spec, a.policies)
    if a.check_only:
        return 0
    if os.geteuid() != 0:
        sys.exit("bench_policies: runs need root (daitn run); try sudo")
    out = Path(a.out)
    runs = out / "bench_policies_runs"
    runs.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    rows = []
    for key, spec in specs.items():
        bw = link_bw(yaml.safe_load((SPEC_DIR / f"topo_{key}.yaml").read_text()))
        for seed in a.seeds:
            for policy in a.policies:
                row = run_one(spec, key, seed, policy, runs, bw)
                rows.append(row)
                print(f"[{time.monotonic() - t0:6.1f}s] {key} seed {seed} {policy}: "
                      f"reached={row.get('reached')} time={fmt(row.get('seconds'))} s "
                      f"hops={row.get('hops')} wall={row['wall_s']} s", flush=True)
    total = time.monotonic() - t0
    print()
    print(table(rows))
    print(f"\ntotal {total:.0f} s for {len(rows)} runs")
    for r in rows:
        if r.get("feasible") is False or r.get("reached") is False:
            print(f"  {r['topology']}/{r['policy']}: {r.get('end_reason')}; T-FAM: {r.get('plan_reasons')}")
        for d in r.get("paths_differ") or []:
            print(f"  {r['topology']}/{r['policy']}: {d['leg']} costed on {'>'.join(d['planned'])} "
                  f"({d['planned_mbps']:g} Mbit/s), installed {'>'.join(d['installed'])} "
                  f"({d['installed_mbps']:g} Mbit/s)")
    doc = {"bench": "policies", "total_seconds": round(total, 1), "task": TASK, "hidden": HIDDEN,
           "specs": {k: str(v.relative_to(ROOT)) for k, v in specs.items()}, "runs": rows}
    (out / "bench_policies.json").write_text(json.dumps(doc, indent=1))
    with open(out / "bench_policies.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (">".join(r[k]) if isinstance(r.get(k), list) else r.get(k)) for k in CSV_FIELDS})
    print(f"wrote {out / 'bench_policies.json'} and {out / 'bench_policies.csv'}")
    return 0 if all(r.get("reached") is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
