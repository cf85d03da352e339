"""``daitn compare``: several finished runs side by side - a table, compare.json/.csv and plots.

What each column means (measured from the run directory, never estimated):

- time to target: seconds from a task's submission (``task_submitted``) to the first MPVU
  verdict at or above its target (``evaluation``); for several tasks, from the first
  submission until the last task got there. Blank (``missed``) if a task never did.
- wire bytes: bytes of every DA-ITN bulk message the nodes sent (``transfer`` events: model
  chunks, verification requests, task results, data shards), as the sender counted them
  (header and payload, not TCP/IP). Control messages to the DCC and inference queries are
  not recorded per message, so they are not in it.
- raw-data bytes: training samples that crossed the network (``summary.json``).
- final accuracy: the MPVU's last verdict (``summary.json``); the worst task if several.
- queries: answered / sent. p50/p99 latency are computed only from per-query records
  (the client's ``submitted_query_result`` events; latency from the client sending the query to
  its answer, as workloads measure it - not the DCC's ``submitted_query_ended``, which counts
  from the API submission). Spec workloads record only their mean and p95
  (``workload_result``): those are shown as they are, and p50/p99 read ``n/a``.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

from testbed.rundir import RunDir, RunDirError, load_run

__all__ = ["add_parser", "compare", "run_metrics", "render_table", "accuracy_curves", "hop_routes",
           "draw_route", "percentile", "RunDirError"]

PER_QUERY_KINDS = ("submitted_query_result",)  # events that carry one query's latency_ms
CSV_FIELDS = ("label", "run_id", "name", "mode", "policy", "seed", "tasks", "tasks_reached",
              "time_to_target_s", "wire_bytes", "model_bytes", "raw_data_bytes", "final_accuracy",
              "queries_sent", "queries_answered", "latency_p50_ms", "latency_p99_ms",
              "latency_mean_ms", "latency_p95_ms", "run_dir")


# ---- metrics ---------------------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, the rule the client uses for its p95 (``lat[int(q * n)]``)."""
    if not sorted_values:
        return None
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def _first(events, kind, **match):
    return next((e for e in events if e["kind"] == kind
                 and all(e.get(k) == v for k, v in match.items())), None)


def start_time(run: RunDir) -> float:
    """Time zero of a run's curves: the first task submission (else clients start, else first event)."""
    for kind in ("task_submitted", "clients_go"):
        e = _first(run.events, kind)
        if e is not None:
            return e["t"]
    return run.events[0]["t"]


def task_metrics(run: RunDir) -> list[dict]:
    out = []
    for t in run.summary["tasks"]:
        tid = t["id"]
        sub = _first(run.events, "task_submitted", task=tid)
        target = t.get("target_accuracy")
        hit = next((e for e in run.events if e["kind"] == "evaluation" and e.get("task") == tid
                    and target is not None and (e.get("accuracy") or 0) >= target), None)
        out.append({"id": tid, "target_accuracy": target, "final_accuracy": t.get("final_accuracy"),
                    "reached": bool(t.get("reached")), "end_reason": t.get("end_reason"),
                    "hops": t.get("hops"), "replans": t.get("replans"),
                    "model_bytes": t.get("model_bytes_sent"),
                    "submitted_t": None if sub is None else sub["t"],
                    "reached_t": None if hit is None else hit["t"],
                    "time_to_target_s": None if sub is None or hit is None else round(hit["t"] - sub["t"], 4)})
    return out


