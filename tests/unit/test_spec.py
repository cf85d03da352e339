"""Unit tests for experiment specs (testbed/spec.py): strict YAML, clear errors, --set overrides."""
import copy
from pathlib import Path

import pytest
import yaml

from testbed.spec import ROLES, SpecError, load_spec, parse_overrides

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"

GOOD = {
    "name": "unit",
    "seed": 1,
    "topology": {"generator": "tree", "params": {"depth": 2, "fanout": 3}},  # h1..h9
    "links": {"bw": 100},
    "nodes": {"h1": ["client"], "h2": ["data"], "h4": ["data", "client"], "h9": ["mpvu"]},
    "training": {"lr": 0.05},
    "tasks": [{"id": 1, "client": "h1", "target_accuracy": 0.8, "deadline_s": 60}],
    "capture": ["h1-eth0", "s1-eth2"],
}


def _unknown_role(d):
    d["nodes"]["h3"] = ["trainer"]


def _no_mpvu(d):
    del d["nodes"]["h9"]


def _two_mpvus(d):
    d["nodes"]["h3"] = ["mpvu"]


# (id, mutation of GOOD, expected field, fragment of the reason)
BAD = [
    ("unknown_top_key", lambda d: d.update(colour="blue"), "colour", "unknown key"),
    ("unknown_nested_key", lambda d: d["training"].update(lrr=0.1), "training.lrr", "unknown key"),
    ("missing_topology", lambda d: d.pop("topology"), "topology", "required field is missing"),
    ("unknown_generator", lambda d: d.update(topology={"generator": "hypercube"}), "topology",
     "unknown generator 'hypercube'"),
    ("unknown_zoo", lambda d: d.update(topology={"zoo": "sndlib/nowhere"}), "topology",
     "sndlib/nowhere"),
    ("negative_bw", lambda d: d.update(links={"bw": -5}), "links.bw", "greater than 0"),
    ("host_not_in_topology", lambda d: d["nodes"].update(h42=["data"]), "nodes.h42",
     "no host 'h42' in topology"),
    ("unknown_role", _unknown_role, "nodes.h3", "unknown role 'trainer'"),
    ("no_mpvu", _no_mpvu, "nodes", "'mpvu'"),
    ("two_mpvus", _two_mpvus, "nodes", "exactly one host"),
    ("task_client_not_client", lambda d: d["tasks"][0].update(client="h2"), "tasks.0.client",
     "'h2' does not have the role 'client'"),
    ("bad_capture_name", lambda d: d.update(capture=["h1-eth0", "eth0"]), "capture.1",
     "'eth0' is not an interface"),
    ("capture_unknown_node", lambda d: d.update(capture=["h77-eth0"]), "capture.0",
     "'h77-eth0' is not an interface"),
    ("missing_task_field", lambda d: d["tasks"][0].pop("deadline_s"), "tasks.0.deadline_s",
     "required field is missing"),
    ("bad_loss", lambda d: d.update(links={"loss": 150}), "links.loss", "100"),
    ("host_opts_unknown_host", lambda d: d.update(hosts={"h5": {"capacity": 0.5}}), "hosts.h5",
     "has no roles"),
    ("capacity_above_one", lambda d: d.update(hosts={"h2": {"capacity": 2}}), "hosts.h2.capacity",
     "less than or equal to 1"),
    ("trusts_non_compute", lambda d: d.update(hosts={"h2": {"compute": False, "trusts": ["h9"]}}),
     "hosts.h2.trusts.0", "not a compute node"),
    ("bad_privacy", lambda d: d.update(hosts={"h2": {"privacy": "secret"}}), "hosts.h2.privacy",
     "'public', 'trusted' or 'local'"),
    ("bad_partition", lambda d: d.update(data={"partition": "zipf"}), "data.partition", "k_labels"),
    ("bad_dataset", lambda d: d.update(data={"dataset": "imagenet"}), "data.dataset", "cifar10"),
    ("workload_server_not_inference",
     lambda d: d.update(workloads=[{"client": "h1", "server": "h2", "model": 1}]),
     "workloads.0.server", "'inference'"),
    ("workload_unknown_model",
     lambda d: (d["nodes"].update(h3=["inference"]),
                d.update(workloads=[{"client": "h1", "server": "h3", "model": 7}])),
     "workloads.0.model", "no task with id 7"),
    ("workload_model_not_deployed",
     lambda d: (d["nodes"].update(h3=["inference"]),
                d.update(workloads=[{"client": "h1", "server": "h3", "model": 1}])),
     "workloads.0.server", "deploy_to"),
    ("deploy_to_non_inference", lambda d: d["tasks"][0].update(deploy_to=["h2"]),
     "tasks.0.deploy_to.0", "'inference'"),
    ("timeline_not_a_link",
     lambda d: d.update(timeline=[{"at_s": 1, "kind": "set_link", "link": ["h1", "h9"], "bw": 5}]),
     "timeline.0.link", "not joined"),
    ("timeline_link_without_change",
     lambda d: d.update(timeline=[{"at_s": 1, "kind": "set_link", "link": ["s2", "h1"]}]),
     "timeline.0", "bw and/or loss"),
    ("timeline_crash_unknown",
     lambda d: d.update(timeline=[{"at_s": 1, "kind": "crash_node", "node": "h8"}]),
     "timeline.0.node", "a host listed under nodes"),
    ("timeline_link_down_unknown",
     lambda d: d.update(timeline=[{"at_s": 1, "kind": "link_down", "link": ["s2", "s9"]}]),
     "timeline.0.link", "not joined by a link"),
    ("timeline_drift_no_labels",
     lambda d: d.update(timeline=[{"at_s": 1, "kind": "drift", "node": "h2"}]),
     "timeline.0.labels", "labels"),
    ("timeline_drift_not_data",
     lambda d: d.update(timeline=[{"at_s": 1, "kind": "drift", "node": "h1", "labels": [1]}]),
     "timeline.0.node", "no role 'data'"),
    ("timeline_join_client",
     lambda d: d.update(timeline=[{"at_s": 1, "kind": "join_node", "node": "h1"}]),
     "timeline.0.node", "must run from the start"),
    ("timeline_crash_before_join",
     lambda d: d.update(timeline=[{"at_s": 5, "kind": "join_node", "node": "h2"},
                                  {"at_s": 1, "kind": "crash_node", "node": "h2"}]),
     "timeline.1.at_s", "joins only at 5"),
    ("duplicate_task_id", lambda d: d["tasks"].append(dict(d["tasks"][0])), "tasks.1.id",
     "duplicate task id 1"),
    ("no_tasks", lambda d: d.update(tasks=[]), "tasks", "at least one task"),
    ("no_data_node", lambda d: d["nodes"].update(h2=["client"], h4=["client"]), "nodes",
     "role 'data'"),
    ("bad_generator_param", lambda d: d.update(topology={"generator": "ring", "params": {"n": 2}}),
     "topology", "n must be an integer >= 3"),
]


