"""Experiment specs: typed, defaulted, strict YAML (unknown keys are errors).

``load_spec(path, overrides)`` returns a :class:`Spec` plus the resolved
:class:`topologies.Topology`, or raises :class:`SpecError` naming the file,
the field and the reason. Nothing here needs root or starts anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import topologies
from topologies.model import Topology, TopologyError

ROLES = ("client", "data", "compute", "mpvu", "inference")


class SpecError(ValueError):
    """A spec is invalid: ``str()`` reads 'FILE: FIELD: REASON'."""

    def __init__(self, file: str, field: str, reason: str):
        self.file, self.field, self.reason = file, field, reason
        super().__init__(f"{file}: {field}: {reason}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LinkDefaults(_Strict):
    """Applied to every link whose topology does not set the parameter."""
    bw: float | None = Field(None, gt=0, description="Mbit/s")
    delay: float | None = Field(None, ge=0, description="one-way delay, ms (netem, or ns-3 where "
                                                          "the kernel has no netem)")
    loss: float | None = Field(None, ge=0, le=100, description="random loss per direction, %")
    override: bool = Field(False, description="replace the topology's own link values (e.g. "
                                              "topohub propagation delays) instead of filling unset ones")
    backend: Literal["auto", "tc", "ns3"] = Field(
        "auto", description="what emulates a link whose topology entry names no backend: tc (veth + "
                            "HTB), ns3 (taps joined by ns-3), auto (ns3 for a link with delay on a "
                            "kernel without netem, else tc)")


class SyntheticSpec(_Strict):
    samples: int = Field(2000, ge=20)
    features: int = Field(32, ge=2)
    classes: int = Field(10, ge=2, le=256)
    class_sep: float = Field(1.5, gt=0)


class VerificationSpec(_Strict):
    """The MPVU's verification set, taken from the held-out split."""
    samples: int | None = Field(None, ge=1, description="cap (stratified); None: the whole split")
    labels: list[int] | None = Field(None, description="only these labels; None: all")


class DataSpec(_Strict):
    dataset: Literal["digits", "synthetic", "mnist", "fashion_mnist", "cifar10"] = "digits"
    root: str | None = Field(None, description="directory in torchvision's on-disk layout "
                                               "(mnist, fashion_mnist, cifar10)")
    max_samples: int | None = Field(None, ge=10, description="cap on the training pool (stratified)")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec)
    partition: Literal["dirichlet", "iid", "k_labels", "quantity_skew"] = "dirichlet"
    alpha: float = Field(0.3, gt=0, description="dirichlet concentration")
    labels_per_node: int = Field(2, ge=1, description="k_labels: distinct labels per data node")
    skew_sigma: float = Field(1.0, gt=0, description="quantity_skew: lognormal sigma of node sizes")
    verification_fraction: float = Field(0.25, gt=0, lt=1)
    min_samples_per_node: int = Field(10, ge=1)
    verification: VerificationSpec = Field(default_factory=VerificationSpec)


class HostSpec(_Strict):
    """Per-host options of the terminal layer."""
    compute: bool = Field(True, description="a data node trains visiting models itself; false: it "
                                            "has no compute and its data can only be used at a "
                                            "compute node it trusts, if its privacy level allows")
    capacity: float = Field(1.0, gt=0, le=1, description="relative compute speed (1 = one full "
                                                          "core); enforced by throttling training steps")
    privacy: Literal["public", "trusted", "local"] = Field(
        "trusted", description="where this node's raw data may go: public: any compute node; "
                               "trusted: only compute nodes listed in trusts; local: nowhere")
    trusts: list[str] = Field(default_factory=list, description="compute nodes this node trusts")
    noise_epsilon: float | None = Field(None, gt=0, description="Laplace noise on this node's "
                                                                 "label histogram (overrides knowledge.noise_epsilon)")


class KnowledgeSpec(_Strict):
    """Knowledge reports (they double as heartbeats) and how the DCC ages them."""
    report_interval_s: float = Field(1.0, gt=0, le=60)
    noise_epsilon: float | None = Field(None, gt=0, description="Laplace noise (epsilon) on label "
                                                                 "histograms; None: exact counts")
    down_after_intervals: float = Field(2.5, gt=1, description="a node silent this many report "
                                                              "intervals is marked down")
    port_stats_interval_s: float = Field(1.0, gt=0, le=60, description="how often the DCC reads "
                                                                       "switch port counters")


class InferenceSpec(_Strict):
    max_batch: int = Field(8, ge=1, description="queries answered together")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits to fill")


