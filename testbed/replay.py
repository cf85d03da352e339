"""``daitn replay``: run an experiment again from its run directory and say whether it did the same.

The replay runs ``RUN_DIR/spec.resolved.yaml`` (the spec as it ran: seed and every ``--set``
already applied) into a new run directory, then compares the two runs and writes
``replay.json`` there. Two things are compared, each in its own way:

Decisions - must be identical (no tolerance). Per task, in order:

- ``plan``: the DCC's answer to the training request (``itinerary`` events): feasible or not,
  the itinerary, the MPVU;
- ``hop``: every hop decision of the DCC (``hop`` events by number): from, to, the network
  path of the move and of its verification, lap, and the reason (next stop / task ends: why);
- ``replan``: every re-plan with its cause, from where, old and new stops, feasibility;
  ``flows_moved``: the current hop's paths moved by a re-plan, with its cause;
- ``placement``: the replicas the DCC placed (``tasks[].replicas``);
- ``query_refused``: every query QIRCE refused, by client, query id and excluded servers;
- ``visit``: the itinerary as the model visited it (the data nodes' ``train`` events by hop);
- ``end``: how the task ended (``summary.json`` ``end_reason``).

The first divergence is the earliest decision (by time since the clients started, in the
original run) whose value differs or that only one run made; ``replay.json`` names it (what,
task, index, original and replayed values) and lists the others.

Final metrics - within a stated tolerance (``--accuracy-tol`` etc., defaults in ``TOLERANCES``):
per task the final MPVU accuracy (absolute), model bytes sent (relative) and hops (absolute);
for the run the queries answered (relative). They are reported even when decisions diverged.

Model versions (SHA-256 of every version a data node trained, by task and version) are compared
and reported; identical hashes mean the replay trained bit for bit the same models. They count
towards the verdict only with ``--strict``. ``--against DIR`` compares with a run that exists
instead of running again (no root needed).

Exit codes: 0 identical decisions and metrics within tolerance, 1 diverged (or the replay run
failed), 2 bad input (missing or corrupted run directory, a spec this version cannot run, a
run that took work submitted at run time), 3 the machine cannot emulate it (as ``daitn run``).

What can make an honest replay diverge: wall-clock time. A ``timeline`` event fires at a time,
not at a point of the task, so the model may be elsewhere when a link goes down; a deadline is
time; queries with ``max_latency_ms`` are refused or answered by measured latency. The DCC's
training plans use settled inputs (``controllers/maps.py`` ``plan_view``), so noise in the
measured link latency, utilisation and node load does not change them (README, "Replaying a run").
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from testbed.rundir import RunDir, RunDirError, load_run

__all__ = ["add_parser", "replay_compare", "decisions", "Decision", "TOLERANCES", "verdict_text",
           "prepare_spec", "check_replayable", "RunDirError"]

# Final metrics: how far the replay may be from the original and still agree.
TOLERANCES = {
    "final_accuracy": 0.01,     # absolute (MPVU accuracy, 0..1): ~3 samples of a 360-sample set
    "model_bytes_sent": 0.01,   # relative to the original
    "hops": 0,                  # absolute
    "queries_answered": 0.05,   # relative to the original
}
KINDS = ("plan", "placement", "hop", "replan", "flows_moved", "query_refused", "visit", "end")
MAX_LISTED = 20  # divergences listed one by one in replay.json


class ReplayError(RuntimeError):
    """The replay run itself failed (the original is fine); exit 1."""


# ---- decisions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """One decision of a run: ``kind`` (KINDS), ``subject`` (a task id, or a query), ``index``
    (hop number, n-th re-plan ...), ``t`` seconds since the clients started, and its value."""

    kind: str
    subject: object
    index: object
    t: float
    value: dict

    @property
    def key(self) -> tuple:
        return self.kind, self.subject, self.index

    def label(self) -> str:
        s = f"task {self.subject}" if isinstance(self.subject, int) else str(self.subject)
        if self.kind == "plan":
            return f"{s} plan" + (f" #{self.index + 1}" if self.index else "")
        if self.kind in ("hop", "visit"):
            return f"{s} {self.kind} {self.index}"
        if self.kind in ("replan", "flows_moved"):
            return f"{s} {'re-plan' if self.kind == 'replan' else 'flows moved'} #{self.index + 1}"
        if self.kind == "query_refused":
            return f"{s} refused"
        return f"{s} {self.kind}"


def start_time(run: RunDir) -> float:
    """Time zero of a run's decisions: the clients start (else its first event)."""
    return next((e["t"] for e in run.events if e["kind"] == "clients_go"), run.events[0]["t"])


