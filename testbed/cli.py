"""``daitn``: the testbed's command line.

Exit codes: 0 success, 1 a run failed, 2 bad input (spec, topology, usage),
3 the machine cannot do it (not root, Open vSwitch down, missing kernel feature).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _need_root(what: str):
    if os.geteuid() != 0:
        print(f"daitn {what}: needs root (it builds network namespaces and OVS bridges); "
              f"try: sudo .venv/bin/daitn {what} ...", file=sys.stderr)
        sys.exit(3)


def cmd_check(a) -> int:
    from testbed.spec import SpecError, check_data, load_spec
    spec, topo = load_spec(a.spec, a.set)
    check_data(spec, a.spec)
    note = ""
    if os.geteuid() == 0:
        from testbed.capabilities import probe
        from testbed.network import link_backends
        netem = probe().netem
        backends = link_backends(topo, spec.links.backend, netem)
        refused = [f"{ln.a}-{ln.b}" for ln, be in zip(topo.links, backends)
                   if ln.delay_ms and be == "tc" and not netem]
        if refused:
            raise SpecError(a.spec, "links", f"links {refused[:5]} ask for delay on the tc backend but "
                                             f"this kernel has no sch_netem, so `daitn run` would refuse "
                                             f"it; let ns-3 emulate them (--set links.backend=auto) or "
                                             f"use --set links.delay=0 --set links.override=true")
        n3 = backends.count("ns3")
        if n3:
            note = f"\nnote: {n3} links are emulated by ns-3 (links.backend={spec.links.backend})"
    elif any(ln.delay_ms for ln in topo.links):
        delayed = [ln for ln in topo.links if ln.delay_ms]
        note = (f"\nnote: {len(delayed)} links ask for delay; which backend emulates it (netem or "
                f"ns-3) is probed as root (daitn check as root, or daitn run)")
    print(f"{a.spec}: OK - {spec.name}: {topo.name} with {len(topo.switches)} switches, "
          f"{len(topo.hosts)} hosts, {len(topo.links)} links; {len(spec.hosts_with('data'))} data nodes, "
          f"{len(spec.tasks)} task(s){note}")
    return 0


def cmd_run(a) -> int:
    from testbed.spec import load_spec
    if a.serve is not None:
        a.set = [*(a.set or []), f"serve_s={a.serve}"]
    load_spec(a.spec, a.set)  # bad specs exit 2 before the root check
    _need_root("run")
    from testbed.runner import run
    run_dir = run(a.spec, a.out, a.set, quiet=a.quiet)
    summary = json.loads((run_dir / "summary.json").read_text())
    return 0 if all(t["reached"] for t in summary["tasks"]) else 1


def cmd_doctor(a) -> int:
    from testbed.capabilities import probe
    caps = probe()
    if a.json:
        print(json.dumps(caps.to_dict(), indent=1))
        return 0
    print(f"root: {caps.root}" + ("" if caps.root else "  (run as root for the full probe)"))
    print(f"Open vSwitch: {'running ' + caps.ovs_version if caps.ovs_running else 'NOT running (sudo make setup)'}")
    print(f"OVS datapath: {caps.datapath} (kernel module {'present' if caps.ovs_kernel_datapath else 'absent'})")
    print(f"netem: {caps.netem}   htb: {caps.htb}   cls_bpf random loss: {caps.bpf_loss}")
    print("tools: " + ", ".join(f"{t}={'yes' if ok else 'no'}" for t, ok in caps.tools.items()))
    print("feature -> backend:")
    for f, b in caps.backends().items():
        print(f"  {f:10s} {b}")
    return 0


def cmd_topo(a) -> int:
    import topologies
    from topologies.draw import describe, draw_png
    if a.topo_cmd == "list":
        for name, kind in topologies.list_all():
            print(f"{kind:10s} {name}")
        return 0
    topo = topologies.by_name(a.name)
    print(describe(topo))
    if a.png:
        draw_png(topo, a.png)
        print(f"drawn to {a.png}")
    return 0


def cmd_trace(a) -> int:
    from testbed import trace
    print(trace.main_json(a.path) if a.json else trace.render(trace.summarize(a.path)))
    return 0


def cmd_clean(a) -> int:
    _need_root("clean")
    from testbed.clean import clean
    counts = clean(a.run)
    print("removed: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


def _live_or_saved(cmd: str, run_dir: Path, resources: tuple[str, ...], saved: str, pick):
    """``resources`` from a running DCC's API, else ``pick(json of RUN/saved)`` once the run
    has ended; returns (views by resource, where they came from), or None after saying why."""
    from testbed.api import ApiClient, ApiError

    if not run_dir.is_dir():
        print(f"daitn {cmd}: {run_dir} is not a run directory", file=sys.stderr)
        return None
    try:
        api = ApiClient.for_run(run_dir)
        return {k: api.get(k) for k in resources}, "live from the DCC"
    except ApiError as live_err:
        try:
            return pick(json.loads((run_dir / saved).read_text())), f"{saved} (run ended)"
        except (OSError, ValueError) as e:
            print(f"daitn {cmd}: no live DCC ({live_err}) and no readable {run_dir}/{saved} ({e})",
                  file=sys.stderr)
            return None


def cmd_maps(a) -> int:
    """The DRRT/QRRT of a run: live from its DCC while it runs, else its maps.json."""
    run_dir = Path(a.run_dir)
    got = _live_or_saved("maps", run_dir, ("maps",), "maps.json", lambda d: {"maps": d})
    if got is None:
        return 2
    snap, source = got[0]["maps"], got[1]
    if a.png:
        from testbed.mapsview import draw_maps
        from testbed.spec import load_spec
        _, topo = load_spec(run_dir / "spec.resolved.yaml")
        print(f"wrote {draw_maps(snap, topo, a.png)}")
    if a.json:
        print(json.dumps(snap, indent=1, sort_keys=True))
        return 0
    print(f"DRRT/QRRT of {run_dir} ({source}, t={snap.get('t')})")
    for node, n in sorted(snap.get("nodes", {}).items(), key=lambda kv: int(kv[0][1:]) if kv[0][1:].isdigit() else 0):
        print(f"  {node:5} {','.join(n.get('roles', [])):24} {n.get('status', '?'):8} "
              f"age {n.get('age_s', 0):5.1f} s  reports {n.get('reports', 0)}")
    for ln in snap.get("drrt", {}).get("resources", {}).get("links", []):
        ab, ba = ln.get("a_to_b") or {}, ln.get("b_to_a") or {}

        def fmt(d):
            r, av = d.get("rate_mbps"), d.get("available_mbps")
            return "?" if r is None else f"{r:.2f}" + ("" if av is None else f" (avail {av:.2f})")
        print(f"  {ln['a']}-{ln['b']:4} cap {ln.get('capacity_mbps')} Mbit/s  {'up' if ln.get('up') else 'DOWN'}  "
              f"{ln['a']}->{ln['b']} {fmt(ab)}  {ln['b']}->{ln['a']} {fmt(ba)}  "
              f"latency {ln.get('latency_ms')} ms")
    return 0


def cmd_status(a) -> int:
    """Tasks, plans, model versions and AI flows of a run: live from its DCC, else from its files."""
    run_dir = Path(a.run_dir)
    keys = ("tasks", "plans", "models", "flows")
    got = _live_or_saved("status", run_dir, keys, "dcc-state.json", lambda st: {k: st.get(k, {}) for k in keys})
    if got is None:
        return 2
    view, source = got
    if a.json:
        print(json.dumps(view, indent=1, sort_keys=True))
        return 0
    print(f"status of {run_dir} ({source})")
    for tid, t in sorted(view["tasks"].items(), key=lambda kv: int(kv[0])):
        plan = view["plans"].get(tid, {})
        state = "active" if t.get("active") else f"ended: {t.get('ended')}"
        print(f"  task {tid}: {state}; hop {t.get('hop')} lap {t.get('lap')} at {t.get('holder')} -> "
              f"{t.get('heading')}; stops {' -> '.join(t.get('segments', []))}; re-plans {t.get('replans')}")
        if plan:
            print(f"    T-FAM: {'feasible' if plan.get('feasible') else 'infeasible'}, est "
                  f"{plan.get('est_seconds', 0):.2f} s, {plan.get('est_bytes')} B, expected accuracy "
                  f"{plan.get('expected_accuracy', 0):.3f}")
    models = view["models"]
    print(f"  model versions: {len(models.get('versions', []))}; lineage problems: "
          f"{models.get('problems') or 'none'}")
    flows = view["flows"]
    print(f"  flows installed by the DCC: {flows.get('count', 0)} "
          f"({', '.join(f'{k} {len(v)}' for k, v in sorted(flows.get('by_function', {}).items()))}); "
          f"meters {flows.get('meters', 0)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="daitn", description="DA-ITN testbed: model-follow-data on an SDN fabric")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run an experiment spec")
    r.add_argument("spec")
    r.add_argument("--out", help="run directory (default runs/NAME-RUNID)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field, e.g. seed=3")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--serve", type=float, metavar="SECONDS",
                   help="keep taking tasks and queries from `daitn submit` until none came for "
                        "SECONDS (same as --set serve_s=SECONDS)")
    r.set_defaults(fn=cmd_run)
    c = sub.add_parser("check", help="validate a spec without running it (no root needed)")
    c.add_argument("spec")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.set_defaults(fn=cmd_check)
    d = sub.add_parser("doctor", help="what this machine can emulate")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=cmd_doctor)
    t = sub.add_parser("topo", help="list or show topologies")
    ts = t.add_subparsers(dest="topo_cmd", required=True)
    ts.add_parser("list", help="generators, shipped files and topohub names")
    sh = ts.add_parser("show", help="describe a topology (and draw it)")
    sh.add_argument("name", help="e.g. fattree:k=4, sndlib/abilene, topologies/two_switch.yaml")
    sh.add_argument("--png", help="write a drawing to this PNG file")
    t.set_defaults(fn=cmd_topo)
    tr = sub.add_parser("trace", help="decode and summarise the DA-ITN packets of a capture or run")
    tr.add_argument("path", help="a .pcap file or a run directory")
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(fn=cmd_trace)
    m = sub.add_parser("maps", help="the DRRT/QRRT of a run (live while it runs)")
    m.add_argument("run_dir")
    m.add_argument("--json", action="store_true")
    m.add_argument("--png", help="also draw them to this PNG file")
    m.set_defaults(fn=cmd_maps)
    st = sub.add_parser("status", help="tasks, plans, model lineage and AI flows of a run (live while it runs)")
    st.add_argument("run_dir")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)
    from testbed import compare, replay, report, submit
    submit.add_parser(sub)
    compare.add_parser(sub)
    report.add_parser(sub)
    replay.add_parser(sub)
    cl = sub.add_parser("clean", help="remove leftovers of this testbed only")
    cl.add_argument("--run", help="only leftovers of this run id")
    cl.set_defaults(fn=cmd_clean)
    return p


def main(argv=None) -> int:
    from testbed.network import NetworkError
    from testbed.spec import SpecError
    from testbed.trace import TraceError
    from topologies.model import TopologyError

    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except (SpecError, TopologyError, TraceError) as e:
        print(f"daitn {a.cmd}: {e}", file=sys.stderr)
        return 2
    except NetworkError as e:
        print(f"daitn {a.cmd}: cannot emulate this: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"daitn {a.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