class WorkloadSpec(_Strict):
    """A client's inference query workload, started when the model of ``model`` is deployed."""
    client: str
    server: str | None = Field(None, description="inference host that serves the queries; "
                                                 "None: the DCC routes each query (QIRCE)")
    model: int = Field(ge=1, description="id of the training task whose final model answers them")
    queries: int = Field(100, ge=1)
    rate_qps: float = Field(20.0, gt=0, description="mean arrival rate")
    arrivals: Literal["poisson", "constant", "bursty"] = "poisson"
    burst_size: int = Field(10, ge=1, description="bursty: queries sent back to back per burst")
    max_latency_ms: float | None = Field(None, gt=0)
    min_accuracy: float | None = Field(None, gt=0, le=1)
    privacy: Literal["public", "trusted", "local"] = "public"


class TimelineEvent(_Strict):
    """Something that happens to the network during the run (seconds after the clients start).

    ``set_link`` (bw and/or loss), ``link_down`` / ``link_up`` (both interfaces of the
    link administratively down/up: the switch reports it as a cut cable),
    ``crash_node`` (its node process is killed), ``join_node`` (a node listed under
    ``nodes`` starts only now: it is not running before), ``drift`` (a data node's
    data changes: ``fraction`` of its samples are replaced by samples of ``labels``)."""
    at_s: float = Field(ge=0)
    kind: Literal["set_link", "link_down", "link_up", "crash_node", "join_node", "drift"]
    link: list[str] | None = Field(None, description="set_link, link_down, link_up: the two ends, e.g. [s1, s2]")
    bw: float | None = Field(None, gt=0, description="set_link: new bandwidth, Mbit/s")
    loss: float | None = Field(None, ge=0, le=100, description="set_link: new loss, %")
    node: str | None = Field(None, description="crash_node, join_node, drift: the host")
    labels: list[int] | None = Field(None, description="drift: the labels of the node's new samples")
    fraction: float = Field(1.0, gt=0, le=1, description="drift: share of the node's samples replaced")


class ModelSpec(_Strict):
    hidden: list[int] = Field(default_factory=lambda: [64])

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v):
        if not v or any(w <= 0 for w in v):
            raise ValueError("hidden layer widths must be a non-empty list of positive integers")
        return v


class TrainingSpec(_Strict):
    local_epochs: int = Field(1, ge=1)
    lr: float = Field(0.1, gt=0)
    batch_size: int = Field(4, ge=1)
    momentum: float = Field(0.5, ge=0, lt=1)
    torch_threads: int = Field(1, ge=1, description="per node process; many nodes share 2 cores")


class TaskSpec(_Strict):
    id: int = Field(ge=1, lt=2**32)
    client: str
    target_accuracy: float = Field(gt=0, le=1)
    deadline_s: float = Field(gt=0)
    max_laps: int = Field(10, ge=1)
    required_labels: list[int] | None = None
    deploy_to: list[str] = Field(default_factory=list, description="inference hosts that get the "
                                                                    "final model")
    replicas: int | None = Field(None, ge=1, description="the DCC places this many replicas of the "
                                                          "final model on inference hosts near the "
                                                          "query sources of its workloads (instead of deploy_to)")
    byte_budget: int | None = Field(None, gt=0, description="bytes the model's travels may put on "
                                                            "the wire (T-FAM refuses plans above it)")


class ControllerSpec(_Strict):
    policy: Literal["greedy", "search", "naive"] = Field(
        "greedy", description="MTRCE policy: greedy coverage-per-cost, search (exact on small "
                              "graphs), naive (random order, shortest paths: a baseline)")
    reserve_mbps: float | None = Field(None, gt=0, description="bandwidth each hop reserves with "
                                                               "OpenFlow meters (None: no meters)")
    lldp_interval_s: float = Field(1.0, gt=0)
    converge_timeout_s: float = Field(60, gt=0)


