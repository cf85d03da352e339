"""Model lineage (controllers/lineage.py): chain, problems, rollback point, events, JSON."""
import hashlib
import json

import pytest

from controllers.lineage import Lineage, ModelVersion


def h(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def v(task, version, name, parent, **kw):
    return dict(task=task, model_id=task, version=version, sha256=h(name),
                parent_sha256=None if parent is None else h(parent), t=float(version), **kw)


def verdict(lin, task, version, name, acc, by="h9", t=None):
    return lin.add_verdict(task, version, h(name), by, acc, 1.0 - acc, 300, version + 0.5 if t is None else t)


def good_lineage(n=3, task=1) -> Lineage:
    lin = Lineage()
    lin.add_version(**v(task, 0, "m0", None))
    for i in range(1, n + 1):
        lin.add_version(**v(task, i, f"m{i}", f"m{i - 1}", trained_at=f"h{i + 1}", samples=100 * i,
                            epochs=1, label_hist=[i, 0, 1]))
        verdict(lin, task, i, f"m{i}", 0.5 + 0.1 * i)
    return lin


# --- chain and rollback point ------------------------------------------------------

def test_chain_from_initial_to_latest():
    lin = good_lineage()
    chain = lin.chain(1)
    assert [x.version for x in chain] == [0, 1, 2, 3]
    assert [x.sha256 for x in chain] == [h("m0"), h("m1"), h("m2"), h("m3")]
    assert chain[0].is_initial and chain[0].verdicts == []
    assert chain[2].trained_at == "h3" and chain[2].samples == 200 and chain[2].label_hist == [2, 0, 1]
    assert chain[3].verdicts == [{"by": "h9", "accuracy": pytest.approx(0.8), "loss": pytest.approx(0.2),
                                  "samples": 300, "t": 3.5}]
    assert lin.problems() == []
    assert lin.chain(2) == [] and lin.latest_good(2) is None


def test_chain_independent_of_recording_order():
    a, b = good_lineage(), Lineage()
    for x in reversed(a.versions()):  # children before parents: verdicts wait for their version
        b.add_version(**{k: y for k, y in x.__dict__.items() if k != "verdicts"})
    for x in a.versions():
        for d in x.verdicts:
            b.add_verdict(x.task, x.version, x.sha256, **d)
    assert [x.sha256 for x in b.chain(1)] == [x.sha256 for x in a.chain(1)]
    assert b.problems() == []


def test_latest_good_is_the_last_verified_version():
    lin = good_lineage()
    assert lin.latest_good(1).version == 3
    assert lin.latest_good(1, min_accuracy=0.75).version == 3
    assert lin.latest_good(1, min_accuracy=0.71).version == 3
    assert lin.latest_good(1, min_accuracy=0.85) is None
    # a new version not yet verified: the rollback point stays on the verified one
    lin.add_version(**v(1, 4, "m4", "m3"))
    assert lin.latest_good(1).version == 3
    # a worse version verified: with a floor, roll back past it
    verdict(lin, 1, 4, "m4", 0.3)
    assert lin.latest_good(1).version == 4
    assert lin.latest_good(1, min_accuracy=0.6).version == 3
    # two verifiers disagree: every verdict must clear the floor
    verdict(lin, 1, 3, "m3", 0.55, by="h10")
    assert lin.latest_good(1, min_accuracy=0.6).version == 2


def test_same_initial_model_in_two_tasks():
    # every task of a run starts from the same seeded model: one hash, two tasks
    lin = good_lineage(2, task=1)
    lin.add_version(**v(2, 0, "m0", None))
    lin.add_version(**v(2, 1, "x1", "m0"))
    verdict(lin, 2, 1, "x1", 0.6)
    assert [x.sha256 for x in lin.chain(2)] == [h("m0"), h("x1")]
    assert lin.problems() == []


# --- recording rules ------------------------------------------------------------------

def test_same_hash_same_fields_is_a_noop_other_fields_refused():
    lin = good_lineage(1)
    assert lin.add_version(**v(1, 1, "m1", "m0", trained_at="h2", samples=100, epochs=1,
                               label_hist=[1, 0, 1])) == []
    with pytest.raises(ValueError, match="already recorded"):
        lin.add_version(**v(1, 1, "m1", "m0", trained_at="h7", samples=100, epochs=1, label_hist=[1, 0, 1]))
    with pytest.raises(TypeError, match="add_verdict"):
        lin.add_version(**v(1, 5, "m5", "m1"), verdicts=[])
    with pytest.raises(TypeError, match="'colour'"):
        lin.add_version(**v(1, 5, "m5", "m1"), colour="red")


def test_events_returned():
    lin = Lineage()
    ev = lin.add_version(**v(1, 0, "m0", None))
    assert [e["kind"] for e in ev] == ["model_version"] and ev[0]["sha256"] == h("m0")
    ev = verdict(lin, 1, 1, "m1", 0.7)
    assert [e["kind"] for e in ev] == ["verdict_unknown_model"]
    assert verdict(lin, 1, 1, "m1", 0.7) == []  # the same verdict again
    ev = lin.add_version(**v(1, 1, "m1", "m0"))
    assert [e["kind"] for e in ev] == ["model_version", "model_verdict"]  # the waiting verdict joins
    assert verdict(lin, 1, 1, "m1", 0.7) == []
    ev = lin.add_version(**v(1, 1, "fork", "m0"))
    assert [e["kind"] for e in ev] == ["model_version", "model_fork"]
    assert set(ev[1]["children"]) == {h("m1"), h("fork")}
    ev = lin.add_version(**v(1, 5, "lost", "never"))
    assert [e["kind"] for e in ev] == ["model_version", "model_parent_unknown"]
    ev = lin.add_version(**v(1, 1, "back", "m1"))
    assert [e["kind"] for e in ev] == ["model_version", "model_version_not_increasing"]
    ev = verdict(lin, 1, 9, "m1", 0.7, by="h10")
    assert [e["kind"] for e in ev] == ["model_verdict", "verdict_version_mismatch"]


# --- problems, one case each ----------------------------------------------------------------

def test_problem_broken_chain():
    lin = good_lineage(1)
    lin.add_version(**v(1, 3, "m3", "m2"))  # m2 never recorded
    verdict(lin, 1, 3, "m3", 0.9)
    (p,) = lin.problems()
    assert "task 1 version 3" in p and h("m2")[:12] in p and "broken chain" in p
    # the chain starts where the record does
    assert [x.version for x in lin.chain(1)] == [3]


def test_problem_fork_unless_allowed():
    for allow in (False, True):
        lin = Lineage(allow_forks=allow)
        lin.add_version(**v(1, 0, "m0", None))
        for name in ("a", "b"):
            lin.add_version(**v(1, 1, name, "m0"))
            verdict(lin, 1, 1, name, 0.6)
        probs = lin.problems()
        if allow:
            assert probs == []
        else:
            (p,) = probs
            assert "fork" in p and "2 children" in p and h("a")[:12] in p and h("b")[:12] in p


def test_problem_version_not_increasing():
    lin = good_lineage(2)
    lin.add_version(**v(1, 2, "m3", "m2"))
    verdict(lin, 1, 2, "m3", 0.9)
    (p,) = lin.problems()
    assert "does not increase" in p and "version 2" in p


def test_problem_version_without_verdict():
    lin = good_lineage(1)
    lin.add_version(**v(1, 2, "m2", "m1"))
    (p,) = lin.problems()
    assert p.endswith("has no verdict") and "version 2" in p


def test_problem_verdict_for_unknown_hash():
    lin = good_lineage(1)
    verdict(lin, 1, 2, "ghost", 0.9)
    (p,) = lin.problems()
    assert "never recorded" in p and h("ghost")[:12] in p and "by h9" in p


def test_problem_no_initial_model_and_parentless_version():
    lin = Lineage()
    lin.add_version(**v(1, 2, "m2", None))
    verdict(lin, 1, 2, "m2", 0.9)
    assert lin.problems() == ["task 1: no initial model (version 0 without parent) recorded",
                              f"task 1 version 2 ({h('m2')[:12]}) has no parent hash but is not the "
                              f"initial model"]


def test_problem_verdict_names_another_version():
    lin = good_lineage(1)
    verdict(lin, 1, 4, "m1", 0.9, by="h10")
    (p,) = lin.problems()
    assert "names version 4" in p and "version 1" in p


# --- JSON ---------------------------------------------------------------------------------

def test_json_round_trip():
    lin = good_lineage()
    lin.add_version(**v(1, 4, "m4", "m3"))
    verdict(lin, 1, 9, "ghost", 0.1)
    lin.add_verdict(1, 2, h("m2"), "h10", 0.6, 0.4, 300, 9.0, per_class=[0.5, 0.7])
    verdict(lin, 1, 7, "m1", 0.1, by="h11")
    lin.notes.append("a note")
    d = json.loads(json.dumps(lin.to_dict()))
    back = Lineage.from_dict(d)
    assert back.to_dict() == lin.to_dict()
    assert back.problems() == lin.problems() and len(back.problems()) == 3
    assert [x.sha256 for x in back.chain(1)] == [x.sha256 for x in lin.chain(1)]
    assert back.get(1, h("m2")).verdicts[-1]["per_class"] == [0.5, 0.7]
    assert isinstance(back.get(1, h("m1")), ModelVersion)
    with pytest.raises(ValueError, match="'extra'"):
        Lineage.from_dict({**d, "extra": 1})


# --- from a run's events ---------------------------------------------------------------

def run_events(parent_hashes=True, client_transfer=True):
    """Events of a run shaped like real ones (nodes/roles.py, nodes/runtime.py, the DCC):
    client h1, data nodes h2 (noisy publication) and h4, MPVU h9; task 1 makes three hops."""
    ev = [
        {"t": 1.0, "src": "h2", "kind": "data_loaded", "samples": 312, "label_hist": [10, 20, 30],
         "published_label_hist": [11, 19, 30], "noise_epsilon": 1.0, "compute": True, "capacity": 1.0},
        {"t": 1.1, "src": "h4", "kind": "data_loaded", "samples": 200, "label_hist": [50, 0, 150]},
        {"t": 1.2, "src": "dcc", "kind": "knowledge_report", "node": "h2", "samples": 312,
         "label_hist": [11, 19, 30], "roles": ["data"]},
        {"t": 5.0, "src": "h1", "kind": "task_submitted", "task": 1, "model_bytes": 21469,
         "target_accuracy": 0.85, "deadline_s": 120.0, "required_labels": None},
        {"t": 5.1, "src": "dcc", "kind": "itinerary", "task": 1, "itinerary": ["h2", "h4"], "dscp": 8},
        {"t": 5.2, "src": "h1", "kind": "forward", "task": 1, "to": "h2", "ptr": 0, "lap": 0},
    ]
    if client_transfer:
        ev.append({"t": 5.3, "src": "h1", "kind": "transfer", "task": 1, "to": "h2", "msg": "MODEL_CHUNK",
                   "bytes": 21637, "state_bytes": 21469, "attempts": 1, "dscp": 8, "sha256": h("m0"),
                   "version": 0})
    # h2's published histogram changes (it hosts a shard) before the second lap
    hops = [(1, "h2", 6.0), (2, "h4", 7.0), (3, "h2", 9.0)]
    for version, node, t in hops:
        train = {"t": t, "src": node, "kind": "train", "task": 1, "hop": version, "lap": (version - 1) // 2,
                 "version": version, "samples": 312 if node == "h2" else 200, "loss": 1.0 / version,
                 "seconds": 0.05, "sha256": h(f"m{version}")}
        if parent_hashes:
            train["parent_sha256"] = h(f"m{version - 1}")
        acc = 0.5 + 0.1 * version
        ev += [train,
               {"t": t + 0.1, "src": "h9", "kind": "verdict", "task": 1, "version": version, "accuracy": acc,
                "loss": 1 - acc, "samples": 300, "per_class": [acc, acc, acc], "sha256": h(f"m{version}"),
                "trained_at": "10.0.0.2"},
               {"t": t + 0.15, "src": "dcc", "kind": "verdict_recorded", "task": 1, "version": version,
                "by": "h9", "accuracy": acc, "loss": 1 - acc, "samples": 300, "sha256": h(f"m{version}")},
               {"t": t + 0.2, "src": node, "kind": "evaluation", "task": 1, "hop": version, "at": node,
                "by": "h9", "accuracy": acc, "loss": 1 - acc, "version": version, "sha256": h(f"m{version}"),
                "samples": 300, "per_class": [acc, acc, acc]},
               {"t": t + 0.3, "src": node, "kind": "transfer", "task": 1, "to": "h4", "msg": "MODEL_CHUNK",
                "sha256": h(f"m{version}"), "version": version}]
        if version == 2:
            ev.append({"t": 8.0, "src": "dcc", "kind": "knowledge_changed", "node": "h2",
                       "changes": {"label_hist": [[11, 19, 30], [21, 19, 35]], "samples": [312, 400]}})
    ev.append({"t": 9.5, "src": "h1", "kind": "task_result", "task": 1, "end_reason": "max_laps"})
    return ev


def test_from_events_rebuilds_the_chain():
    lin = Lineage.from_events(run_events(), epochs=2)
    chain = lin.chain(1)
    assert [(x.version, x.sha256, x.parent_sha256) for x in chain] == [
        (0, h("m0"), None), (1, h("m1"), h("m0")), (2, h("m2"), h("m1")), (3, h("m3"), h("m2"))]
    assert [x.trained_at for x in chain] == [None, "h2", "h4", "h2"]
    assert chain[0].t == 5.0 and chain[0].model_id == 1  # submission time; model id = task id
    assert [x.epochs for x in chain] == [None, 2, 2, 2]
    assert [x.samples for x in chain] == [None, 312, 200, 312]
    # the published (noisy) histogram at that time, not the true one
    assert [x.label_hist for x in chain] == [None, [11, 19, 30], [50, 0, 150], [21, 19, 35]]
    # one verdict per version although the MPVU, the DCC and the data node each logged it
    assert [len(x.verdicts) for x in chain] == [0, 1, 1, 1]
    assert chain[3].verdicts[0] == {"by": "h9", "accuracy": pytest.approx(0.8), "loss": pytest.approx(0.2),
                                    "samples": 300, "t": 9.1, "per_class": [pytest.approx(0.8)] * 3}
    assert lin.problems() == [] and lin.notes == []
    assert lin.latest_good(1).version == 3 and lin.latest_good(1, 0.65).version == 3
    assert lin.latest_good(1, 0.75).version == 3 and lin.latest_good(1, 0.85) is None


def test_from_events_without_parent_hashes_or_client_transfer():
    # older runs: no parent_sha256 in train events; without the client's transfer the
    # initial hash comes from the first training's parent
    lin = Lineage.from_events(run_events(parent_hashes=False))
    assert [x.version for x in lin.chain(1)] == [0, 1, 2, 3] and lin.problems() == []
    assert len(lin.notes) == 3 and "no parent_sha256" in lin.notes[0]
    lin = Lineage.from_events(run_events(client_transfer=False))
    assert lin.chain(1)[0].sha256 == h("m0")
    assert lin.notes == ["task 1: initial model hash taken from the first training's parent_sha256 "
                         "(no version-0 transfer event)"]
    lin = Lineage.from_events(run_events(parent_hashes=False, client_transfer=False))
    assert "initial model hash unknown" in lin.notes[0]
    assert any("no initial model" in p for p in lin.problems())


def test_from_events_uses_dcc_or_node_record_when_mpvu_events_lost():
    ev = [e for e in run_events() if e["kind"] != "verdict"]
    lin = Lineage.from_events(ev)
    assert [len(x.verdicts) for x in lin.chain(1)] == [0, 1, 1, 1] and lin.problems() == []
    assert "per_class" not in lin.chain(1)[1].verdicts[0]  # the DCC does not log it
    ev = [e for e in ev if e["kind"] != "verdict_recorded"]  # the data nodes' evaluation remains
    lin = Lineage.from_events(ev)
    assert [x.verdicts[0]["per_class"] for x in lin.chain(1)[1:]] == [
        [pytest.approx(0.5 + 0.1 * i)] * 3 for i in (1, 2, 3)]
    assert [x.verdicts[0]["t"] for x in lin.chain(1)[1:]] == [6.2, 7.2, 9.2] and lin.problems() == []


def test_from_events_reports_a_lost_train_record():
    ev = [e for e in run_events() if not (e["kind"] == "train" and e["version"] == 2)]
    lin = Lineage.from_events(ev)
    probs = lin.problems()
    assert any("version 3" in p and "broken chain" in p for p in probs)
    assert any(h("m2")[:12] in p and "never recorded" in p and "verdict" in p for p in probs)
    assert [x.version for x in lin.chain(1)] == [3]
    assert lin.latest_good(1).version == 3


def test_from_events_json_round_trip():
    lin = Lineage.from_events(run_events(parent_hashes=False))
    back = Lineage.from_dict(json.loads(json.dumps(lin.to_dict())))
    assert back.to_dict() == lin.to_dict() and back.notes == lin.notes