def query_metrics(run: RunDir) -> dict:
    """Queries sent/answered and latency figures, each from where it was actually recorded."""
    per_query = [e for e in run.events if e["kind"] in PER_QUERY_KINDS]
    workloads = [e for e in run.events if e["kind"] == "workload_result"]
    sent = len(per_query) + sum(int(w.get("sent") or 0) for w in workloads)
    answered = sum(1 for e in per_query if e.get("answered")) + sum(int(w.get("answered") or 0) for w in workloads)
    lat = sorted(float(e["latency_ms"]) for e in per_query if e.get("answered") and e.get("latency_ms") is not None)
    out = {"sent": sent, "answered": answered, "p50_ms": None, "p99_ms": None, "mean_ms": None,
           "p95_ms": None, "note": None,
           "workloads": [{k: w.get(k) for k in ("workload", "server", "model", "sent", "answered", "failed",
                                                 "refused", "accuracy", "latency_ms_mean", "latency_ms_p95",
                                                 "latency_ms_p50", "latency_ms_p99")} for w in workloads],
           "per_query_records": len(per_query)}
    if not sent:
        out["note"] = "no queries in this run"
        return out
    answered_in_workloads = sum(int(w.get("answered") or 0) for w in workloads)
    if not answered_in_workloads:
        # every answered query has its own record: exact percentiles
        out.update(p50_ms=percentile(lat, 0.50), p99_ms=percentile(lat, 0.99), p95_ms=percentile(lat, 0.95),
                   mean_ms=sum(lat) / len(lat) if lat else None,
                   note=f"from {len(lat)} per-query records")
        return out
    # spec workloads record aggregates only; a mean combines exactly (weighted), percentiles do not
    means = [(int(w.get("answered") or 0), w.get("latency_ms_mean")) for w in workloads]
    if all(m is not None for n, m in means if n):
        total = sum(n * m for n, m in means if n) + sum(lat)
        out["mean_ms"] = total / (answered_in_workloads + len(lat))
    if len(workloads) == 1 and not lat:
        w = workloads[0]
        out.update(p95_ms=w.get("latency_ms_p95"), p50_ms=w.get("latency_ms_p50"), p99_ms=w.get("latency_ms_p99"))
    missing = [q for q in ("p50", "p99") if out[f"{q}_ms"] is None]
    out["note"] = ("workload_result records only mean and p95 latency (no per-query latencies), so "
                   + "/".join(missing) + " cannot be computed") if missing else "from workload_result"
    return out


def wire_bytes(run: RunDir) -> int:
    return sum(int(e.get("bytes") or 0) for e in run.events if e["kind"] == "transfer")


def raw_data_bytes(run: RunDir) -> int:
    if "raw_data_bytes_sent" in run.summary:
        return int(run.summary["raw_data_bytes_sent"] or 0)
    return sum(int(e.get("bytes") or 0) for e in run.events if e["kind"] == "raw_data_transfer")


def accuracy_curves(run: RunDir) -> list[dict]:
    """Per task: each MPVU verdict as (seconds since submission, wire bytes so far in the run, accuracy)."""
    transfers = [(e["t"], int(e.get("bytes") or 0)) for e in run.events if e["kind"] == "transfer"]
    t0 = start_time(run)
    out = []
    for t in run.summary["tasks"]:
        sub = _first(run.events, "task_submitted", task=t["id"])
        base = sub["t"] if sub else t0
        pts = []
        for e in run.events:
            if e["kind"] == "evaluation" and e.get("task") == t["id"] and e.get("accuracy") is not None:
                # the verification request itself has been sent when the verdict comes back
                sent = sum(b for tt, b in transfers if tt <= e["t"])
                pts.append({"s": round(e["t"] - base, 4), "bytes": sent, "accuracy": e["accuracy"],
                            "at": e.get("at"), "hop": e.get("hop")})
        out.append({"task": t["id"], "target_accuracy": t.get("target_accuracy"), "points": pts})
    return out


def hop_routes(run: RunDir) -> dict[int, list[dict]]:
    """Per task, the model's hops as the DCC steered them (``hop`` events): from, to, path, lap, reason."""
    out: dict[int, list[dict]] = {}
    for e in run.events:
        if e["kind"] == "hop" and e.get("path"):
            out.setdefault(e.get("task"), []).append(
                {"hop": e.get("hop"), "lap": e.get("lap"), "from": e.get("from"), "to": e.get("to"),
                 "path": list(e["path"]), "reason": e.get("reason"), "t": e["t"]})
    return out


