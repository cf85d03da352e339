"""Run directory results: merged events, flow dumps, summary.json and plots.

Everything here works from files in a finished (or interrupted) run
directory, so summaries and plots can be remade without re-running.
"""
from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace
from pathlib import Path

from controllers import cookies
from controllers.tasks import estimate_vs_actual


def read_jsonl(path: Path) -> list[dict]:
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by a crash: the rest stays readable
    return out


class EventWatcher:
    """Tails node event files and reports progress lines."""

    SHOW = {"itinerary_received", "train", "evaluation", "task_end", "task_result", "error",
            "transfer_failed", "message_dropped", "replan", "aats_decision", "privacy_violation"}

    def __init__(self, run_dir: Path, say):
        self.dir = run_dir / "events"
        self.dcc = run_dir / "dcc-events.jsonl"
        self.say = say
        self.offsets: dict[Path, int] = {}

    def poll(self):
        new = []
        feed = getattr(self.say, "event", None)  # testbed.progress.Progress: the live table
        for p in sorted(self.dir.glob("*.jsonl")) + ([self.dcc] if self.dcc.exists() else []):
            with open(p) as f:
                f.seek(self.offsets.get(p, 0))
                chunk = f.read()
                # keep a partial last line for the next poll
                cut = chunk.rfind("\n") + 1
                self.offsets[p] = self.offsets.get(p, 0) + cut
            for line in chunk[:cut].splitlines():
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue
                new.append(e)
        for e in sorted(new, key=lambda e: e.get("t", 0)):  # nodes write separate files
            if feed is not None:
                feed(e)
            if e.get("kind") in self.SHOW:
                self.say(describe(e))


def describe(e: dict) -> str:
    k, s = e["kind"], e["src"]
    if k == "train" and e.get("aggregated_from"):  # fedavg: the server's average of a round
        return f"{s}: task {e['task']} round {e['hop']} averaged {len(e['aggregated_from'])} models ({e['samples']} samples)"
    if k == "train":
        return f"{s}: task {e['task']} hop {e['hop']} (lap {e['lap']}) trained on {e['samples']} samples, loss {e['loss']:.3f}"
    if k == "evaluation":
        return f"{s}: task {e['task']} hop {e['hop']} verified by {e['by']}: accuracy {e['accuracy']:.3f}"
    if k == "aats_decision":  # AATS: the model chose its next hop (or its end) here
        return f"{s}: task {e['task']} AATS {'next hop' if e.get('chosen') else 'end'}: {e['reason']}"
    if k == "privacy_violation":
        return f"{s}: raw data shipped to {e['to']} against its privacy level: {e['reason']}"
    if k == "itinerary_received":
        return f"{s}: task {e['task']} itinerary from DCC: {' -> '.join(e['itinerary'])}"
    if k == "replan":
        return (f"{s}: task {e.get('task')} re-planned ({e.get('cause')}): "
                f"{' -> '.join(e.get('old') or [])} => {' -> '.join(e.get('new') or [])}")
    if k == "task_result":
        return f"{s}: task {e['task']} finished: {e['end_reason']} (accuracy {e['accuracy']})"
    return f"{s}: {k} " + json.dumps({x: y for x, y in e.items() if x not in ('t', 'src', 'kind')})


def dump_flows(switches: list[str], flow_dir: Path):
    for s in switches:
        r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", s],
                           capture_output=True, text=True)
        (flow_dir / f"{s}.txt").write_text(r.stdout if r.returncode == 0 else f"# dump failed: {r.stderr}")