def _task(e: dict):
    return e.get("task")


def decisions(run: RunDir) -> list[Decision]:
    """The decisions of a run (module docstring), in time order."""
    t0 = start_time(run)
    out: list[Decision] = []
    count: dict[tuple, int] = {}

    def nth(kind, subject) -> int:
        k = (kind, subject)
        count[k] = count.get(k, 0) + 1
        return count[k] - 1

    seen: dict[tuple, int] = {}

    def add(kind, subject, index, e, value):
        k = (kind, subject, index)
        seen[k] = seen.get(k, 0) + 1
        if seen[k] > 1:  # the same decision twice (a repeated hop number): keep both, in order
            index = f"{index}#{seen[k]}"
        out.append(Decision(kind, subject, index, round(e["t"] - t0, 6), value))

    dcc = [e for e in run.events if e.get("src") == "dcc"]
    plans = [e for e in dcc if e["kind"] == "itinerary"]
    for e in plans:
        add("plan", _task(e), nth("plan", _task(e)), e,
            {"feasible": e.get("feasible"), "itinerary": e.get("itinerary"), "mpvu": e.get("mpvu")})
    if not plans:  # runs that logged only the plan itself
        for e in dcc:
            if e["kind"] == "plan":
                add("plan", _task(e), nth("plan", _task(e)), e,
                    {"feasible": e.get("feasible"), "itinerary": [s.get("node") for s in e.get("stops") or []],
                     "mpvu": e.get("mpvu")})
    for e in dcc:
        k = e["kind"]
        if k == "hop":
            add("hop", _task(e), e.get("hop"), e, {x: e.get(x) for x in
                                                   ("from", "to", "path", "verify_path", "lap", "reason")})
        elif k == "replan":
            add("replan", _task(e), nth(k, _task(e)), e,
                {x: e.get(x) for x in ("cause", "from", "old", "new", "feasible", "ends")})
        elif k == "flows_moved":
            add("flows_moved", _task(e), nth(k, _task(e)), e, {x: e.get(x) for x in ("hop", "cause", "new")})
        elif k == "placement":
            add("placement", _task(e), nth(k, _task(e)), e, {"chosen": e.get("chosen"), "k": e.get("k")})
        elif k == "query_routed" and e.get("feasible") is False:
            subject = f"query {e.get('query')} from {e.get('client')}"
            add("query_refused", subject, tuple(e.get("excluded") or ()), e, {"model": e.get("model")})
    for e in run.events:
        if e["kind"] == "train" and _task(e) is not None:
            add("visit", _task(e), e.get("hop"), e, {"at": e.get("src"), "lap": e.get("lap")})
    for t in run.summary["tasks"]:
        r = next((e for e in run.events if e["kind"] == "task_result" and _task(e) == t["id"]), None)
        end_t = {"t": r["t"] if r else run.events[-1]["t"]}
        add("end", t["id"], 0, end_t, {"end_reason": t.get("end_reason")})
    out.sort(key=lambda d: (d.t, KINDS.index(d.kind)))
    return out


def _differing(a: dict | None, b: dict | None) -> tuple[dict | None, dict | None]:
    """Only the fields that differ (all of them when one side is missing)."""
    if a is None or b is None:
        return a, b
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    return {k: a.get(k) for k in keys}, {k: b.get(k) for k in keys}


