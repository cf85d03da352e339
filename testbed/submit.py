"""``daitn submit``: hand a running experiment a training task or an inference query.

The run must be serving (spec ``serve_s > 0``, or ``daitn run --serve S``); the
request goes to its DCC's northbound API (``POST /v1/tasks`` / ``/v1/queries``),
which hands it to the client at that client's next knowledge report
(controllers/submissions.py). ``--wait`` follows it through ``GET /v1/submissions``
until it ends.

Exit codes: 0 accepted (with --wait: the task reached its target / the query was
answered), 1 ended otherwise or timed out, 2 bad input or no live DCC.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from testbed.api import ApiClient, ApiError

TASK_FIELDS = ("client", "target_accuracy", "deadline_s", "max_laps", "required_labels", "deploy_to",
               "replicas", "byte_budget", "id")


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what}: a comma-separated list of integers, got {text!r}") from None


def task_body(a) -> dict:
    """The POST /v1/tasks body from --file and the flags (flags win)."""
    body: dict = {}
    if a.file:
        try:
            loaded = yaml.safe_load(Path(a.file).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"--file {a.file}: {e}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--file {a.file}: must hold one task (a mapping with the fields of a spec task)")
        body.update(loaded)
    flags = {"client": a.client, "target_accuracy": a.target_accuracy, "deadline_s": a.deadline,
             "max_laps": a.max_laps, "byte_budget": a.byte_budget, "replicas": a.replicas,
             "required_labels": _ints(a.labels, "--labels") if a.labels else None,
             "deploy_to": a.deploy_to.split(",") if a.deploy_to else None}
    body.update({k: v for k, v in flags.items() if v is not None})
    missing = [k for k in ("target_accuracy", "deadline_s") if k not in body]
    if missing:
        raise ValueError(f"a task needs {' and '.join(missing)} (--target-accuracy, --deadline or in --file)")
    return body


def query_body(a, run_dir: Path) -> tuple[dict, int | None]:
    """The POST /v1/queries body; with --sample, the input is row N of the run's
    held-out split (the true label is returned to print next to the answer)."""
    truth = None
    if (a.features is None) == (a.sample is None):
        raise ValueError("give the query's input: --sample N (row N of the run's held-out split) "
                         "or --features '[x1, x2, ...]'")
    if a.features is not None:
        try:
            feats = json.loads(a.features)
        except ValueError as e:
            raise ValueError(f"--features: not JSON ({e})") from None
    else:
        from nodes.data import load_dataset
        from testbed.spec import SpecError, load_spec
        try:
            spec, _ = load_spec(run_dir / "spec.resolved.yaml")
        except (SpecError, OSError) as e:
            raise ValueError(f"--sample needs the run's spec.resolved.yaml: {e}") from None
        ds = load_dataset(spec.data.model_dump(), spec.seed)
        if not 0 <= a.sample < len(ds.verif_y):
            raise ValueError(f"--sample: 0..{len(ds.verif_y) - 1} (rows of the held-out split), got {a.sample}")
        feats, truth = [float(x) for x in ds.verif_X[a.sample]], int(ds.verif_y[a.sample])
    body = {"model": a.model, "features": feats, "privacy": a.privacy}
    for k, v in (("client", a.client), ("max_latency_ms", a.max_latency_ms), ("min_accuracy", a.min_accuracy)):
        if v is not None:
            body[k] = v
    return body, truth


def wait_for(api: ApiClient, what: str, sid: int, timeout: float, say) -> dict | None:
    key = "tasks" if what == "task" else "queries"
    end, last = time.time() + timeout, None
    while time.time() < end:
        try:
            cur = api.get("submissions")[key].get(str(sid))
        except ApiError as e:  # the run ended meanwhile: read what it saved
            say(f"  DCC no longer answering ({e})")
            return last
        if cur is not None:
            if cur["status"] != (last or {}).get("status"):
                say(f"  {what} {sid}: {cur['status']}")
            last = cur
            if cur["status"] in ("ended", "answered", "failed"):
                return cur
        time.sleep(0.25)
    return last


def cmd_submit(a) -> int:
    run_dir = Path(a.run_dir)
    say = (lambda s: None) if a.json else print
    try:
        if not run_dir.is_dir():
            raise ValueError(f"{run_dir} is not a run directory")
        if a.what == "task":
            body, truth = task_body(a), None
        else:
            body, truth = query_body(a, run_dir)
        api = ApiClient.for_run(run_dir)
        got = api.post("tasks" if a.what == "task" else "queries", body)
    except (ValueError, ApiError) as e:
        print(f"daitn submit: {e}", file=sys.stderr)
        return 2
    sid = got["id"]
    say(f"{a.what} {sid} accepted for client {got['client']}; it starts at the client's next knowledge report")
    out = {"submitted": got}
    ok = True
    if a.wait:
        timeout = (float(body["deadline_s"]) + 90) if a.what == "task" else 60.0
        end = wait_for(api, a.what, sid, timeout, say)
        out["result"] = end
        if a.what == "task":
            ok = bool(end and end["status"] == "ended" and end["accuracy"] is not None
                      and end["accuracy"] >= float(body["target_accuracy"]))
            if end:
                say(f"task {sid}: {end['status']}, end {end.get('end_reason')}, accuracy {end.get('accuracy')}")
        else:
            ok = bool(end and end["status"] == "answered")
            if end:
                say(f"query {sid}: {end['status']} by {end.get('server')}: label {end.get('label')} "
                    f"(confidence {end.get('confidence')}), {end.get('latency_ms')} ms from submission"
                    + (f"; true label {truth}" if truth is not None else "")
                    + (f"; error: {end.get('error')}" if end.get("error") else ""))
            out["true_label"] = truth
        if end is None:
            say(f"{a.what} {sid}: no end seen within {timeout:.0f} s")
    if a.json:
        print(json.dumps(out, indent=1, sort_keys=True))
    return 0 if ok else 1


def add_parser(sub):
    s = sub.add_parser("submit", help="submit a training task or an inference query to a serving run")
    s.add_argument("run_dir", help="the run directory of a run that is going on (daitn run --serve S)")
    kinds = s.add_subparsers(dest="what", required=True)
    t = kinds.add_parser("task", help="a training task (the fields of a spec task)")
    t.add_argument("--file", help="YAML/JSON file with one task's fields")
    t.add_argument("--target-accuracy", type=float)
    t.add_argument("--deadline", type=float, metavar="SECONDS")
    t.add_argument("--labels", help="required labels, e.g. 0,1,7")
    t.add_argument("--max-laps", type=int)
    t.add_argument("--byte-budget", type=int)
    t.add_argument("--deploy-to", help="inference hosts that get the final model, e.g. h7,h8")
    t.add_argument("--replicas", type=int, help="the DCC places this many replicas")
    q = kinds.add_parser("query", help="an inference query to a trained model")
    q.add_argument("--model", type=int, required=True, help="the id of the task whose model answers")
    q.add_argument("--sample", type=int, help="input: row N of the run's held-out split")
    q.add_argument("--features", help="input: a JSON list of numbers")
    q.add_argument("--max-latency-ms", type=float)
    q.add_argument("--min-accuracy", type=float)
    q.add_argument("--privacy", choices=("public", "trusted", "local"), default="public")
    for p in (t, q):
        p.add_argument("--client", help="the client host that runs it (default: the first client)")
        p.add_argument("--wait", action="store_true", help="follow it until it ends")
        p.add_argument("--json", action="store_true")
        p.set_defaults(fn=cmd_submit)
    return s
