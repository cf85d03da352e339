"""How long the emulated network takes to come up, converge and go away, by size.

For each size (hosts, ~1 switch per 10 hosts: ``linear(n/10, hosts_per_switch=10)``
by default) it starts the DCC, then measures:

* ``setup_s``: EmulatedNetwork entry (Mininet build, shaping, ports LIVE,
  switches pointed at the DCC);
* ``converge_s``: from the network being up to ``ctl.wait_converged`` returning
  (every switch connected, every planned link seen by LLDP);
* ``dcc_converged_after_s``: the DCC's own figure, from its start (which
  precedes the network's set-up) to convergence;
* ``flows_ready_s``: from convergence until every switch holds its complete
  flow table (as :mod:`controllers.fabric` computes it): the DCC reports
  convergence while its flow-mods are still on their way;
* ``first_ping_s``: one ping from the first to the last host (proves the
  installed forwarding works end to end);
* ``teardown_s``: EmulatedNetwork exit.

Prints one JSON line per size as it finishes, then a table. Needs root and
Open vSwitch: ``sudo .venv/bin/python bench/bench_network.py [--sizes 10,50,100]``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controllers import fabric as fab  # noqa: E402
from testbed import clean  # noqa: E402
from testbed.capabilities import probe  # noqa: E402
from testbed.controller import ControllerProcess  # noqa: E402
from testbed.network import EmulatedNetwork, existing_bridges, fabric_of  # noqa: E402
from testbed.wait import wait_for  # noqa: E402
from topologies import generators  # noqa: E402

HOSTS_PER_SWITCH = 10


def topology(kind: str, n_hosts: int):
    n_sw = max(1, round(n_hosts / HOSTS_PER_SWITCH))
    if kind == "linear":
        return generators.linear(n_sw, hosts_per_switch=HOSTS_PER_SWITCH).validate()
    if kind == "ring":
        if n_sw < 3:
            return generators.linear(n_sw, hosts_per_switch=HOSTS_PER_SWITCH).validate()
        return generators.ring(n_sw, hosts_per_switch=HOSTS_PER_SWITCH).validate()
    if kind == "waxman":
        if n_sw < 3:  # networkx's waxman_graph fails on a single node
            return generators.linear(n_sw, hosts_per_switch=HOSTS_PER_SWITCH).validate()
        return generators.waxman(n_sw, seed=1, hosts_per_switch=HOSTS_PER_SWITCH).validate()
    raise SystemExit(f"unknown --kind {kind!r}: linear, ring or waxman")


def expected_flow_counts(topo) -> dict[str, int]:
    """Flows per switch once the DCC has installed everything for the planned links."""
    fabric = fabric_of(topo)
    flows = set(fab.forwarding_flows(fabric, fabric.expected_links()))
    for dpid in fabric.switches.values():
        flows.update(fab.service_flows(dpid))
    return {s: sum(1 for f in flows if f.dpid == dpid) for s, dpid in fabric.switches.items()}


def flow_counts(switches) -> dict[str, int | None]:
    out = {}
    for s in switches:
        r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-aggregate", s],
                           capture_output=True, text=True)
        m = re.search(r"flow_count=(\d+)", r.stdout)
        out[s] = int(m.group(1)) if m else None
    return out


def measure(topo, caps, workdir: Path, converge_timeout: float) -> dict:
    run_id = "b" + uuid.uuid4().hex[:6]
    os.environ["DAITN_RUN"] = run_id          # Mininet's host shells inherit it
    taken = lambda: sorted(existing_bridges() & set(topo.switches))  # noqa: E731
    wait_for(lambda: not taken(), 300, "bridges named like ours (another run's) to go", last=taken)
    row = {"topology": topo.name, "hosts": len(topo.hosts), "switches": len(topo.switches),
           "switch_links": len(topo.switch_links()), "run": run_id}
    with ControllerProcess(workdir / run_id, fabric_of(topo), run_id) as ctl:
        net = EmulatedNetwork(topo, run_id, caps, ctl.port, log=lambda *_: None)
        t0 = time.monotonic()
        net.__enter__()
        try:
            t1 = time.monotonic()
            st = ctl.wait_converged(converge_timeout)
            t2 = time.monotonic()
            want = expected_flow_counts(topo)
            wait_for(lambda: flow_counts(topo.switches) == want, converge_timeout,
                     "every switch to hold the DCC's complete flow table",
                     last=lambda: {s: (n, want[s]) for s, n in flow_counts(topo.switches).items()
                                   if n != want[s]})
            t2b = time.monotonic()
            first, last = net.host(topo.hosts[0]), net.host(topo.hosts[-1])
            out = first.cmd(f"ping -c 1 -W 5 {last.IP()}")
            t3 = time.monotonic()
            row.update(setup_s=t1 - t0, converge_s=t2 - t1,
                       dcc_converged_after_s=st.get("converged_after_s"), flows_ready_s=t2b - t2,
                       first_ping_s=t3 - t2b, first_ping_ok=bool(re.search(r"\b1 received", out)),
                       flows=sum(want.values()),
                       link_check_ok=st.get("link_check") == {"missing": [], "unexpected": []})
        finally:
            t4 = time.monotonic()
            net.__exit__(None, None, None)
            row["teardown_s"] = time.monotonic() - t4
        row["dcc_errors"] = len(ctl.logged_exceptions())
    left = clean.leftovers(run_id)
    row["leftovers"] = {k: v for k, v in left.items() if v and k != "namespaces"}
    os.environ.pop("DAITN_RUN", None)
    return row


def table(rows: list[dict]) -> str:
    cols = [("topology", "topology", "{}"), ("hosts", "hosts", "{}"), ("switches", "sw", "{}"),
            ("setup_s", "setup s", "{:.2f}"), ("converge_s", "converge s", "{:.2f}"),
            ("dcc_converged_after_s", "DCC conv s", "{:.2f}"), ("flows_ready_s", "flows s", "{:.2f}"),
            ("first_ping_s", "1st ping s", "{:.2f}"),
            ("teardown_s", "teardown s", "{:.2f}"), ("flows", "flows", "{}"),
            ("link_check_ok", "links ok", "{}")]
    cells = [[h for _, h, _ in cols]]
    for r in rows:
        cells.append([fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in cols])
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,50,100", help="numbers of hosts (default 10,50,100)")
    ap.add_argument("--kind", default="linear", help="switch graph: linear, ring or waxman")
    ap.add_argument("--converge-timeout", type=float, default=120)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_network: needs root (it builds networks); try sudo", file=sys.stderr)
        return 1
    caps = probe()
    print(f"# datapath {caps.datapath}, Open vSwitch {caps.ovs_version}, {os.cpu_count()} cores",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="daitn-bench-") as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            row = measure(topology(args.kind, n), caps, Path(tmp), args.converge_timeout)
            rows.append(row)
            print(json.dumps(row, sort_keys=True), flush=True)
    print()
    print(table(rows))
    bad = [r for r in rows if r["leftovers"] or r["dcc_errors"] or not r.get("first_ping_ok")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