def compare_decisions(orig: list[Decision], rep: list[Decision]) -> dict:
    a = {d.key: d for d in orig}
    b = {d.key: d for d in rep}
    # in the original's order; what only the replay decided, at its own time
    keys = sorted(set(a) | set(b), key=lambda k: ((a.get(k) or b.get(k)).t, KINDS.index(k[0]), repr(k)))
    diverged = []
    for k in keys:
        da, db = a.get(k), b.get(k)
        va, vb = (da.value if da else None), (db.value if db else None)
        if va == vb:
            continue
        d = da or db
        oa, ob = _differing(va, vb)
        why = ("only the replay made it" if da is None else "the replay did not make it" if db is None
               else "different " + ", ".join(oa))
        diverged.append({"what": d.kind, "task": d.subject if isinstance(d.subject, int) else None,
                         "subject": d.subject if not isinstance(d.subject, int) else f"task {d.subject}",
                         "index": list(d.index) if isinstance(d.index, tuple) else d.index,
                         "label": d.label(), "why": why,
                         "t_original": None if da is None else da.t, "t_replay": None if db is None else db.t,
                         "original": oa, "replayed": ob})
    counts = {k: sum(1 for d in orig if d.kind == k) for k in KINDS}
    return {"identical": not diverged, "compared": len(keys), "counts_original": counts,
            "counts_replay": {k: sum(1 for d in rep if d.kind == k) for k in KINDS},
            "first_divergence": diverged[0] if diverged else None, "divergences": len(diverged),
            "listed": diverged[:MAX_LISTED]}


# ---- metrics -----------------------------------------------------------------------------------
def _queries_answered(run: RunDir) -> int:
    from testbed.compare import query_metrics
    return int(query_metrics(run)["answered"])


