"""Start every node process of a run from one parent that imported torch once.

``python -m nodes.launcher CONFIG.json``: the parent imports torch and the
node code, then forks one child per emulated host; each child enters its
host's network namespace (setns on /proc/PID/ns/net of the Mininet host
shell) and runs its roles. Forking shares the ~300 MiB torch import between
nodes, which is what lets many PyTorch nodes fit on one machine; with torch warmed
up, the data set loaded and the heap frozen before forking (share_before_fork), 200
nodes take ~12.5 MiB of PSS each (bench/bench_scale.py; 79 MiB without those, DESIGN.md §5). The parent waits for the clients, then
stops the rest; SIGTERM stops everything.

Least privilege: setns needs CAP_SYS_ADMIN, so the children start as root; right
after entering its namespace each child becomes the unprivileged user
``daitn-node`` (scripts/setup.sh creates it; ``nobody`` where it is missing), with
no supplementary groups, no capabilities and ``no_new_privs``. It keeps what it
needs: its log (opened before), the run key (read before), the run directory as
its working directory (so that a 0700 parent such as /tmp/pytest-of-root does not
lock it out) with ``events/`` and ``results/`` handed to that user, and TCP/UDP
ports above 1024. What needs root - namespaces, taps, tc, tcpdump, ns-3, the
DCC - is run by the runner, not by the nodes (README, Security).
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
PR_SET_NO_NEW_PRIVS = 38
NODE_USERS = ("daitn-node", "nobody")   # the first that exists
NODE_WRITES = ("events", "results")     # run-dir folders the nodes write in
# Node processes run at this niceness: on a small machine the emulated network (Open
# vSwitch) and the DCC must not starve behind hundreds of node processes (at 200 nodes
# the DCC fell seconds behind, and links and nodes were declared down: bench/bench_scale.py)
NODE_NICE = 10


def enter_netns(pid: int):
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into the network namespace of pid {pid}: {os.strerror(err)}")
    finally:
        os.close(fd)


def node_user() -> tuple[str, int, int]:
    """(name, uid, gid) the node processes run as."""
    import pwd
    for user in NODE_USERS:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            continue
        return user, pw.pw_uid, pw.pw_gid
    raise RuntimeError(f"none of the users {NODE_USERS} exists; run scripts/setup.sh")


def hand_over_run_dir(run_dir: Path, uid: int, gid: int):
    """The folders the nodes write in belong to the node user (the runner made them as root)."""
    for sub in NODE_WRITES:
        d = run_dir / sub
        d.mkdir(exist_ok=True)
        os.chown(d, uid, gid)


def drop_privileges(uid: int, gid: int):
    """Become uid/gid for good: no supplementary groups, real/effective/saved ids all
    changed (which clears every capability), no_new_privs (setuid binaries cannot give
    any back); checked, not assumed."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    caps = {k: int(status[k], 16) for k in ("CapEff", "CapPrm", "CapAmb")}
    if os.getresuid() != (uid,) * 3 or os.getresgid() != (gid,) * 3 or os.getgroups() or any(caps.values()):
        raise RuntimeError(f"privileges not dropped: uids {os.getresuid()}, gids {os.getresgid()}, "
                           f"groups {os.getgroups()}, {caps}")


def child(name: str, conf: dict) -> int:
    from nodes.roles import run_node
    from nodes.runtime import NodeConfig, NodeRuntime

    run_dir = Path(conf["run_dir"])
    h = conf["hosts"][name]
    logging.basicConfig(filename=run_dir / "logs" / f"{name}.log", level=logging.INFO,
                        format=f"%(asctime)s {name} %(levelname)s %(message)s", force=True)
    enter_netns(h["pid"])
    key = Path(conf["key_file"]).read_bytes() if conf.get("key_file") else None  # 0600 root: before the drop
    if os.geteuid() == 0:
        try:
            user, uid, gid = node_user()
            os.chdir(run_dir)
            run_dir = Path(".")
            drop_privileges(uid, gid)
            root = (conf.get("data") or {}).get("root")
            if root and not os.access(root, os.R_OK | os.X_OK):
                raise PermissionError(f"data.root {root} is not readable by the user {user} the node "
                                      f"processes run as; make it (and its parents) world-readable")
        except (OSError, RuntimeError) as e:
            logging.error("cannot run %s unprivileged: %s", name, e)
            print(f"node {name}: cannot run unprivileged: {e}", file=sys.stderr)
            return 1
        logging.info("running as %s (uid %d, gid %d), no capabilities", user, uid, gid)
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
                     key=key,
                     host_options=conf.get("host_options", {}), knowledge=conf.get("knowledge", {}),
                     inference=conf.get("inference", {}), workloads=conf.get("workloads", []),
                     dims=conf.get("dims"), compute_nodes=conf.get("compute_nodes", []),
                     serve_s=float(conf.get("serve_s", 0.0)),
                     mode=conf.get("mode", "dcc"), modes=conf.get("modes", {}),
                     report_interval_s=float(conf.get("knowledge", {}).get("report_interval_s", 2.0)))
    rt = NodeRuntime(cfg)
    signal.signal(signal.SIGTERM, lambda *_: rt.stopping.set())
    try:
        return run_node(rt, run_dir / ".go")
    except Exception:
        logging.exception("node %s failed", name)
        rt.event("error", error="node crashed; see logs")
        return 1


def share_before_fork(conf: dict):
    """Do once, in the parent, what every child would otherwise do for itself, so
    that the children share the result copy-on-write (bench/bench_scale.py measures it):

    - torch's first use (a tiny training step): ~2.4 s of CPU and ~90 MiB of pages
      written in every process that pays it;
    - loading the data set and cutting every data node's shard (nodes.data.preload);
    - gc.freeze(): a garbage collection in a child writes to the header of every
      object it scans, which copies the parent's whole Python heap (~58 MiB) into it.
    """
    import gc
    from types import SimpleNamespace

    from nodes import data
    from nodes.roles import warm_up

    warm_up(SimpleNamespace(dims=conf.get("dims"), model=conf["model"], seed=conf["seed"]))
    try:
        data.preload(conf["data"], conf["seed"], conf.get("data_nodes", []))
    except Exception as e:  # each node then loads for itself and reports its own error
        print(f"launcher: preloading the data set failed ({type(e).__name__}: {e}); "
              f"every node loads it itself", file=sys.stderr)
    gc.collect()
    gc.freeze()


def main(argv=None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    conf = json.loads(Path(argv[0]).read_text())
    os.nice(NODE_NICE)  # inherited by every child: the torch import and the nodes yield to OVS and the DCC
    data = conf.get("data") or {}
    if data.get("root"):  # the children work in the run directory: a relative root would move
        data["root"] = os.path.abspath(os.path.expanduser(data["root"]))
    import torch  # noqa: F401  (imported once, shared by all children)
    import nodes.roles  # noqa: F401
    # scikit-learn too (nodes.data imports it lazily): nine children importing it
    # at once on two cores took ~15 s before the first knowledge report
    import sklearn.datasets  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    torch.set_num_threads(1)
    share_before_fork(conf)

    if os.geteuid() == 0:
        hand_over_run_dir(Path(conf["run_dir"]), *node_user()[1:])
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