def run_metrics(run: RunDir, label: str | None = None) -> dict:
    """The comparison row of one run (plus per-task details and curves)."""
    tasks = task_metrics(run)
    subs = [t["submitted_t"] for t in tasks if t["submitted_t"] is not None]
    hits = [t["reached_t"] for t in tasks]
    ttt = (round(max(hits) - min(subs), 4) if tasks and subs and all(h is not None for h in hits)
           and all(t["reached"] for t in tasks) else None)
    finals = [t["final_accuracy"] for t in tasks if t["final_accuracy"] is not None]
    q = query_metrics(run)
    return {"label": label or run.path.name, "run_dir": str(run.path), "run_id": run.run_id, "name": run.name,
            "mode": run.mode, "policy": run.policy, "seed": run.seed,
            "tasks": len(tasks), "tasks_reached": sum(t["reached"] for t in tasks),
            "time_to_target_s": ttt, "wire_bytes": wire_bytes(run),
            "model_bytes": sum(int(t["model_bytes"] or 0) for t in tasks),
            "raw_data_bytes": raw_data_bytes(run),
            "final_accuracy": min(finals) if finals else None,
            "queries_sent": q["sent"], "queries_answered": q["answered"],
            "latency_p50_ms": q["p50_ms"], "latency_p99_ms": q["p99_ms"],
            "latency_mean_ms": q["mean_ms"], "latency_p95_ms": q["p95_ms"], "latency_note": q["note"],
            "task_details": tasks, "workloads": q["workloads"], "curves": accuracy_curves(run),
            "warnings": list(run.warnings)}


# ---- text --------------------------------------------------------------------------------------
def _num(x, fmt="{:.3f}", none="-"):
    return none if x is None else fmt.format(x)


