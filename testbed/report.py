"""``daitn report``: one finished run as a Markdown report with PNGs, for a paper's appendix.

Sections: outcome, spec (resolved, abridged), topology and model route pictures, timeline
(spec timeline, faults, re-plans), plans and re-plans with their reasons, hops, accuracy over
time, traffic per host and per link, flows (end-of-run dumps and the AI-task flows of each
hop), queries, model lineage. Everything is read from the run directory
(:mod:`testbed.rundir`); nothing is re-measured or estimated, and where the files do not hold
something the report says so.

Bytes per link are attributed, not captured: each ``transfer`` is laid on the path the DCC
installed for it (the ``hop`` event's ``path`` / ``verify_path``, updated by ``flows_moved``);
a transfer the DCC did not steer is laid on the fewest-hop path (the fabric's default
forwarding; on equal-length alternatives it may have taken another). The report says how many
bytes each way covers. Control messages and inference queries are not in the events per
message, so they are not counted.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from testbed import compare
from testbed.rundir import RunDir, RunDirError, load_run

__all__ = ["add_parser", "write_report", "after_run", "link_traffic", "host_traffic", "flow_tables", "timeline"]

# what the timeline shows, and how (the rest of the events are in events.jsonl)
TIMELINE_KINDS = (
    "network_up", "dcc_converged", "clients_go", "task_submitted", "feasibility", "itinerary", "replan",
    "flows_moved", "no_path", "link_changed", "capacity_changed", "node_crashed", "link_down", "link_up",
    "node_down", "node_expired", "node_joined", "transfer_failed", "data_unusable", "raw_data_transfer",
    "task_end", "task_result", "model_deployed", "workload_started", "workload_result",
    "controller_errors", "error", "message_dropped", "warning", "nodes_finished")
# discovery noise before the clients start (the DCC learning the topology) is left out
SETUP_NOISE = ("link_up", "link_down", "node_joined")
FAULTS = ("link_down", "node_down", "node_expired", "node_crashed", "transfer_failed", "link_changed",
          "no_path", "controller_errors", "error")


def _md(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _table(head: list[str], rows: list[list]) -> str:
    if not rows:
        return "_none_\n"
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_md("" if c is None else c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _f(x, fmt="{:.3f}"):
    return "-" if x is None else fmt.format(x)


def _options(d) -> str:
    if not isinstance(d, dict):
        return "" if d is None else str(d)
    return ", ".join(f"{k} {v if not isinstance(v, list) else ','.join(map(str, v))}"
                     for k, v in d.items() if v not in (None, [], {}))


def zero_time(run: RunDir) -> float:
    """Time zero of the report: the clients start (the spec timeline's ``at_s`` counts from it)."""
    e = next((e for e in run.events if e["kind"] == "clients_go"), None)
    return e["t"] if e else compare.start_time(run)


def _end_time(run: RunDir) -> float:
    e = next((e for e in run.events if e["kind"] == "nodes_finished"), None)
    return e["t"] if e else run.events[-1]["t"]


# ---- timeline ------------------------------------------------------------------------------------
def _link_name(e: dict) -> str:
    if e.get("a") and e.get("b"):
        return f"{e['a']}-{e['b']}"
    ln = e.get("link")
    if isinstance(ln, list) and len(ln) == 2:
        return f"{ln[0]}-{ln[1]}"
    if isinstance(ln, list) and len(ln) == 4:  # dpid, port, dpid, port
        return f"s{ln[0]} port {ln[1]} - s{ln[2]} port {ln[3]}"
    return str(ln)


def describe(e: dict) -> str:
    k = e["kind"]
    g = e.get
    if k == "network_up":
        return f"network up in {g('seconds')} s"
    if k == "dcc_converged":
        return f"DCC learnt the topology ({g('links')} directed links) in {g('seconds')} s"
    if k == "clients_go":
        return "clients start (time 0 of the spec timeline)"
    if k == "task_submitted":
        return f"task {g('task')} submitted by {g('src')}: target {g('target_accuracy')}, deadline {g('deadline_s')} s"
    if k == "feasibility":
        why = "; ".join(g("reasons") or [])
        return (f"T-FAM: task {g('task')} {'feasible' if g('feasible') else 'INFEASIBLE'}"
                + (f" ({'notes' if g('feasible') else 'reasons'}: {why})" if why else ""))
    if k == "itinerary":
        return f"MTRCE ({g('policy')}): task {g('task')} itinerary {' -> '.join(g('itinerary') or [])}"
    if k == "replan":
        return (f"re-plan task {g('task')} ({g('cause')}) at {g('from')}: {' -> '.join(g('old') or [])} "
                f"=> {' -> '.join(g('new') or [])}")
    if k == "flows_moved":
        return f"task {g('task')} hop {g('hop')} flows moved ({g('cause')})"
    if k == "no_path":
        return f"task {g('task')} hop {g('hop')}: no path for {g('legs')} ({g('detail')})"
    if k == "link_changed":
        return f"spec timeline: link {_link_name(e)} set to {g('bw')} Mbit/s, loss {g('loss') or 0} %"
    if k == "capacity_changed":
        return f"DCC: capacity of {_link_name(e)} {g('old_mbps')} -> {g('new_mbps')} Mbit/s ({g('source')})"
    if k == "node_crashed":
        return f"spec timeline: node {g('node')} crashed (SIGKILL)"
    if k in ("link_down", "link_up"):
        return f"DCC: link {_link_name(e)} {k.split('_')[1]} ({g('cause')})"
    if k in ("node_down", "node_expired"):
        return f"DCC: node {g('node')} {k.split('_')[1]}" + (f": {g('reason')}" if g("reason") else "")
    if k == "node_joined":
        return f"DCC: node {g('node')} joined ({', '.join(g('roles') or [])})"
    if k == "transfer_failed":
        return f"{g('src')}: {g('msg')} to {g('to')} failed: {g('error')}"
    if k == "data_unusable":
        return f"{g('src')}: {g('reason')}"
    if k == "raw_data_transfer":
        return f"{g('src')} -> {g('to')}: {g('bytes')} B of raw data ({g('samples')} samples; {g('reason')})"
    if k == "task_end":
        return f"task {g('task')} ends at {g('src')}: {g('reason')} (accuracy {_f(g('accuracy'))})"
    if k == "task_result":
        return f"{g('src')}: task {g('task')} result: {g('end_reason')}, accuracy {g('accuracy')}, {g('hops')} hops"
    if k == "model_deployed":
        return f"task {g('task')} model version {g('version')} deployed to {g('to')}"
    if k == "workload_started":
        return f"{g('src')}: workload {g('workload')} starts: {g('queries')} queries at {g('rate_qps')} q/s to {g('server')}"
    if k == "workload_result":
        return (f"{g('src')}: workload {g('workload')}: {g('answered')}/{g('sent')} answered, accuracy "
                f"{_f(g('accuracy'))}, latency mean {_f(g('latency_ms_mean'), '{:.1f}')} ms, "
                f"p95 {_f(g('latency_ms_p95'), '{:.1f}')} ms")
    if k == "controller_errors":
        return f"the controller logged {len(g('lines') or [])} exception line(s): {(g('lines') or [''])[0]}"
    if k == "nodes_finished":
        return f"nodes finished (launcher exit code {g('returncode')})"
    rest = {x: y for x, y in e.items() if x not in ("t", "src", "kind")}
    return f"{g('src')}: {k} {rest}"


def timeline(run: RunDir) -> tuple[list[tuple[float, str, str]], int]:
    """(seconds since clients start, kind, text) of the events that tell the run's story, and how
    many teardown events after the nodes finished were left out."""
    t0, end = zero_time(run), _end_time(run)
    stopped: dict[str, float] = {}  # a node that stops on purpose stops reporting: not a fault
    for e in run.events:
        if e["kind"] == "node_stopping":
            stopped.setdefault(e["src"], e["t"])
    rows, teardown = [], 0
    for e in run.events:
        if e["kind"] not in TIMELINE_KINDS:
            continue
        if e["t"] > end or (e["kind"] in ("node_down", "node_expired")
                            and e["t"] >= stopped.get(e.get("node"), float("inf"))):
            teardown += 1
            continue
        if e["t"] < t0 and e["kind"] in SETUP_NOISE:
            continue
        rows.append((e["t"] - t0, e["kind"], describe(e)))
    return rows, teardown


# ---- traffic -------------------------------------------------------------------------------------
def host_traffic(run: RunDir) -> dict[str, dict]:
    """Per host: bytes sent and received in transfer events, and sent per message type."""
    out: dict[str, dict] = {}
    for e in run.events:
        if e["kind"] != "transfer":
            continue
        b = int(e.get("bytes") or 0)
        s = out.setdefault(e.get("src"), {"sent": 0, "received": 0, "by_msg": {}})
        s["sent"] += b
        s["by_msg"][e.get("msg")] = s["by_msg"].get(e.get("msg"), 0) + b
        out.setdefault(e.get("to"), {"sent": 0, "received": 0, "by_msg": {}})["received"] += b
    return out


def link_traffic(run: RunDir, topo=None) -> dict:
    """Bytes of transfer events per link and direction, laid on the path the DCC installed for
    them (else the fewest-hop path in ``topo``). Returns ``links`` {(a, b) sorted: {"a->b": bytes,
    "b->a": bytes}}, ``steered`` / ``fallback`` / ``unplaced`` bytes."""
    import networkx as nx

    g = topo.graph() if topo is not None else None
    current: dict[object, dict[str, list]] = {}  # task -> leg name -> path
    links: dict[tuple, dict] = {}
    tally = {"steered": 0, "fallback": 0, "unplaced": 0}
    for e in run.events:
        k = e["kind"]
        if k == "hop":
            current[e.get("task")] = {n: p for n, p in (("hop", e.get("path")), ("verify", e.get("verify_path"))) if p}
        elif k == "flows_moved" and isinstance(e.get("new"), dict):
            current.setdefault(e.get("task"), {}).update({n: p for n, p in e["new"].items() if p})
        elif k == "transfer":
            src, dst, b = e.get("src"), e.get("to"), int(e.get("bytes") or 0)
            path = next((p for p in current.get(e.get("task"), {}).values()
                         if p and p[0] == src and p[-1] == dst), None)
            how = "steered"
            if path is None:
                how = "fallback"
                try:
                    path = nx.shortest_path(g, src, dst) if g is not None else None
                except (nx.NetworkXException, nx.NodeNotFound):
                    path = None
            if path is None:
                tally["unplaced"] += b
                continue
            tally[how] += b
            for u, v in zip(path, path[1:]):
                key = tuple(sorted((u, v)))
                d = links.setdefault(key, {f"{key[0]}->{key[1]}": 0, f"{key[1]}->{key[0]}": 0})
                d[f"{u}->{v}"] += b
    return {"links": links, **tally}


# ---- flows ---------------------------------------------------------------------------------------
def flow_tables(run: RunDir) -> list[dict]:
    """Per switch dump in flows/: flows by DCC function, AI-task and AI-query flows, packets."""
    from controllers import cookies
    from testbed.results import parse_flow_dump

    out = []
    for p in sorted((run.path / "flows").glob("*.txt"), key=lambda p: (len(p.stem), p.stem)):
        text = p.read_text(errors="replace")
        if text.startswith("# dump failed"):
            out.append({"switch": p.stem, "error": text.strip()[2:]})
            continue
        try:
            flows = parse_flow_dump(text)
        except (KeyError, ValueError) as e:
            raise RunDirError(f"{p}: not an `ovs-ofctl dump-flows` output ({e}); the file is corrupted") from None
        by: dict[str, int] = {}
        for f in flows:
            name = cookies.function_of(f["cookie"]) or "not ours"
            by[name] = by.get(name, 0) + 1
        out.append({"switch": p.stem, "flows": len(flows), "by_function": by,
                    "packets": sum(f["n_packets"] for f in flows),
                    "ai_task": [f["line"] for f in flows if cookies.function_of(f["cookie"]) == "ai-task-hop"],
                    "ai_query": [f["line"] for f in flows if cookies.function_of(f["cookie"]) == "ai-query"]})
    return out


# ---- spec ----------------------------------------------------------------------------------------
def abridged_spec(spec: dict) -> dict:
    """The resolved spec without null and empty fields (and the synthetic-data block unless used)."""
    def prune(x):
        if isinstance(x, dict):
            d = {k: prune(v) for k, v in x.items()}
            return {k: v for k, v in d.items() if v not in (None, {}, [])}
        if isinstance(x, list):
            return [prune(v) for v in x]
        return x
    s = dict(spec)
    data = dict(s.get("data") or {})
    if data.get("dataset") != "synthetic":
        data.pop("synthetic", None)
    if data.get("partition") != "dirichlet":
        data.pop("alpha", None)
    if data.get("partition") != "k_labels":
        data.pop("labels_per_node", None)
    if data.get("partition") != "quantity_skew":
        data.pop("skew_sigma", None)
    s["data"] = data
    return prune(s)


# ---- the report ----------------------------------------------------------------------------------
def _lineage(run: RunDir) -> dict:
    lin = run.optional_json("lineage.json")
    if lin is not None:
        if not isinstance(lin.get("versions"), list):
            raise RunDirError(f"{run.path / 'lineage.json'}: has no 'versions' list; the file is corrupted "
                              f"(delete it and the report rebuilds the lineage from events.jsonl)")
        return lin
    from controllers.lineage import Lineage
    epochs = (run.spec.get("training") or {}).get("local_epochs")
    lineage = Lineage.from_events(run.events, epochs=epochs)
    d = lineage.to_dict()
    d["problems"] = lineage.problems()
    d["notes"] = ["rebuilt from events.jsonl (no lineage.json in the run directory)"] + d["notes"]
    return d


def write_report(run_dir: str | Path, out: str | Path | None = None, warn=None) -> Path:
    """Write the Markdown report of ``run_dir`` (default RUN_DIR/report/report.md) and its PNGs
    next to it; return the Markdown file's path. RunDirError if the run cannot be read."""
    warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr))
    run = load_run(run_dir)
    md_path = Path(out) if out else run.path / "report" / "report.md"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    stem = md_path.stem
    png = lambda name: md_path.parent / f"{stem}-{name}.png"  # noqa: E731
    t0 = zero_time(run)
    row = compare.run_metrics(run)
    topo = run.topology()
    man = run.manifest or {}
    L: list[str] = []
    add = L.append

    add(f"# Run report: {run.name} ({run.run_id})\n")
    mach = man.get("machine") or {}
    vers = man.get("versions") or {}
    add(f"- run directory: `{run.path}`; spec: `{man.get('spec', '?')}`; seed {run.seed}; mode {run.mode}; "
        f"MTRCE policy {run.policy}")
    add(f"- started {man.get('started', '?')} on {mach.get('hostname', '?')} (kernel {mach.get('kernel', '?')}, "
        f"{mach.get('cpus', '?')} CPUs, Python {mach.get('python', '?')}); "
        + ", ".join(f"{k} {v}" for k, v in vers.items() if v))
    add("- times below are seconds since the clients started (the spec timeline's time 0), "
        "unless a section says otherwise\n")

    # ---- outcome
    add("## Outcome\n")
    rows = []
    for t, s in zip(row["task_details"], run.summary["tasks"]):
        est = s.get("estimate") or {}
        rows.append([t["id"], s.get("client"), t["target_accuracy"], _f(t["final_accuracy"]),
                     "yes" if t["reached"] else "no", _f(t["time_to_target_s"]), t["end_reason"], t["hops"],
                     t["replans"], t["model_bytes"], s.get("raw_data_bytes_sent"),
                     f"{_f(est.get('est_seconds'))} s / {est.get('est_bytes', '-')} B / {_f(est.get('expected_accuracy'))}"
                     if est else "-"])
    add(_table(["task", "client", "target", "final acc", "reached", "time to target s", "end", "hops",
                "re-plans", "model bytes", "raw-data bytes", "T-FAM estimate (s / bytes / acc)"], rows))
    net = run.summary.get("network") or {}
    add(f"Run totals: {compare.human_bytes(row['wire_bytes'])} in DA-ITN transfers, "
        f"{compare.human_bytes(row['raw_data_bytes'])} of raw training data on the network, "
        f"{run.summary.get('model_versions', '?')} model versions; network {net.get('hosts')} hosts, "
        f"{net.get('switches')} switches, {net.get('links')} links, set up in {net.get('setup_seconds')} s, "
        f"DCC converged in {net.get('convergence_seconds')} s; nodes marked down while running: "
        f"{', '.join(run.summary.get('nodes_marked_down') or []) or 'none'}.\n")
    if run.warnings:
        add("Caveats: " + "; ".join(run.warnings) + "\n")

    # ---- spec
    add("## Spec (resolved, abridged)\n")
    add("Null and empty fields left out; the full spec the run used is `spec.resolved.yaml`.\n")
    add("```yaml\n" + yaml.safe_dump(abridged_spec(run.spec), sort_keys=False, width=100).rstrip() + "\n```\n")

    # ---- topology and route
    add("## Topology and model route\n")
    if topo is None:
        add("_The topology could not be rebuilt from the spec (see caveats), so it is not drawn._\n")
    else:
        snap = run.optional_json("maps.json")
        drawn = run.path / "plots" / "maps.png"
        if snap is not None and drawn.is_file():  # the runner drew these maps already: half the time
            import shutil
            p = Path(shutil.copyfile(drawn, png("topology")))
        else:
            from testbed.mapsview import draw_maps
            p = draw_maps(snap or {}, topo, png("topology"),
                          title=f"{run.name}: topology and DRRT/QRRT at the end of the run")
        add(f"![topology]({p.name})\n")
        add(f"{topo.name}: {len(topo.switches)} switches, {len(topo.hosts)} hosts, {len(topo.links)} links. "
            + ("Nodes coloured by role, sized by data held; links coloured by utilisation as the DCC last "
               "measured it (`testbed/mapsview.py`)." if snap else
               "No maps.json in the run: roles and utilisation are unknown in the picture.") + "\n")
        roles = run.spec.get("nodes") or {}
        add(_table(["host", "roles", "options"],
                   [[h, ", ".join(r), _options((run.spec.get("hosts") or {}).get(h))]
                    for h, r in sorted(roles.items(), key=lambda kv: (len(kv[0]), kv[0]))]))
        backends: dict[str, int] = {}
        for ln in man.get("links") or []:
            backends[ln.get("backend")] = backends.get(ln.get("backend"), 0) + 1
        if backends:
            add("Link backends: " + ", ".join(f"{v} links {k}" for k, v in backends.items()) + ".\n")
        rp = compare.draw_route(run, png("route"))
        if rp is not None:
            add(f"![model route]({rp.name})\n")
            add("Each hop's network path as the DCC installed it (`hop` events), numbered in order; "
                "verification legs to the MPVU are not drawn.\n")

    # ---- timeline
    add("## Timeline\n")
    planned = run.spec.get("timeline") or []
    if planned:
        add("Spec timeline (planned, and when the runner applied it):\n")
        applied = {(e["kind"], e.get("at_s")): e["t"] - t0 for e in run.events
                   if e["kind"] in ("link_changed", "node_crashed") and e.get("src") == "testbed"}
        prow = []
        for it in planned:
            kind = "link_changed" if it.get("kind") == "set_link" else "node_crashed"
            what = {k: v for k, v in it.items() if k not in ("at_s", "kind") and v is not None}
            got = applied.get((kind, it.get("at_s")))
            prow.append([it.get("at_s"), it.get("kind"), what, "not applied" if got is None else f"{got:.2f}"])
        add(_table(["at s", "kind", "what", "applied at s"], prow))
    events, teardown = timeline(run)
    add("Events (faults **bold**; the DCC's topology discovery before the clients start is left out"
        + (f"; {teardown} events of the teardown after the nodes finished are left out" if teardown else "")
        + "):\n")
    add(_table(["t s", "event", "what"],
               [[f"{t:.3f}", f"**{k}**" if k in FAULTS else k, text] for t, k, text in events]))

    # ---- plans
    add("## Plans and re-plans\n")
    for t in run.summary["tasks"]:
        tid = t["id"]
        plan = next((e for e in run.events if e["kind"] == "plan" and e.get("task") == tid), None)
        feas = next((e for e in run.events if e["kind"] == "feasibility" and e.get("task") == tid), None)
        add(f"### Task {tid}\n")
        if feas is not None:
            add(f"- T-FAM: {'feasible' if feas.get('feasible') else '**infeasible**'}"
                + (f"; {'notes' if feas.get('feasible') else 'reasons'}: {'; '.join(feas.get('reasons') or [])}"
                   if feas.get("reasons") else "")
                + f"; estimate {_f(feas.get('est_seconds'))} s, {feas.get('est_bytes')} B, expected accuracy "
                  f"{_f(feas.get('expected_accuracy'))}")
        if plan is not None:
            stops = [s.get("node") for s in plan.get("stops") or []]
            add(f"- MTRCE plan ({plan.get('policy')}, {_f(plan.get('planning_ms'), '{:.1f}')} ms to plan): stops "
                f"{' -> '.join(map(str, stops)) or '-'}, {plan.get('laps')} lap(s) (ends after {plan.get('end_after')}), "
                f"MPVU {plan.get('mpvu')}, labels covered {plan.get('labels_covered')}")
            if plan.get("reasons"):
                add(f"- plan notes: {'; '.join(plan['reasons'])}")
        if plan is None and feas is None:
            add("- no plan recorded for this task")
        est = t.get("estimate") or {}
        if est:
            add(f"- estimate vs actual: {_f(est.get('est_seconds'))} s vs {_f(est.get('actual_seconds'))} s "
                f"(ratio {est.get('seconds_ratio')}), {est.get('est_bytes')} B vs {est.get('actual_bytes')} B "
                f"(ratio {est.get('bytes_ratio')}), accuracy {_f(est.get('expected_accuracy'))} vs "
                f"{_f(est.get('actual_accuracy'))}")
        reps = [e for e in run.events if e["kind"] == "replan" and e.get("task") == tid]
        add("")
        add(_table(["t s", "cause", "at", "old itinerary", "new itinerary", "feasible", "reasons"],
                   [[f"{e['t'] - t0:.3f}", e.get("cause"), e.get("from"), " -> ".join(e.get("old") or []),
                     " -> ".join(e.get("new") or []), e.get("feasible"), "; ".join(e.get("reasons") or [])]
                    for e in reps]) if reps else "No re-plan.\n")
        hops = compare.hop_routes(run).get(tid, [])
        inst = {}
        for e in run.events:
            if e["kind"] == "hop_flows_installed" and e.get("task") == tid:
                inst.setdefault(e.get("hop"), e.get("ms"))
        hop_flows = {e.get("hop"): e.get("flows") for e in run.events if e["kind"] == "hop" and e.get("task") == tid}
        acc = {e.get("hop"): e.get("accuracy") for e in run.events if e["kind"] == "evaluation" and e.get("task") == tid}
        add("Hops (the DCC's answer before each move):\n")
        add(_table(["hop", "lap", "from -> to", "path", "reason", "flows", "installed in ms", "accuracy after"],
                   [[h["hop"], h["lap"], f"{h['from']} -> {h['to']}", " ".join(h["path"]), h["reason"],
                     hop_flows.get(h["hop"]), _f(inst.get(h["hop"]), "{:.1f}"), _f(acc.get(h["hop"]))]
                    for h in hops]))

    # ---- accuracy
    add("## Accuracy over time\n")
    subs = [e["t"] for e in run.events if e["kind"] == "task_submitted"]
    results_t = [e["t"] for e in run.events if e["kind"] == "task_result"]
    markers = []
    if subs:
        lo, hi = min(subs), max(results_t) if results_t else _end_time(run)
        for e in run.events:
            if lo <= e["t"] <= hi and (e["kind"] == "replan" or e["kind"] in FAULTS):
                markers.append((e["t"] - lo, e["kind"] if e["kind"] != "replan" else f"replan: {e.get('cause')}"))
    ap = compare.plot_accuracy([row], "s", png("accuracy"),
                               f"{run.name}: MPVU accuracy after each hop (red: faults, re-plans)", markers)
    add(f"![accuracy over time]({ap.name})\n")
    add("x: seconds since the task was submitted (markers: since the first submission).\n")
    for c in row["curves"]:
        add(_table(["hop", "trained at", "s since submission", "bytes so far", "accuracy"],
                   [[p["hop"], p["at"], f"{p['s']:.3f}", p["bytes"], _f(p["accuracy"])] for p in c["points"]]))

    # ---- traffic
    add("## Traffic\n")
    hosts = host_traffic(run)
    add("Per host, from `transfer` events (DA-ITN bulk messages as sent; control messages to the DCC and "
        "inference queries are not recorded per message):\n")
    add(_table(["host", "sent B", "received B", "sent by message type"],
               [[h, d["sent"], d["received"], ", ".join(f"{m} {b}" for m, b in sorted(d["by_msg"].items()))]
                for h, d in sorted(hosts.items(), key=lambda kv: (len(str(kv[0])), str(kv[0])))]))
    lt = link_traffic(run, topo)
    if lt["links"]:
        items = sorted(lt["links"].items(), key=lambda kv: -sum(kv[1].values()))
        add(_table(["link", "bytes each way", "total B"],
                   [[f"{a}-{b}", ", ".join(f"{d} {v}" for d, v in dirs.items()), sum(dirs.values())]
                    for (a, b), dirs in items]))
        tp = _plot_links(items, png("traffic"), run.name)
        add(f"![bytes per link]({tp.name})\n")
    add(f"Attribution: {lt['steered']} B on paths the DCC installed for them, {lt['fallback']} B on the "
        f"fewest-hop path (default forwarding), {lt['unplaced']} B not placed (no topology or no path).\n")

    # ---- flows
    add("## Flows\n")
    add(f"The DCC installed {net.get('flows_installed_by_dcc', '?')} flows and deleted "
        f"{net.get('flows_deleted_by_dcc', '?')} during the run; {net.get('flows_in_dumps', '?')} were in the "
        f"switches at the end ({net.get('flows_in_dumps_with_dcc_cookie', '?')} with a DCC cookie).\n")
    tables = flow_tables(run)
    if not tables:
        add("_No flow dumps (flows/ is empty or missing)._\n")
    else:
        fns = sorted({f for t in tables for f in t.get("by_function", {})})
        add(_table(["switch", "flows", *fns, "packets matched"],
                   [[t["switch"], t.get("flows", t.get("error")), *[t.get("by_function", {}).get(f, 0) for f in fns],
                     t.get("packets", "-")] for t in tables]))
        ai = [(t["switch"], ln) for t in tables for ln in t.get("ai_task", []) + t.get("ai_query", [])]
        if ai:
            add("AI-task and AI-query flows in the end-of-run dumps:\n")
            add("```\n" + "\n".join(f"{s}: {ln}" for s, ln in ai[:60]) + "\n```\n")
        else:
            add("No AI-task or AI-query flow is in the end-of-run dumps: the DCC removes a task's flows "
                "when it ends (`task_flows_removed`). The AI-task flows each hop had are in the hop tables "
                "above (`flows`, and the time to install them).\n")
    removed = [e for e in run.events if e["kind"] == "task_flows_removed"]
    if removed:
        add("Task flows removed: " + "; ".join(f"task {e.get('task')} after {e.get('hops')} hops, "
                                               f"{e.get('replans')} re-plans" for e in removed) + ".\n")

    # ---- queries
    if row["queries_sent"]:
        add("## Inference queries\n")
        add(_table(["workload", "server", "model", "answered/sent", "refused", "accuracy", "mean ms", "p95 ms"],
                   [[w.get("workload"), w.get("server"), w.get("model"), f"{w.get('answered')}/{w.get('sent')}",
                     w.get("refused"), _f(w.get("accuracy")), _f(w.get("latency_ms_mean"), "{:.1f}"),
                     _f(w.get("latency_ms_p95"), "{:.1f}")] for w in row["workloads"]]))
        def ms(x):
            return "n/a" if x is None else f"{x:.1f} ms"
        add(f"Over the run: {row['queries_answered']}/{row['queries_sent']} answered; latency p50 "
            f"{ms(row['latency_p50_ms'])}, p99 {ms(row['latency_p99_ms'])}, mean {ms(row['latency_mean_ms'])}, "
            f"p95 {ms(row['latency_p95_ms'])} ({row['latency_note']}).\n")

    # ---- lineage
    add("## Model lineage\n")
    lin = _lineage(run)
    vrows = []
    for v in lin["versions"]:
        verdicts = ", ".join(f"{d.get('by')} {_f(d.get('accuracy'))}" for d in v.get("verdicts") or [])
        vrows.append([v.get("task"), v.get("version"), (v.get("sha256") or "")[:12],
                      (v.get("parent_sha256") or "-")[:12], v.get("trained_at") or "(initial)", v.get("samples"),
                      verdicts or "-", _f(v["t"] - t0 if isinstance(v.get("t"), (int, float)) else None)])
    add(_table(["task", "version", "sha256", "parent", "trained at", "samples", "verdicts", "t s"], vrows))
    add("Problems: " + ("; ".join(lin.get("problems") or []) or "none (a whole, verified chain)") + ".\n")
    if lin.get("notes"):
        add("Notes: " + "; ".join(lin["notes"]) + ".\n")

    add("## Files\n")
    add("`summary.json` (results), `events.jsonl` (every event), `lineage.json`, `maps.json`, `flows/` "
        "(switch dumps), `pcaps/` (`daitn trace RUN_DIR`), `logs/` in the run directory.\n")
    md_path.write_text("\n".join(L))
    for w in run.warnings:
        warn(w)
    return md_path