def parse_flow_dump(text: str) -> list[dict]:
    """Flows in an ``ovs-ofctl dump-flows`` text: cookie, priority, n_packets, raw line."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("cookie="):
            continue
        fields = {}
        for part in line.replace(", ", ",").split(","):
            if "=" in part and " " not in part.split("=", 1)[0]:
                k, v = part.split("=", 1)
                fields[k.strip()] = v.split(" ")[0]
        prio = next((p.split("=")[1] for p in line.split(",") if p.strip().startswith("priority=")), "0")
        out.append({"cookie": int(fields["cookie"], 16), "priority": int(prio.split(" ")[0]),
                    "n_packets": int(fields.get("n_packets", 0)), "line": line})
    return out


def write_events(run_dir: Path, runner_events: list[dict]):
    """Merge controller, node and runner events into one time-ordered events.jsonl."""
    evs = list(runner_events) + read_jsonl(run_dir / "dcc-events.jsonl")
    for p in sorted((run_dir / "events").glob("*.jsonl")):
        evs += read_jsonl(p)
    evs.sort(key=lambda e: e.get("t", 0))
    with open(run_dir / "events.jsonl", "w") as f:
        for e in evs:
            f.write(json.dumps(e, sort_keys=True) + "\n")


def summarize(run_dir: Path, spec, net_info: dict) -> dict:
    events = read_jsonl(run_dir / "events.jsonl")
    tasks = []
    # the spec's tasks, then those submitted through the DCC's API while the run went on
    wanted = [dict(t.model_dump(), submitted=False) for t in spec.tasks]
    known = {t["id"] for t in wanted}
    for e in events:
        if e["kind"] == "task_handed_off" and e.get("task") not in known:
            known.add(e["task"])
            wanted.append({"id": e["task"], "client": e["src"], "target_accuracy": e["target_accuracy"],
                           "submitted": True})
    for t in (SimpleNamespace(**w) for w in wanted):
        tev = [e for e in events if e.get("task") == t.id]
        visits = [e["src"] for e in tev if e["kind"] == "train"]
        evals = [e for e in tev if e["kind"] == "evaluation"]
        plan = next((e["itinerary"] for e in events
                     if e["kind"] == "itinerary" and e.get("task") == t.id), [])
        result = next((e for e in tev if e["kind"] == "task_result"), {})
        # the model's bytes: raw shards a task pulled (centralized mode) are raw_data_bytes_sent
        transfers = [e for e in tev if e["kind"] == "transfer" and e.get("msg") != "DATA_SHARD"]
        final = evals[-1]["accuracy"] if evals else None
        tasks.append({
            "id": t.id, "client": t.client, "target_accuracy": t.target_accuracy, "submitted": t.submitted,
            "final_accuracy": final,
            "reached": final is not None and final >= t.target_accuracy,
            "end_reason": result.get("end_reason", "no result recorded"),
            "itinerary": visits, "planned_itinerary": plan, "hops": len(visits),
            "model_bytes_sent": sum(e["bytes"] for e in transfers),
            "model_transfers": len(transfers),
            # No code path ships training samples; counted from events of kind
            # raw_data_transfer should a mode ever allow it (centralised baseline).
            "raw_data_bytes_sent": sum(e.get("bytes", 0) for e in tev if e["kind"] == "raw_data_transfer"),
            "seconds": result.get("seconds"),
            # T-FAM's estimate (at planning time) next to what happened
            "estimate": estimate_vs_actual(
                next((e for e in events if e["kind"] == "feasibility" and e.get("task") == t.id), None),
                result.get("seconds"), sum(e["bytes"] for e in transfers) if transfers else None, final),
            "replans": sum(1 for e in events if e["kind"] == "replan" and e.get("task") == t.id),
            **mode_task_summary(spec.mode, tev),
        })
    flow_count = 0
    ours = 0
    for p in sorted((run_dir / "flows").glob("*.txt")):
        for f in parse_flow_dump(p.read_text()):
            flow_count += 1
            ours += cookies.function_of(f["cookie"]) is not None
    net = dict(net_info, flows_in_dumps=flow_count, flows_in_dumps_with_dcc_cookie=ours)
    # OAM: every model version with its parent, where it was trained and its verdicts
    from controllers.lineage import Lineage
    lineage = Lineage.from_events(events, epochs=spec.training.local_epochs)
    lin = lineage.to_dict()
    lin["problems"] = lineage.problems()
    (run_dir / "lineage.json").write_text(json.dumps(lin, indent=1))
    raw = [e for e in events if e["kind"] == "raw_data_transfer"]
    stopped = {}
    for e in events:
        if e["kind"] == "node_stopping":
            stopped.setdefault(e["src"], e["t"])
    summary = {"mode": spec.mode, "name": spec.name, "seed": spec.seed, "tasks": tasks, "network": net,
               # raw training samples that crossed the network (only where the spec lets a
               # data node without compute use a trusted compute node); 0 otherwise
               "raw_data_bytes_sent": sum(e.get("bytes", 0) for e in raw),
               "model_versions": len(lin["versions"]), "lineage_problems": lin["problems"],
               # inference queries submitted through the DCC's API (daitn submit query)
               "submitted_queries": [{k: e.get(k) for k in ("id", "client", "model", "status", "server", "label",
                                                             "confidence", "latency_ms", "error")}
                                     for e in events if e["kind"] == "submitted_query_ended"],
               "raw_data_transfers": [{k: e.get(k) for k in ("src", "to", "bytes", "samples", "reason")}
                                      for e in raw],
               # nodes the DCC marked down before they stopped on purpose (at the end
               # of a run every node stops reporting)
               "nodes_marked_down": sorted({e["node"] for e in events if e["kind"] == "node_down"
                                            and e["t"] < stopped.get(e["node"], float("inf"))}),
               **mode_run_summary(events)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def mode_task_summary(mode: str, tev: list[dict]) -> dict:
    """A task's figures particular to its mode (nodes/modes.py); {} in DCC mode."""
    if mode == "fedavg":
        rounds = [e for e in tev if e["kind"] == "fedavg_round"]
        return {"rounds": len(rounds), "participants": sorted({n for e in rounds for n in e["received"]},
                                                               key=lambda h: int(h[1:]))}
    if mode == "centralized":
        pooled = next((e for e in tev if e["kind"] == "data_pooled"), {})
        return {"epochs": sum(1 for e in tev if e["kind"] == "train"), "pooled_from": pooled.get("nodes", [])}
    if mode in ("autonomous", "random_walk"):
        kind = "aats_decision" if mode == "autonomous" else "walk_step"
        return {"decisions": sum(1 for e in tev if e["kind"] == kind)}
    return {}