def human_bytes(n) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def render_table(rows: list[dict]) -> str:
    head = ("run", "run id", "name", "mode", "policy", "reached", "time-to-target s", "wire bytes",
            "raw-data bytes", "final acc", "queries ans/sent", "p50 ms", "p99 ms", "mean/p95 ms")
    body = []
    for r in rows:
        ttt = _num(r["time_to_target_s"], "{:.3f}") if r["time_to_target_s"] is not None else "missed"
        if r["queries_sent"]:
            q = f"{r['queries_answered']}/{r['queries_sent']}"
            p50, p99 = _num(r["latency_p50_ms"], "{:.1f}", "n/a"), _num(r["latency_p99_ms"], "{:.1f}", "n/a")
            mp = f"{_num(r['latency_mean_ms'], '{:.1f}', 'n/a')}/{_num(r['latency_p95_ms'], '{:.1f}', 'n/a')}"
        else:
            q, p50, p99, mp = "0", "-", "-", "-"
        body.append((r["label"], r["run_id"], r["name"], r["mode"], r["policy"],
                     f"{r['tasks_reached']}/{r['tasks']}", ttt, human_bytes(r["wire_bytes"]),
                     human_bytes(r["raw_data_bytes"]), _num(r["final_accuracy"]), q, p50, p99, mp))
    width = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    left = {0, 1, 2, 3, 4}
    lines = ["  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(x, width))).rstrip() for x in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in width))
    notes = sorted({r["latency_note"] for r in rows if r["queries_sent"] and r["latency_note"]})
    if notes:
        lines.append("")
        lines += [f"latency: {n}" for n in notes]
    return "\n".join(lines)


# ---- plots -------------------------------------------------------------------------------------
def _figure(w=8, h=4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def plot_accuracy(rows: list[dict], xkey: str, path: Path, title: str, markers: list[tuple] = ()) -> Path:
    """Accuracy of every run's tasks against ``xkey`` ("s" or "bytes"), all runs overlaid.
    ``markers``: (x, text) vertical lines (faults, re-plans) for one-run pictures."""
    from matplotlib.ticker import EngFormatter

    fig, ax = _figure()
    targets = set()
    drawn = 0
    for r in rows:
        for c in r["curves"]:
            if not c["points"]:
                continue
            lab = r["label"] if r["tasks"] == 1 else f"{r['label']} task {c['task']}"
            ax.plot([p[xkey] for p in c["points"]], [p["accuracy"] for p in c["points"]], marker="o",
                    ms=4, label=lab)
            drawn += 1
            if c["target_accuracy"] is not None:
                targets.add(c["target_accuracy"])
    for tgt in sorted(targets):
        ax.axhline(tgt, ls="--", lw=0.8, color="grey")
        ax.annotate(f"target {tgt:g}", (0, tgt), xycoords=("axes fraction", "data"), xytext=(3, 3),
                    textcoords="offset points", fontsize=7, color="grey")
    for x, text in markers:
        ax.axvline(x, color="tab:red", lw=0.8, alpha=0.6)
        ax.annotate(text, (x, 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                    color="tab:red", xytext=(2, 0), textcoords="offset points")
    if xkey == "bytes":
        ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
        ax.set_xlabel("bytes on the wire so far (DA-ITN transfers)")
    else:
        ax.set_xlabel("seconds since task submission")
    ax.set_ylabel("MPVU verification accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    if drawn:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no evaluation recorded", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def route_overlay(routes: dict[int, list[dict]]):
    """An overlay for :func:`testbed.mapsview.draw_maps`: each hop's network path as an arrow,
    numbered in order; repeated legs (laps) are drawn side by side, offset."""
    def draw(ax, pos):
        import matplotlib
        from matplotlib.lines import Line2D

        xs = [p[0] for p in pos.values()] or [0.0]
        ys = [p[1] for p in pos.values()] or [0.0]
        span = max(max(xs) - min(xs), max(ys) - min(ys)) or 1.0
        hops = [h for task in sorted(routes, key=str) for h in routes[task]]
        # red to yellow: stands out on the utilisation colours (plasma) and the role colours
        cmap = matplotlib.colormaps["autumn"]
        used: dict[frozenset, int] = {}  # legs of several hops over one link: side by side
        for i, h in enumerate(hops):
            names = [n for n in h["path"] if n in pos]
            if len(names) < 2:
                continue
            colour = cmap(0.75 * i / max(1, len(hops) - 1))  # the yellow end is unreadable on white
            shifted = []
            for u, v in zip(names, names[1:]):
                (x1, y1), (x2, y2) = pos[u], pos[v]
                k = used[frozenset((u, v))] = used.get(frozenset((u, v)), -1) + 1
                # offsets relative to a fixed orientation of the link, so that both directions spread
                sign = 1 if (u, v) == tuple(sorted((u, v))) else -1
                off = 0.011 * span * ((k + 1) // 2) * (1 if k % 2 else -1) * sign
                dx, dy = x2 - x1, y2 - y1
                n = math.hypot(dx, dy) or 1.0
                ox, oy = -dy / n * off, dx / n * off
                shifted.append(((x1 + ox, y1 + oy), (x2 + ox, y2 + oy)))
            last = h is hops[-1] or str(h.get("reason") or "").startswith("task ends")
            for j, (a, b) in enumerate(shifted):
                ax.annotate("", xy=b, xytext=a, zorder=11,
                            arrowprops=dict(arrowstyle="-|>" if j == len(shifted) - 1 else "-",
                                            color=colour, lw=1.8, alpha=0.9,
                                            linestyle="--" if last else "-", shrinkA=0, shrinkB=4))
            a, b = shifted[len(shifted) // 2]
            f = 0.3 + 0.2 * (i % 3)  # legs sharing a link: numbers not on top of each other
            ax.annotate(str(h["hop"]), (a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1])), fontsize=7, zorder=12,
                        ha="center", va="center", color="black",
                        bbox=dict(boxstyle="circle,pad=0.15", fc=colour, ec="0.2", lw=0.5))
        old = ax.get_legend()
        handles = [Line2D([], [], color=cmap(0.0), lw=2, label="model route: hop 1 (legs numbered in order)"),
                   Line2D([], [], color=cmap(0.75), lw=2, ls="--", label="last leg (task ends: back to the client)")]
        if not hops:
            ax.text(0.5, 0.97, "no model hop recorded in this run", transform=ax.transAxes, ha="center",
                    fontsize=9, color="tab:red", zorder=12)
        ax.legend(handles=handles, loc="upper left", fontsize=7.5, framealpha=0.85)
        if old is not None:
            ax.add_artist(old)
    return draw


def draw_route(run: RunDir, path: Path, title: str | None = None) -> Path | None:
    """The run's model route(s) over its topology and end-of-run maps; None if no topology."""
    from testbed.mapsview import draw_maps

    topo = run.topology()
    if topo is None:
        return None
    snapshot = run.optional_json("maps.json") or {}
    routes = hop_routes(run)
    stops = " -> ".join(h["to"] for task in routes.values() for h in task if h.get("to"))
    return draw_maps(snapshot, topo, path, overlay=route_overlay(routes),
                     title=title or f"{run.name} ({run.run_id}): model route over the DRRT at the end of the run"
                                    + (f"\n{_wrap(stops)}" if stops else ""))


def _wrap(text: str, width: int = 110) -> str:
    out, line = [], ""
    for word in text.split(" "):
        if len(line) + len(word) + 1 > width:
            out.append(line)
            line = ""
        line = f"{line} {word}".strip()
    return "\n".join(out + [line])


# ---- the verb ----------------------------------------------------------------------------------
def _labels(runs: list[RunDir]) -> list[str]:
    names = [r.path.name or str(r.path) for r in runs]
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


def compare(run_dirs: list[str | Path], out: str | Path, warn=None) -> dict:
    """Read every run (RunDirError on the first unreadable one), write compare.json, compare.csv and
    the plots to ``out``; return the comparison (``rows``, ``files``)."""
    warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr))
    runs = [load_run(p) for p in run_dirs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_metrics(r, lab) for r, lab in zip(runs, _labels(runs))]
    files = {"accuracy_vs_time": str(plot_accuracy(rows, "s", out / "accuracy_vs_time.png",
                                                   "MPVU accuracy after each hop vs time")),
             "accuracy_vs_bytes": str(plot_accuracy(rows, "bytes", out / "accuracy_vs_bytes.png",
                                                    "MPVU accuracy after each hop vs bytes on the wire")),
             "routes": {}}
    for r, row in zip(runs, rows):
        p = draw_route(r, out / "routes" / f"{_safe(row['label'])}.png")
        if p is not None:
            files["routes"][row["label"]] = str(p)
    for r, row in zip(runs, rows):  # topology() may have added one
        row["warnings"] = list(r.warnings)
        for w in r.warnings:
            warn(w)
    result = {"definitions": _definitions(), "rows": rows, "files": files}
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    files["json"], files["csv"] = str(out / "compare.json"), str(out / "compare.csv")
    return result


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.#" else "_" for c in name) or "run"


def _definitions() -> dict:
    return {"time_to_target_s": "task submission to the first MPVU verdict >= target (all tasks: first "
                                "submission to the last one reaching it); null: missed",
            "wire_bytes": "sum of transfer events' bytes (DA-ITN bulk messages as sent; no control "
                          "messages, inference queries or TCP/IP headers)",
            "model_bytes": "summary.json tasks[].model_bytes_sent",
            "raw_data_bytes": "summary.json raw_data_bytes_sent (training samples that crossed the network)",
            "final_accuracy": "summary.json tasks[].final_accuracy (worst task if several)",
            "latency": "client-measured (query sent to answer), as workloads measure it: p50/p99 only from "
                       "per-query records (the client's submitted_query_result); workload_result carries mean "
                       "and p95 only; nearest-rank percentiles. The DCC's submitted_query_ended latency (API "
                       "submission to answer, hand-off included) is another measure and is not mixed in"}


def cmd_compare(a) -> int:
    try:
        result = compare(a.run_dirs, a.out)
    except RunDirError as e:
        print(f"daitn compare: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the runs were read; the results could not be written
        print(f"daitn compare: cannot write the comparison ({e.strerror}: {e.filename}); choose another --out",
              file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    print(render_table(result["rows"]))
    f = result["files"]
    print(f"\nwrote {f['json']}, {f['csv']}, {f['accuracy_vs_time']}, {f['accuracy_vs_bytes']}"
          + (f" and {len(f['routes'])} route maps in {Path(a.out) / 'routes'}" if f["routes"] else ""))
    return 0


def add_parser(subparsers):
    """Register ``daitn compare`` (dispatched through ``fn``, as in testbed.cli)."""
    p = subparsers.add_parser("compare", help="compare finished runs: table, compare.json/.csv and plots",
                              description="Side-by-side table of finished runs, compare.json and compare.csv, "
                                          "accuracy against time and bytes (all runs overlaid) and each "
                                          "run's model route on its topology.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="compare", help="directory for compare.json/.csv and plots (default ./compare)")
    p.add_argument("--json", action="store_true", help="print compare.json instead of the table")
    p.set_defaults(fn=cmd_compare)
    return p
