"""The node launcher's children share what the parent prepared (no root needed).

A child forked from a parent that merely imported torch writes ~90 MiB of torch's
first-use state and ~60 MiB of the parent's Python heap (a garbage collection touches
every object header) into pages of its own. ``nodes.launcher.share_before_fork`` does
the warm-up and the data set in the parent and freezes its heap, so a child that
then does a data node's start-up (its shard, torch warm-up, a full collection) keeps
only a few MiB to itself. Measured as USS (pages only that process maps) from
/proc/PID/smaps_rollup.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import gc, json, os, sys
sys.path.insert(0, sys.argv[1])
import torch
import nodes.roles
from nodes import launcher
from nodes.data import make_shards
from nodes.roles import warm_up
from types import SimpleNamespace
torch.set_num_threads(1)
conf = {"seed": 3, "model": {"hidden": [64]}, "dims": {"in_features": 16, "n_classes": 10},
        "data": {"dataset": "synthetic", "partition": "iid",
                 "synthetic": {"samples": 4000, "features": 16, "classes": 10}},
        "data_nodes": [f"h{i}" for i in range(2, 8)]}

def uss(pid):
    kb = {}
    for line in open(f"/proc/{pid}/smaps_rollup").read().splitlines()[1:]:
        p = line.split()
        kb[p[0].rstrip(":")] = int(p[1])
    return (kb["Private_Clean"] + kb["Private_Dirty"]) / 1024

def measure(n):
    procs = []
    for i in range(n):
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            shards, _ = make_shards(conf["data_nodes"], conf["data"], conf["seed"])
            X = shards[conf["data_nodes"][i]].X
            warm_up(SimpleNamespace(**{k: conf[k] for k in ("dims", "model", "seed")}))
            gc.collect()
            os.write(ready_w, b"1")
            os.read(go_r, 1)
            os._exit(0)
        procs.append((pid, ready_r, go_w))
    for pid, ready_r, go_w in procs:
        os.read(ready_r, 1)
    sizes = [uss(pid) for pid, _, _ in procs]
    for pid, _, go_w in procs:
        os.write(go_w, b"1")
        os.waitpid(pid, 0)
    return sizes

before = measure(3)              # the parent only imported torch
launcher.share_before_fork(conf)
after = measure(3)               # the parent warmed up, preloaded, froze
print(json.dumps({"before": before, "after": after}))
"""


@pytest.fixture(scope="module")
def uss_mib():
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_children_keep_little_to_themselves_after_share_before_fork(uss_mib):
    print(uss_mib)
    assert max(uss_mib["after"]) < 30, f"USS per child {uss_mib['after']} MiB"


def test_the_measurement_sees_what_unshared_children_copy(uss_mib):
    # without the parent's preparation the same start-up costs each child far more:
    # the check above would catch a regression
    assert min(uss_mib["before"]) > 3 * max(uss_mib["after"]), uss_mib


def test_preloaded_data_is_what_a_fresh_load_gives_and_only_for_the_same_spec():
    from nodes import data
    d = {"dataset": "synthetic", "partition": "iid", "synthetic": {"samples": 400, "features": 8}}
    nodes = ["h2", "h3", "h4"]
    fresh_shards, fresh = data.make_shards(nodes, d, 5)
    saved = dict(data._preloaded)
    try:
        ds = data.preload(d, 5, nodes)
        assert data.load_dataset(d, 5) is ds  # shared, not loaded again
        shards, ds2 = data.make_shards(nodes, d, 5)
        assert ds2 is ds
        for n in nodes:
            assert (shards[n].X == fresh_shards[n].X).all() and (shards[n].y == fresh_shards[n].y).all()
        # another seed, spec or node list is loaded afresh
        assert data.load_dataset(d, 6) is not ds
        assert data.make_shards(nodes[:2], d, 5)[0]["h2"] is not shards["h2"]
        assert data.load_dataset({**d, "verification_fraction": 0.5}, 5) is not ds
    finally:
        data._preloaded.clear()
        data._preloaded.update(saved)