def write(tmp_path, data, name="spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def bad_spec(tmp_path, mutate) -> Path:
    d = copy.deepcopy(GOOD)
    mutate(d)
    return write(tmp_path, d)


# --- good specs -------------------------------------------------------------------

def test_shipped_quickstart_loads():
    spec, topo = load_spec(QUICKSTART)
    assert spec.name == "quickstart"
    assert topo.name == "tree-2x3"
    assert (len(topo.switches), len(topo.hosts)) == (4, 9)
    assert spec.hosts_with("data") == ["h2", "h4", "h6", "h8"]
    assert spec.hosts_with("mpvu") == ["h9"]
    assert spec.hosts_with("client") == ["h1"]
    assert all(ln.bw_mbit == 100 for ln in topo.links)  # links.bw applied as a default
    assert spec.tasks[0].client == "h1" and spec.tasks[0].max_laps == 6


def test_good_spec_and_defaults(tmp_path):
    spec, topo = load_spec(write(tmp_path, GOOD))
    assert spec.training.lr == 0.05
    assert spec.training.local_epochs == 1  # defaulted
    assert spec.data.dataset == "digits" and spec.data.alpha == 0.3
    assert spec.model.hidden == [64]
    assert spec.controller.lldp_interval_s == 1.0
    assert spec.mode == "dcc"
    assert spec.tasks[0].required_labels is None
    assert spec.hosts_with("client") == ["h1", "h4"]
    assert spec.capture == ["h1-eth0", "s1-eth2"]
    assert all(ln.bw_mbit == 100 and ln.delay_ms is None and ln.loss_pct is None
               for ln in topo.links)


def test_hosts_with_sorts_numerically(tmp_path):
    d = copy.deepcopy(GOOD)
    d["nodes"] = {"h9": ["mpvu"], "h10": ["data"], "h2": ["data"], "h1": ["client"]}
    d["topology"] = {"generator": "linear", "params": {"n": 10}}
    spec, _ = load_spec(write(tmp_path, d))
    assert spec.hosts_with("data") == ["h2", "h10"]


def test_topology_file_is_resolved_relative_to_spec(tmp_path):
    (tmp_path / "topo.yaml").write_text((REPO / "topologies" / "two_switch.yaml").read_text())
    d = copy.deepcopy(GOOD)
    d["topology"] = {"file": "topo.yaml"}
    d["nodes"] = {"h1": ["client", "data"], "h2": ["mpvu"]}
    d["capture"] = []
    spec, topo = load_spec(write(tmp_path, d))
    assert "h1" in topo.hosts and "h2" in topo.hosts


def test_roles_constant():
    assert ROLES == ("client", "data", "compute", "mpvu", "inference")


# --- bad specs -------------------------------------------------------------------

@pytest.mark.parametrize("mutate, field, reason", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_spec(tmp_path, mutate, field, reason):
    p = bad_spec(tmp_path, mutate)
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    e = ei.value
    assert e.file == str(p)
    assert e.field == field
    assert reason in e.reason
    assert str(e) == f"{p}: {field}: {e.reason}"
    assert isinstance(e, ValueError)


def test_unknown_key_reason_text(tmp_path):
    with pytest.raises(SpecError) as ei:
        load_spec(bad_spec(tmp_path, lambda d: d["training"].update(lrr=0.1)))
    assert ei.value.reason == "unknown key (not part of the spec format; check spelling)"


def test_unknown_zoo_suggests(tmp_path):
    with pytest.raises(SpecError) as ei:
        load_spec(bad_spec(tmp_path, lambda d: d.update(topology={"zoo": "sndlib/abilen"})))
    assert "sndlib/abilene" in ei.value.reason


def test_unknown_role_lists_roles(tmp_path):
    with pytest.raises(SpecError) as ei:
        load_spec(bad_spec(tmp_path, _unknown_role))
    assert "client, data, compute, mpvu, inference" in ei.value.reason


def test_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    assert (ei.value.file, ei.value.field) == (str(p), "(file)")


@pytest.mark.parametrize("text, field", [("name: [unclosed\n", "(yaml)"), ("- a\n- b\n", "(top level)"),
                                         ("", "(top level)")])
def test_not_a_mapping_or_not_yaml(tmp_path, text, field):
    with pytest.raises(SpecError) as ei:
        load_spec(write(tmp_path, text))
    assert ei.value.field == field


# --- --set overrides -------------------------------------------------------------

def test_parse_overrides_types():
    assert parse_overrides(["seed=5", "links.bw=20", "name=a=b", "training.lr=1e-2",
                            "capture=[h1-eth0]", " seed = 7"], "f.yaml") == [
        ("seed", 5), ("links.bw", 20), ("name", "a=b"), ("training.lr", "1e-2"),
        ("capture", ["h1-eth0"]), ("seed", 7)]
    assert parse_overrides(None, "f") == []
    assert parse_overrides([], "f") == []


def test_parse_overrides_needs_equals():
    with pytest.raises(SpecError) as ei:
        parse_overrides(["seed"], "f.yaml")
    assert (ei.value.file, ei.value.field) == ("f.yaml", "seed")
    assert "key=value" in ei.value.reason


def test_overrides_apply(tmp_path):
    p = write(tmp_path, GOOD)
    spec, topo = load_spec(p, ["seed=5", "links.bw=20", "training.local_epochs=3",
                               "controller.lldp_interval_s=0.5", "links.delay=0"])
    assert spec.seed == 5
    assert spec.links.bw == 20
    assert all(ln.bw_mbit == 20 for ln in topo.links)
    assert spec.training.local_epochs == 3 and spec.training.lr == 0.05  # sibling kept
    assert spec.controller.lldp_interval_s == 0.5
    # the file itself is untouched
    assert yaml.safe_load(p.read_text()) == GOOD


def test_override_creates_missing_section(tmp_path):
    d = copy.deepcopy(GOOD)
    del d["links"]
    spec, topo = load_spec(write(tmp_path, d), ["links.loss=1.5"])
    assert spec.links.loss == 1.5
    assert all(ln.loss_pct == 1.5 for ln in topo.links)


def test_override_later_wins(tmp_path):
    spec, _ = load_spec(write(tmp_path, GOOD), ["seed=2", "seed=9"])
    assert spec.seed == 9


def test_override_cannot_descend_into_list(tmp_path):
    p = write(tmp_path, GOOD)
    with pytest.raises(SpecError) as ei:
        load_spec(p, ["tasks.id=3"])
    assert ei.value.field == "tasks.id"
    assert "cannot descend into 'tasks'" in ei.value.reason
    assert str(ei.value).startswith(f"{p}: tasks.id: ")


def test_override_cannot_descend_into_scalar(tmp_path):
    with pytest.raises(SpecError, match="cannot descend into 'seed'"):
        load_spec(write(tmp_path, GOOD), ["seed.x=1"])


def test_override_is_validated(tmp_path):
    with pytest.raises(SpecError) as ei:
        load_spec(write(tmp_path, GOOD), ["links.bw=-5"])
    assert ei.value.field == "links.bw"
    with pytest.raises(SpecError) as ei:
        load_spec(write(tmp_path, GOOD), ["training.lrr=1"])
    assert (ei.value.field, ei.value.reason.split(" ")[0]) == ("training.lrr", "unknown")
    with pytest.raises(SpecError) as ei:
        load_spec(write(tmp_path, GOOD), ["nodes.h3=[trainer]"])
    assert ei.value.field == "nodes.h3"


def test_override_can_fix_a_bad_spec(tmp_path):
    p = bad_spec(tmp_path, lambda d: d.update(links={"bw": -5}))
    spec, _ = load_spec(p, ["links.bw=10"])
    assert spec.links.bw == 10


@pytest.mark.parametrize("intf", ["s1-eth99", "h1-eth3", "s1-eth0"])
def test_capture_port_must_exist(tmp_path, intf):
    d = copy.deepcopy(GOOD)
    d["capture"] = [intf]
    with pytest.raises(SpecError) as ei:
        load_spec(write(tmp_path, d))
    assert ei.value.field == "capture.0"


def test_replicas_and_deploy_to_are_exclusive(tmp_path):
    def both(d):
        d["nodes"]["h3"] = ["inference"]
        d["tasks"][0].update(deploy_to=["h3"], replicas=1)
    with pytest.raises(SpecError) as ei:
        load_spec(bad_spec(tmp_path, both))
    assert ei.value.field == "tasks.0.replicas" and "not both" in ei.value.reason


def test_workload_without_server_is_routed_by_the_dcc(tmp_path):
    def routed(d):
        d["nodes"]["h3"] = ["inference"]
        d["tasks"][0].update(replicas=1)
        d["workloads"] = [{"client": "h1", "model": 1}]
    spec, _ = load_spec(bad_spec(tmp_path, routed))
    assert spec.workloads[0].server is None

    def nowhere(d):
        d["workloads"] = [{"client": "h1", "model": 1}]
    with pytest.raises(SpecError) as ei:
        load_spec(bad_spec(tmp_path, nowhere))
    assert ei.value.field == "workloads.0.model" and "deployed nowhere" in ei.value.reason