def mode_run_summary(events: list[dict]) -> dict:
    """Run-wide costs of the non-DCC modes: raw data shipped against a node's privacy
    level (centralized), data kept back, and AATS gossip (KNOWLEDGE_REPORTs node to node)."""
    out = {}
    bad = [e for e in events if e["kind"] == "privacy_violation"]
    kept = [e for e in events if e["kind"] == "data_withheld"]
    if bad or kept:
        out["privacy"] = {"violations": [{k: e.get(k) for k in ("node", "to", "privacy", "reason", "bytes")}
                                         for e in bad],
                          "violating_bytes": sum(e.get("bytes", 0) for e in bad),
                          "withheld": [{"node": e["src"], "to": e.get("to"), "reason": e.get("reason")} for e in kept]}
    gossip = [e for e in events if e["kind"] == "gossip"]
    if gossip:
        out["gossip"] = {"exchanges": len(gossip), "messages": 2 * len(gossip),
                         "bytes": sum(e.get("bytes", 0) for e in gossip)}
    return out


def plot(run_dir: Path):
    """Accuracy vs time per task, each hop marked with the host it trained at."""
    from matplotlib.figure import Figure

    events = read_jsonl(run_dir / "events.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text())
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for t in summary["tasks"]:
        start = next((e["t"] for e in events if e["kind"] == "task_submitted" and e.get("task") == t["id"]), None)
        evals = [e for e in events if e["kind"] == "evaluation" and e.get("task") == t["id"]]
        if start is None or not evals:
            continue
        xs = [e["t"] - start for e in evals]
        ys = [e["accuracy"] for e in evals]
        ax.plot(xs, ys, marker="o", label=f"task {t['id']}")
        for x, y, e in zip(xs, ys, evals):
            ax.annotate(e["at"], (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ax.axhline(t["target_accuracy"], ls="--", lw=0.8, color="grey")
    ax.set_xlabel("seconds since task submission")
    ax.set_ylabel("MPVU verification accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{summary['name']}: accuracy after each hop (label = data node)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no evaluation recorded", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(run_dir / "plots" / "accuracy_vs_time.png", dpi=120)