class Spec(_Strict):
    name: str
    seed: int = 0
    mode: Literal["dcc"] = "dcc"
    serve_s: float = Field(0, ge=0, description="after their own tasks and workloads, clients keep "
                                                "taking tasks and queries submitted through the DCC's "
                                                "API (`daitn submit`) until none came for this long; "
                                                "0: the run ends with the spec's work")
    topology: dict
    links: LinkDefaults = Field(default_factory=LinkDefaults)
    nodes: dict[str, list[str]]
    hosts: dict[str, HostSpec] = Field(default_factory=dict)
    knowledge: KnowledgeSpec = Field(default_factory=KnowledgeSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    tasks: list[TaskSpec]
    inference: InferenceSpec = Field(default_factory=InferenceSpec)
    workloads: list[WorkloadSpec] = Field(default_factory=list)
    timeline: list[TimelineEvent] = Field(default_factory=list)
    capture: list[str] = Field(default_factory=list, description="interfaces to capture, e.g. h1-eth0, s1-eth2")
    controller: ControllerSpec = Field(default_factory=ControllerSpec)

    def hosts_with(self, role: str) -> list[str]:
        return sorted((h for h, roles in self.nodes.items() if role in roles), key=lambda h: int(h[1:]))

    def host(self, name: str) -> HostSpec:
        return self.hosts.get(name) or HostSpec()

    def computes(self, name: str) -> bool:
        """Can ``name`` train a model: a compute node, or a data node with compute."""
        roles = self.nodes.get(name, [])
        return "compute" in roles or ("data" in roles and self.host(name).compute)


def _set_dotted(d: dict, dotted: str, value, file: str):
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        if not isinstance(cur.get(k, {}), dict):
            raise SpecError(file, dotted, f"--set cannot descend into {k!r}: it is not a mapping")
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value


def parse_overrides(items: list[str] | None, file: str) -> list[tuple[str, object]]:
    out = []
    for item in items or []:
        if "=" not in item:
            raise SpecError(file, item, "--set takes key=value, e.g. --set seed=3")
        k, v = item.split("=", 1)
        out.append((k.strip(), yaml.safe_load(v)))
    return out


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"]) or "(top level)"


def load_spec(path: str | Path, overrides: list[str] | None = None) -> tuple[Spec, Topology]:
    """Read, override, validate; resolve the topology and check roles against it."""
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise SpecError(file, "(file)", "no such spec file; see experiments/ for examples")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(file, "(yaml)", f"not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(file, "(top level)", "a spec is a YAML mapping")
    for k, v in parse_overrides(overrides, file):
        _set_dotted(raw, k, v, file)
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the spec format; check spelling)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        raise SpecError(file, _loc(err), msg) from None
    return spec, resolve_topology(spec, file, path.parent)


def resolve_topology(spec: Spec, file: str, base_dir: Path) -> Topology:
    try:
        topo = topologies.resolve(spec.topology, base_dir=str(base_dir))
        if spec.links.override:
            topo = topo.with_link_values(spec.links.bw, spec.links.delay, spec.links.loss)
        else:
            topo = topo.with_link_defaults(spec.links.bw, spec.links.delay, spec.links.loss)
        topo.validate()
    except TopologyError as e:
        raise SpecError(file, "topology", str(e)) from None
    hosts = set(topo.hosts)
    for host, roles in spec.nodes.items():
        if host not in hosts:
            raise SpecError(file, f"nodes.{host}",
                            f"no host {host!r} in topology {topo.name!r} (it has {_span(topo.hosts)})")
        for r in roles:
            if r not in ROLES:
                raise SpecError(file, f"nodes.{host}", f"unknown role {r!r}; roles are {', '.join(ROLES)}")
    if not spec.hosts_with("data"):
        raise SpecError(file, "nodes", "at least one host needs the role 'data'")
    if len(spec.hosts_with("mpvu")) != 1:
        raise SpecError(file, "nodes", "exactly one host needs the role 'mpvu' (the model verification unit)")
    ids = set()
    for i, t in enumerate(spec.tasks):
        if t.replicas and t.deploy_to:
            raise SpecError(file, f"tasks.{i}.replicas", "give either deploy_to (fixed hosts) or replicas "
                                                         "(the DCC places them), not both")
        if t.replicas and not spec.hosts_with("inference"):
            raise SpecError(file, f"tasks.{i}.replicas", "no host has the role 'inference'")
        for j, h in enumerate(t.deploy_to):
            if "inference" not in spec.nodes.get(h, []):
                raise SpecError(file, f"tasks.{i}.deploy_to.{j}", f"{h!r} does not have the role 'inference'")
        if t.id in ids:
            raise SpecError(file, f"tasks.{i}.id", f"duplicate task id {t.id}")
        ids.add(t.id)
        if "client" not in spec.nodes.get(t.client, []):
            raise SpecError(file, f"tasks.{i}.client", f"{t.client!r} does not have the role 'client'")
    if not spec.tasks and not spec.serve_s:
        raise SpecError(file, "tasks", "at least one task is needed (or serve_s > 0 to take tasks "
                                       "submitted with `daitn submit` while the run goes on)")
    _check_terminal(spec, file)
    adjacent = {frozenset((l.a, l.b)) for l in topo.links}
    for i, e in enumerate(spec.timeline):
        if e.kind in ("set_link", "link_down", "link_up") and frozenset(e.link) not in adjacent:
            raise SpecError(file, f"timeline.{i}.link", f"{e.link[0]} and {e.link[1]} are not joined "
                                                        f"by a link in {topo.name!r}")
    from testbed.network import plan_ports  # pure; imports no mininet
    intfs = {f"{n}-eth{p}" for a, ap, b, bp in plan_ports(topo) for n, p in ((a, ap), (b, bp))}
    for i, intf in enumerate(spec.capture):
        if intf not in intfs:
            raise SpecError(file, f"capture.{i}", f"{intf!r} is not an interface of this topology "
                                                  f"(hosts have hN-eth0, switch sN has sN-eth1.."
                                                  f"sN-eth<degree>; see `daitn topo show`)")
    return topo


def check_data(spec: Spec, file) -> dict:
    """Load the data set once and partition it as the nodes will, so a bad data
    spec (missing files, a partition that cannot give every node enough
    samples) fails before anything starts; returns the model's input and output sizes."""
    from nodes.data import DataError, make_shards
    try:
        _, ds = make_shards(spec.hosts_with("data"), spec.data.model_dump(), spec.seed)
    except DataError as e:
        raise SpecError(str(file), e.field, e.reason) from None
    return {"in_features": ds.in_features, "n_classes": ds.n_classes}


def _check_terminal(spec: Spec, file: str):
    """Cross-field rules of the terminal layer (hosts, workloads, timeline)."""
    for host, opts in spec.hosts.items():
        if host not in spec.nodes:
            raise SpecError(file, f"hosts.{host}", f"{host!r} has no roles under nodes:")
        for j, t in enumerate(opts.trusts):
            if "compute" not in spec.nodes.get(t, []):
                raise SpecError(file, f"hosts.{host}.trusts.{j}",
                                f"{t!r} is not a compute node (give it the role 'compute')")
    task_ids = {t.id: t for t in spec.tasks}
    for i, w in enumerate(spec.workloads):
        if "client" not in spec.nodes.get(w.client, []):
            raise SpecError(file, f"workloads.{i}.client", f"{w.client!r} does not have the role 'client'")
        if w.server is not None and "inference" not in spec.nodes.get(w.server, []):
            raise SpecError(file, f"workloads.{i}.server", f"{w.server!r} does not have the role 'inference'")
        if w.model not in task_ids:
            raise SpecError(file, f"workloads.{i}.model", f"no task with id {w.model}")
        if w.server is None and not (task_ids[w.model].deploy_to or task_ids[w.model].replicas):
            raise SpecError(file, f"workloads.{i}.model",
                            f"task {w.model}'s model is deployed nowhere; set tasks[id={w.model}].deploy_to "
                            f"or .replicas")
        if w.server is not None and w.server not in task_ids[w.model].deploy_to:
            raise SpecError(file, f"workloads.{i}.server",
                            f"task {w.model}'s model is not deployed to {w.server!r}; "
                            f"add it to tasks[id={w.model}].deploy_to")
    joins: dict[str, float] = {}
    for i, e in enumerate(spec.timeline):
        if e.kind in ("set_link", "link_down", "link_up"):
            if not e.link or len(e.link) != 2:
                raise SpecError(file, f"timeline.{i}.link", f"{e.kind} needs link: [END_A, END_B]")
            if e.kind == "set_link" and e.bw is None and e.loss is None:
                raise SpecError(file, f"timeline.{i}", "set_link needs bw and/or loss")
        elif e.node not in spec.nodes:
            raise SpecError(file, f"timeline.{i}.node", f"{e.kind} needs node: a host listed under nodes "
                                                        f"(got {e.node!r})")
        if e.kind == "join_node":
            if e.node in joins:
                raise SpecError(file, f"timeline.{i}.node", f"{e.node} joins twice")
            if e.node in {t.client for t in spec.tasks} or "mpvu" in spec.nodes[e.node]:
                raise SpecError(file, f"timeline.{i}.node", f"{e.node} is a task's client or the MPVU, "
                                                            "which must run from the start")
            joins[e.node] = e.at_s
        if e.kind == "drift":
            if "data" not in spec.nodes[e.node]:
                raise SpecError(file, f"timeline.{i}.node", f"{e.node} has no role 'data': nothing to drift")
            if not e.labels:
                raise SpecError(file, f"timeline.{i}.labels", "drift needs labels: the labels of the new samples")
    for i, e in enumerate(spec.timeline):
        if e.kind in ("crash_node", "drift") and e.node in joins and e.at_s < joins[e.node]:
            raise SpecError(file, f"timeline.{i}.at_s", f"{e.node} joins only at {joins[e.node]:g} s")



def _span(names: list[str]) -> str:
    return f"{names[0]}..{names[-1]}" if len(names) > 2 else ", ".join(names)
