"""Start every node process of a run from one parent that imported torch once.

``python -m nodes.launcher CONFIG.json``: the parent imports torch and the
node code, then forks one child per emulated host; each child enters its
host's network namespace (setns on /proc/PID/ns/net of the Mininet host
shell) and runs its roles. Forking shares the ~300 MiB torch import between
nodes (DESIGN.md §5: 79 MiB per node instead of ~300), which is what lets many
PyTorch nodes fit on one machine. The parent waits for the clients, then
stops the rest; SIGTERM stops everything.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

CLONE_NEWNET = 0x40000000


def enter_netns(pid: int):
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into the network namespace of pid {pid}: {os.strerror(err)}")
    finally:
        os.close(fd)


def child(name: str, conf: dict) -> int:
    from nodes.roles import run_node
    from nodes.runtime import NodeConfig, NodeRuntime

    run_dir = Path(conf["run_dir"])
    h = conf["hosts"][name]
    logging.basicConfig(filename=run_dir / "logs" / f"{name}.log", level=logging.INFO,
                        format=f"%(asctime)s {name} %(levelname)s %(message)s", force=True)
    enter_netns(h["pid"])
    if name in conf.get("late", ()):
        # a node that joins on the timeline (join_node): not running - no reports,
        # no listening socket - until the runner says so
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        joined = run_dir / "joined" / name
        while not joined.exists():
            if stopping:
                return 0
            time.sleep(0.1)
        logging.info("joining the run now (timeline join_node)")
    cfg = NodeConfig(name=name, ip=h["ip"], roles=h["roles"], run_dir=run_dir, seed=conf["seed"],
                     hosts={n: v["ip"] for n, v in conf["hosts"].items()}, data=conf["data"],
                     model=conf["model"], training=conf["training"], tasks=conf["tasks"],
                     mpvu=conf["mpvu"], data_nodes=conf["data_nodes"],
                     key=Path(conf["key_file"]).read_bytes() if conf.get("key_file") else None,
                     host_options=conf.get("host_options", {}), knowledge=conf.get("knowledge", {}),
                     inference=conf.get("inference", {}), workloads=conf.get("workloads", []),
                     dims=conf.get("dims"), compute_nodes=conf.get("compute_nodes", []),
                     serve_s=float(conf.get("serve_s", 0.0)),
                     report_interval_s=float(conf.get("knowledge", {}).get("report_interval_s", 2.0)))
    rt = NodeRuntime(cfg)
    signal.signal(signal.SIGTERM, lambda *_: rt.stopping.set())
    try:
        return run_node(rt, run_dir / ".go")
    except Exception:
        logging.exception("node %s failed", name)
        rt.event("error", error="node crashed; see logs")
        return 1


def main(argv=None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    conf = json.loads(Path(argv[0]).read_text())
    import torch  # noqa: F401  (imported once, shared by all children)
    import nodes.roles  # noqa: F401
    # scikit-learn too (nodes.data imports it lazily): nine children importing it
    # at once on two cores took ~15 s before the first knowledge report
    import sklearn.datasets  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    torch.set_num_threads(1)

    children: dict[int, str] = {}
    for name in conf["hosts"]:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = child(name, conf)
            finally:
                os._exit(code)
        children[pid] = name
    # the runner reads this to crash a node on the timeline (crash_node)
    pids_path = Path(conf["run_dir"]) / "node-pids.json"
    pids_path.with_suffix(".tmp").write_text(json.dumps({n: p for p, n in children.items()}))
    pids_path.with_suffix(".tmp").rename(pids_path)
    crashed_dir = Path(conf["run_dir"]) / "crashed"

    def stop(*_):
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    clients = {n for n, h in conf["hosts"].items() if "client" in h["roles"]}
    status = 0
    while children:
        pid, st = os.wait()
        name = children.pop(pid, None)
        code = os.waitstatus_to_exitcode(st)
        if name in clients:
            clients.discard(name)
            status |= code != 0
            if not clients:
                stop()  # every client is done: the servers can go
        elif (crashed_dir / name).exists():
            print(f"node {name} crashed as the timeline asked (exit {code})", file=sys.stderr)
        elif code not in (0, -signal.SIGTERM):
            print(f"node {name} exited with {code}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