def _plot_links(items: list, path: Path, name: str) -> Path:
    from matplotlib.ticker import EngFormatter

    items = items[:25]
    fig, ax = compare._figure(8, 0.9 + 0.28 * len(items))
    labels = [f"{a}-{b}" for (a, b), _ in items][::-1]
    fwd = [list(d.values())[0] for _, d in items][::-1]
    back = [list(d.values())[1] for _, d in items][::-1]
    ax.barh(labels, fwd, color="tab:blue", label="first named -> second")
    ax.barh(labels, back, left=fwd, color="tab:orange", label="second -> first")
    ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
    ax.set_xlabel("bytes (transfer events laid on their paths)")
    ax.set_title(f"{name}: bytes per link" + (" (25 busiest)" if len(items) == 25 else ""), fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def after_run(run_dir: Path, say) -> Path | None:
    """The report ``daitn run`` writes at the end of every run; a failure is said, never raised:
    the run's results stand without it (``daitn report RUN_DIR`` tries again)."""
    try:
        path = write_report(run_dir, warn=lambda m: say(f"report: {m}"))
        say(f"report: {path}")
        return path
    except Exception as e:  # noqa: BLE001 - a convenience must not fail a finished run
        say(f"report not written ({type(e).__name__}: {e}); try: daitn report {run_dir}")
        return None


def cmd_report(a) -> int:
    try:
        path = write_report(a.run_dir, a.out)
    except RunDirError as e:
        print(f"daitn report: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the run was read; the report could not be written
        print(f"daitn report: cannot write the report ({e.strerror}: {e.filename}); choose another --out",
              file=sys.stderr)
        return 2
    print(f"wrote {path} (and its PNGs in {path.parent})")
    return 0


def add_parser(subparsers):
    """Register ``daitn report`` (dispatched through ``fn``, as in testbed.cli)."""
    p = subparsers.add_parser("report", help="a Markdown report with PNGs of one finished run",
                              description="Write a Markdown report of a finished run (spec, topology, "
                                          "timeline, plans, accuracy, traffic, flows, lineage) with its PNGs.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="FILE", help="the Markdown file (default RUN_DIR/report/report.md); "
                                                 "PNGs are written next to it")
    p.set_defaults(fn=cmd_report)
    return p