def _within(metric: str, a, b, tol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if metric in ("model_bytes_sent", "queries_answered"):
        return abs(b - a) <= tol * max(abs(a), 1) + 1e-9
    return abs(b - a) <= tol + 1e-9


def compare_metrics(orig: RunDir, rep: RunDir, tol: dict) -> list[dict]:
    out = []
    tb = {t["id"]: t for t in rep.summary["tasks"]}
    ta = {t["id"]: t for t in orig.summary["tasks"]}
    for tid in list(ta) + [i for i in tb if i not in ta]:
        x, y = ta.get(tid, {}), tb.get(tid, {})
        for m in ("final_accuracy", "model_bytes_sent", "hops"):
            a, b = x.get(m), y.get(m)
            out.append({"task": tid, "metric": m, "original": a, "replayed": b, "tolerance": tol[m],
                        "relative": m == "model_bytes_sent", "within": _within(m, a, b, tol[m])})
    a, b = _queries_answered(orig), _queries_answered(rep)
    if a or b:
        out.append({"task": None, "metric": "queries_answered", "original": a, "replayed": b,
                    "tolerance": tol["queries_answered"], "relative": True,
                    "within": _within("queries_answered", a, b, tol["queries_answered"])})
    return out


def model_versions(run: RunDir) -> dict[tuple, str]:
    """(task, version) -> SHA-256 of every model version a run recorded."""
    out = {}
    for e in run.events:
        if e["kind"] in ("train", "model_version") and e.get("sha256") and e.get("version") is not None:
            out.setdefault((e.get("task"), int(e["version"])), e["sha256"])
    return out


def compare_models(orig: RunDir, rep: RunDir) -> dict:
    a, b = model_versions(orig), model_versions(rep)
    keys = sorted(set(a) | set(b), key=lambda k: (str(k[0]), k[1]))
    first = next(({"task": k[0], "version": k[1], "original": a.get(k), "replayed": b.get(k)}
                  for k in keys if a.get(k) != b.get(k)), None)
    same = sum(1 for k in keys if a.get(k) is not None and a.get(k) == b.get(k))
    return {"versions_original": len(a), "versions_replay": len(b), "identical_versions": same,
            "identical": bool(keys) and first is None, "first_difference": first}


# ---- the whole comparison ----------------------------------------------------------------------
def replay_compare(orig: RunDir, rep: RunDir, tolerances: dict | None = None, strict: bool = False) -> dict:
    """Compare a run with its replay; the result is replay.json (``exit_code`` included)."""
    tol = {**TOLERANCES, **(tolerances or {})}
    dec = compare_decisions(decisions(orig), decisions(rep))
    metrics = compare_metrics(orig, rep, tol)
    models = compare_models(orig, rep)
    within = all(m["within"] for m in metrics)
    ok = dec["identical"] and within and (models["identical"] or not strict)
    warnings = [*orig.warnings, *rep.warnings]
    va = (orig.manifest or {}).get("versions") or {}
    vb = (rep.manifest or {}).get("versions") or {}
    changed = {p: [va.get(p), vb.get(p)] for p in sorted(set(va) | set(vb)) if va.get(p) != vb.get(p)}
    if changed:
        warnings.append("package versions differ from the original run: " + ", ".join(
            f"{p} {x} -> {y}" for p, (x, y) in changed.items()))
    if orig.seed != rep.seed:
        warnings.append(f"seeds differ: original {orig.seed}, replay {rep.seed}")
    return {"verdict": "identical" if ok else "diverged", "exit_code": 0 if ok else 1,
            "original": {"run_dir": str(orig.path), "run_id": orig.run_id, "seed": orig.seed},
            "replay": {"run_dir": str(rep.path), "run_id": rep.run_id, "seed": rep.seed},
            "strict": strict, "tolerances": tol,
            "decisions": dec, "metrics_within_tolerance": within, "metrics": metrics, "models": models,
            "itineraries": {"original": _itineraries(orig), "replay": _itineraries(rep)},
            "warnings": warnings}


def _itineraries(run: RunDir) -> dict:
    return {str(t["id"]): list(t.get("itinerary") or []) for t in run.summary["tasks"]}


def _fmt(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return " -> ".join(v) if v else "[]"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def verdict_text(r: dict) -> str:
    """The short verdict ``daitn replay`` prints."""
    dec, lines = r["decisions"], []
    lines.append(f"replay of {r['original']['run_dir']} (seed {r['original']['seed']}) -> {r['replay']['run_dir']}")
    c = dec["counts_original"]
    what = (f"{c['plan']} plan(s), {c['hop']} hops, {c['replan']} re-plans, {c['placement']} placements, "
            f"{c['query_refused']} query refusals, {c['visit']} visits")
    if dec["identical"]:
        lines.append(f"decisions: identical ({what})")
    else:
        lines.append(f"decisions: {dec['divergences']} of {dec['compared']} differ (original: {what})")
    for tid, it in r["itineraries"]["original"].items():
        other = r["itineraries"]["replay"].get(tid)
        same = "identical" if other == it else f"replay {_fmt(other or [])}"
        lines.append(f"  task {tid} itinerary: {_fmt(it)} ({same})")
    bad = [m for m in r["metrics"] if not m["within"]]
    parts = []
    for m in r["metrics"]:
        tol = f"±{m['tolerance']:.0%}" if m["relative"] else f"±{m['tolerance']:g}"
        who = f"task {m['task']} " if m["task"] is not None else ""
        parts.append(f"{who}{m['metric']} {_fmt(m['original'])} -> {_fmt(m['replayed'])} ({tol})"
                     + ("" if m["within"] else " OUT"))
    lines.append(f"metrics: {'within tolerance' if not bad else f'{len(bad)} out of tolerance'}: " + "; ".join(parts))
    mo = r["models"]
    if mo["identical"]:
        lines.append(f"models: all {mo['versions_original']} versions have identical SHA-256")
    elif mo["first_difference"]:
        f = mo["first_difference"]
        lines.append(f"models: {mo['identical_versions']} of {mo['versions_original']} versions identical; "
                     f"first difference: task {f['task']} version {f['version']}"
                     + (" (counts towards the verdict: --strict)" if r["strict"] else ""))
    for w in r["warnings"]:
        lines.append(f"warning: {w}")
    if r["verdict"] == "identical":
        lines.append("verdict: IDENTICAL")
    else:
        f = dec["first_divergence"]
        if f is not None:
            when = f"t={f['t_original'] if f['t_original'] is not None else f['t_replay']:+.2f} s"
            lines.append(f"verdict: DIVERGED at {f['label']} ({when}; {f['why']}): original "
                         f"{_fmt(f['original'])}; replay {_fmt(f['replayed'])}")
        elif bad:
            m = bad[0]
            lines.append(f"verdict: DIVERGED: {m['metric']}"
                         + (f" of task {m['task']}" if m["task"] is not None else "")
                         + f" {_fmt(m['original'])} -> {_fmt(m['replayed'])} is out of tolerance")
        else:
            lines.append("verdict: DIVERGED: model versions differ (--strict)")
    return "\n".join(lines)


# ---- running the replay ------------------------------------------------------------------------
def check_replayable(run: RunDir) -> None:
    """RunDirError if the run cannot be repeated from its spec alone."""
    sub_tasks = [t["id"] for t in run.summary["tasks"] if t.get("submitted")]
    sub_queries = run.summary.get("submitted_queries") or []
    if sub_tasks or sub_queries:
        raise RunDirError(f"{run.path / 'summary.json'}: the run took work submitted while it ran "
                          f"(`daitn submit`: {len(sub_tasks)} task(s), {len(sub_queries)} query(ies)); it is "
                          f"not in spec.resolved.yaml, so a replay cannot repeat it; put the tasks in a spec "
                          f"and `daitn run` that, then replay that run")
    spec_seed, man_seed = run.spec.get("seed"), (run.manifest or {}).get("seed")
    if run.manifest is not None and man_seed != spec_seed:
        raise RunDirError(f"{run.path / 'spec.resolved.yaml'}: seed {spec_seed!r} but manifest.json says "
                          f"{man_seed!r}; one of the two files was changed after the run; restore it or "
                          f"`daitn run` the spec again")


def prepare_spec(run: RunDir, tmp: Path) -> Path:
    """The spec file to run: the run's spec.resolved.yaml, or a copy in ``tmp`` with a relative
    ``topology.file`` made absolute (it was relative to the spec the run came from, which
    ``manifest.json`` names). Validated: RunDirError names the run's file, field and reason."""
    from testbed.controller import REPO_ROOT
    from testbed.spec import SpecError, load_spec

    src = run.path / "spec.resolved.yaml"
    topo = run.spec.get("topology")
    path = src
    if isinstance(topo, dict) and isinstance(topo.get("file"), str) and not Path(topo["file"]).is_absolute():
        origin = Path(str((run.manifest or {}).get("spec") or "")).parent
        for base in (run.path, REPO_ROOT / origin, REPO_ROOT):
            if (base / topo["file"]).is_file():
                spec = dict(run.spec, topology={**topo, "file": str((base / topo["file"]).resolve())})
                path = tmp / "spec.resolved.yaml"
                path.write_text(yaml.safe_dump(spec, sort_keys=False))
                break
    try:
        load_spec(path)
    except SpecError as e:
        raise RunDirError(f"{src}: {e.field}: {e.reason}; this version of the testbed cannot run the spec "
                          f"as it was resolved then; fix that field in a copy and `daitn run` it") from None
    return path


def _need_out(out: str | None) -> None:
    if out and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise RunDirError(f"{out}: exists and is not an empty directory; choose another --out for the replay")


def run_replay(spec_path: Path, out: str | None, quiet: bool) -> Path:
    """Run the prepared spec again; the new run directory (ReplayError if the run failed)."""
    from testbed.runner import RunError, run as run_spec

    try:
        return run_spec(str(spec_path), out, None, quiet=quiet)
    except RunError as e:
        raise ReplayError(str(e)) from None


def cmd_replay(a) -> int:
    tol = {k: v for k, v in (("final_accuracy", a.accuracy_tol), ("model_bytes_sent", a.bytes_tol),
                             ("hops", a.hops_tol), ("queries_answered", a.queries_tol)) if v is not None}
    bad = {k: v for k, v in tol.items() if not v >= 0}
    if bad:
        print(f"daitn replay: tolerances must be >= 0, got {bad}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="daitn-replay-"))
    try:
        orig = load_run(a.run_dir)
        check_replayable(orig)
        if a.against:
            new_dir = Path(a.against)
            if new_dir.resolve() == orig.path.resolve():
                raise RunDirError(f"{new_dir}: --against names the original run itself; give another run directory")
        else:
            _need_out(a.out)
            spec_path = prepare_spec(orig, tmp)  # bad input exits 2 before the root check, as `daitn run`
            if os.geteuid() != 0:
                print("daitn replay: needs root (it runs the experiment again); try: sudo .venv/bin/daitn "
                      "replay ... (or compare with a run that exists: --against DIR)", file=sys.stderr)
                return 3
            new_dir = run_replay(spec_path, a.out, quiet=a.quiet or a.json)
        rep = load_run(new_dir)
    except RunDirError as e:
        print(f"daitn replay: {e}", file=sys.stderr)
        return 2
    except ReplayError as e:
        print(f"daitn replay: the replay run failed, so it cannot be compared: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = replay_compare(orig, rep, tol, strict=a.strict)
    try:
        (rep.path / "replay.json").write_text(json.dumps(result, indent=1))
    except OSError as e:
        print(f"daitn replay: cannot write {rep.path / 'replay.json'} ({e.strerror})", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(verdict_text(result))
        print(f"wrote {rep.path / 'replay.json'}")
    return result["exit_code"]


def add_parser(subparsers):
    """Register ``daitn replay`` (dispatched through ``fn``, as in testbed.cli)."""
    p = subparsers.add_parser(
        "replay", help="run an experiment again from its run directory and compare decisions and results",
        description="Run RUN_DIR/spec.resolved.yaml again (same seed, same overrides) and report whether "
                    "the DCC's decisions (plans, hops, re-plans, placements, query refusals) and the "
                    "itineraries are identical and the final metrics within tolerance; writes replay.json "
                    "into the new run directory. Exit 0 identical, 1 diverged, 2 bad input.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="directory of the new run (default runs/NAME-RUNID)")
    p.add_argument("--against", metavar="DIR", help="compare with this existing run instead of running again")
    p.add_argument("--json", action="store_true", help="print replay.json instead of the verdict")
    p.add_argument("--quiet", action="store_true", help="no progress lines from the replay run")
    p.add_argument("--strict", action="store_true", help="model versions must have identical SHA-256 too")
    p.add_argument("--accuracy-tol", type=float, metavar="A",
                   help=f"absolute, final MPVU accuracy per task (default {TOLERANCES['final_accuracy']})")
    p.add_argument("--bytes-tol", type=float, metavar="R",
                   help=f"relative, model bytes sent per task (default {TOLERANCES['model_bytes_sent']})")
    p.add_argument("--hops-tol", type=int, metavar="N", help=f"hops per task (default {TOLERANCES['hops']})")
    p.add_argument("--queries-tol", type=float, metavar="R",
                   help=f"relative, queries answered (default {TOLERANCES['queries_answered']})")
    p.set_defaults(fn=cmd_replay)
    return p


def main(argv=None) -> int:
    """``python -m testbed.replay RUN_DIR ...``: the command on its own (as ``daitn replay``)."""
    import argparse

    from testbed.network import NetworkError
    from testbed.spec import SpecError

    p = argparse.ArgumentParser(prog="daitn")
    add_parser(p.add_subparsers(dest="cmd", required=True))
    a = p.parse_args(["replay", *(sys.argv[1:] if argv is None else argv)])
    try:
        return a.fn(a)
    except SpecError as e:
        print(f"daitn replay: {e}", file=sys.stderr)
        return 2
    except NetworkError as e:
        print(f"daitn replay: cannot emulate this: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("daitn replay: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
