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
    poison: Literal["label_flip"] | None = Field(None, description="a compromised data node (threat model): "
                                                                    "label_flip trains on label C-1-y while its "
                                                                    "reports look honest")


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
    data changes: ``fraction`` of its samples are replaced by samples of ``labels``),
    ``move_station`` / ``set_velocity`` (a WiFi station moves: ``to`` at ``speed``, or a
    constant ``velocity``); ``set_link`` may also change the ``delay`` of an ns3 link."""
    at_s: float = Field(ge=0)
    kind: Literal["set_link", "link_down", "link_up", "crash_node", "join_node", "drift", "move_station",
                  "set_velocity", "pause_node", "restart_controller"]
    link: list[str] | None = Field(None, description="set_link, link_down, link_up: the two ends, e.g. [s1, s2]")
    bw: float | None = Field(None, gt=0, description="set_link: new bandwidth, Mbit/s")
    loss: float | None = Field(None, ge=0, le=100, description="set_link: new loss, %")
    node: str | None = Field(None, description="crash_node, join_node, drift: the host")
    task: int | None = Field(None, description="crash_node: instead of node, the data node holding this "
                                               "task's model at that moment (the DCC's view)")
    for_s: float | None = Field(None, gt=0, description="pause_node: how long the node's process is stopped "
                                                        "(SIGSTOP, then SIGCONT): an overloaded node that "
                                                        "neither reports nor trains; restart_controller: how "
                                                        "long the DCC stays dead before it is started again")
    labels: list[int] | None = Field(None, description="drift: the labels of the node's new samples")
    fraction: float = Field(1.0, gt=0, le=1, description="drift: share of the node's samples replaced")
    # ns-3 (issue #6): set_link's delay, and WiFi stations' moves (see the wifi section below)
    delay: float | None = Field(None, ge=0, le=60000, description="set_link: new one-way delay, ms "
                                                                   "(ns3 links only)")
    station: str | None = Field(None, description="move_station, set_velocity: the station's host")
    to: list[float] | None = Field(None, description="move_station: where to, [x, y] or [x, y, z] in m")
    speed: float | None = Field(None, ge=0, description="move_station: m/s in a straight line "
                                                        "(0 or unset: at once)")
    velocity: list[float] | None = Field(None, description="set_velocity: [vx, vy(, vz)] m/s from now on")


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
    max_local_epochs: int | None = Field(None, ge=1, le=255, description=(
        "let the DCC's plan give a stop up to this many local epochs (MTRCE chooses per stop: "
        "more epochs trade training time for laps); None: every stop trains local_epochs"))
    lr: float = Field(0.1, gt=0)
    batch_size: int = Field(4, ge=1)
    momentum: float = Field(0.5, ge=0, lt=1)
    torch_threads: int = Field(1, ge=1, description="per node process; many nodes share 2 cores")


class TaskSpec(_Strict):
    id: int = Field(ge=1, lt=2**32)
    client: str
    target_accuracy: float = Field(gt=0, le=1)
    deadline_s: float = Field(gt=0)
    max_laps: int = Field(10, ge=1, le=255, description="laps over the itinerary (a u8 on the wire)")
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
    plan_inputs: Literal["settled", "measured", "configured"] = Field(
        "settled", description="what MTRCE's plans and hop paths see of measured latency, utilisation "
                               "and node load: settled (configured unless a measurement differs "
                               "materially; replays plan the same), measured (raw), configured (none)")
    rollback_drop: float | None = Field(None, gt=0, le=1, description=(
        "roll a task back to its last verified version, and exclude the node, when a stop's "
        "verified accuracy falls this far below it (0.3 catches label flipping in our runs; off "
        "by default: non-IID data drops accuracy legitimately)"))
    converge_timeout_s: float = Field(60, gt=0)


class AatsOptions(_Strict):
    """mode autonomous (AATS): the model steers itself from its header and gossip (nodes/modes.py)."""
    gossip_interval_s: float = Field(1.0, gt=0, le=60, description="how often a node exchanges "
                                                                   "summaries with its next peers")
    gossip_fanout: int = Field(3, ge=1, description="peers contacted per gossip round (round robin "
                                                    "over a seeded shuffle of the hosts)")
    max_age_s: float = Field(5.0, gt=0, description="a peer heard from longer ago is not a candidate")
    max_hops: int = Field(24, ge=1, le=255, description="hop limit in the AI object's header (MAX_HOPS)")
    rtt_scale_ms: float = Field(200.0, gt=0, description="a candidate's score is divided by "
                                                          "1 + RTT/rtt_scale_ms (RTT in 20 ms steps)")
    wait_knowledge_s: float = Field(10.0, ge=0, description="how long a client waits for gossip to "
                                                            "name a data node and the MPVU")


class CentralizedOptions(_Strict):
    """mode centralized: raw shards go to one host, which trains on all of them."""
    server: str | None = Field(None, description="the host that trains (None: the task's client)")
    max_epochs: int = Field(50, ge=1, le=255, description="rounds of training.local_epochs passes over "
                                                          "the pooled data, each verified by the MPVU")
    respect_privacy: bool = Field(False, description="false: every shard is shipped and those whose "
                                                     "privacy level forbids it are flagged; true: such "
                                                     "nodes keep their data")


class FedAvgOptions(_Strict):
    """mode fedavg: federated averaging, weighted by the participants' sample counts."""
    server: str | None = Field(None, description="the host that aggregates (None: the task's client)")
    rounds: int = Field(50, ge=1, le=255, description="most rounds")
    clients_per_round: int | None = Field(None, ge=1, description="data nodes per round, a seeded "
                                                                  "sample (None: all)")
    local_epochs: int | None = Field(None, ge=1, description="None: training.local_epochs")
    round_timeout_s: float = Field(60.0, gt=0, description="a round goes on with the updates it got "
                                                           "after this long")


class RandomWalkOptions(_Strict):
    """mode random_walk: the model walks data nodes chosen uniformly at random (seeded)."""
    max_hops: int = Field(24, ge=1, le=255)


class ClusterSpec(_Strict):
    """Mininet cluster mode: the emulated hosts and switches spread over several servers
    (testbed/cluster.py; README, Cluster mode). Checked and planned; see the README for
    what a run across servers still lacks."""
    servers: list[str] = Field(min_length=1, description="servers by name or IPv4 address; "
                                                         "'localhost' is this machine")
    placement: Literal["switch", "round_robin", "random"] = Field(
        "switch", description="switch: switches in even bins, hosts with their switch (Mininet's "
                              "SwitchBinPlacer); round_robin: every node in turn; random: seeded by the spec's seed")
    ssh_user: str | None = Field(None, description="user for ssh to the servers (passwordless ssh "
                                                   "and sudo); None: the user running daitn")
    tunnel: Literal["gre", "ssh"] = Field("gre", description="what carries a link between two servers: "
                                                             "gre (kernel gretap) or ssh (Ethernet over ssh -w)")
    controller_ip: str | None = Field(None, description="address the remote switches reach the DCC at; "
                                                        "None: this machine's source address towards each server")


class ModesSpec(_Strict):
    """Options of the non-DCC paradigms; only the section of the spec's ``mode`` is used."""
    autonomous: AatsOptions = Field(default_factory=AatsOptions)
    centralized: CentralizedOptions = Field(default_factory=CentralizedOptions)
    fedavg: FedAvgOptions = Field(default_factory=FedAvgOptions)
    random_walk: RandomWalkOptions = Field(default_factory=RandomWalkOptions)


class Spec(_Strict):
    name: str
    seed: int = 0
    mode: Literal["dcc", "autonomous", "centralized", "fedavg", "random_walk"] = Field(
        "dcc", description="dcc: the DCC plans every hop; autonomous: AATS, the model steers itself "
                           "(gossip); centralized, fedavg, random_walk: baselines (README, Modes)")
    modes: ModesSpec = Field(default_factory=ModesSpec)
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
    wifi: list["WifiSegmentSpec"] = Field(default_factory=list, description="WiFi segments simulated by "
                                                                          "ns-3 (see WifiSegmentSpec)")
    cluster: ClusterSpec | None = Field(None, description="spread the network over several servers "
                                                          "(Mininet cluster mode; README)")

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
    if not all(keys):
        raise SpecError(file, dotted or "(--set)", "--set needs a dotted key such as training.lr=0.05")
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
            raise SpecError(file, item or "(--set)", "--set takes key=value, e.g. --set seed=3")
        k, v = item.split("=", 1)
        try:
            out.append((k.strip(), yaml.safe_load(v)))
        except (yaml.YAMLError, RecursionError) as e:
            raise SpecError(file, k.strip() or "(--set)", f"--set value is not valid YAML "
                                                          f"({str(e).splitlines()[0]}); quote it") from None
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
    except UnicodeDecodeError as e:
        raise SpecError(file, "(file)", f"not UTF-8 text (byte {e.start}); save the spec as UTF-8") from None
    except OSError as e:
        raise SpecError(file, "(file)", f"cannot be read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise SpecError(file, "(yaml)", f"not valid YAML: {e}") from None
    except RecursionError:  # PyYAML composes recursively: a few hundred levels exhaust the stack
        raise SpecError(file, "(yaml)", "nested too deeply to be a spec") from None
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


# Switches + hosts a generated topology may have. Far above what one machine emulates
# (DESIGN.md §5: 400 hosts in 16 s, ~70 PyTorch nodes); a typo such as fattree k: 400
# (16 million hosts) would otherwise fill the memory before any error is shown.
MAX_TOPOLOGY_NODES = 20_000


def _check_topology_size(ref, file: str):
    """Refuse a generator or zoo reference that would build more than MAX_TOPOLOGY_NODES
    nodes, computed from its parameters before anything is built (bad types are left
    to the generators, which name them)."""
    if not isinstance(ref, dict):
        return
    p = ref.get("params") if "generator" in ref else ref
    if not isinstance(p, dict):
        return

    def num(name, default=None):
        v = p.get(name, default)
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None

    gen, size = ref.get("generator"), None
    hps = num("hosts_per_switch", 1)
    if gen in ("linear", "ring", "waxman") and num("n") is not None and hps is not None:
        size = num("n") * (1 + hps)
    elif gen == "fattree" and num("k") is not None:
        size = 5 * num("k") ** 2 // 4 + num("k") ** 3 // 4
    elif gen == "tree" and num("depth") is not None and num("fanout") is not None:
        depth, fanout = num("depth"), num("fanout")
        leaf = num("hosts_per_switch", fanout)
        size, level = 0, 1
        for _ in range(min(depth, MAX_TOPOLOGY_NODES + 1)):  # switches level by level, then hosts
            size += level
            if size > MAX_TOPOLOGY_NODES:
                break
            level *= fanout
        else:
            size += (level // fanout if fanout else 0) * (leaf or 0)
    elif "zoo" in ref and hps is not None and hps > MAX_TOPOLOGY_NODES:
        size = hps
    if size is not None and size > MAX_TOPOLOGY_NODES:
        raise SpecError(file, "topology", f"{ref} would build more than {MAX_TOPOLOGY_NODES} switches "
                                          f"and hosts; make it smaller")


def resolve_topology(spec: Spec, file: str, base_dir: Path) -> Topology:
    _check_topology_size(spec.topology, file)
    try:
        topo = topologies.resolve(spec.topology, base_dir=str(base_dir))
        if spec.links.override:
            topo = topo.with_link_values(spec.links.bw, spec.links.delay, spec.links.loss)
        else:
            topo = topo.with_link_defaults(spec.links.bw, spec.links.delay, spec.links.loss)
        topo.validate()
    except TopologyError as e:
        raise SpecError(file, "topology", str(e)) from None
    except RecursionError:  # the tree generator recurses once per level
        raise SpecError(file, "topology", f"{spec.topology} is nested too deeply to build") from None
    except (TypeError, ValueError, KeyError) as e:  # fuzzing found e.g. {file: 0}, {generator: tree, 1: x}
        raise SpecError(file, "topology", f"not a usable topology reference: {spec.topology} ({e}); "
                                          f"e.g. {{generator: tree, params: {{depth: 2, fanout: 3}}}}, "
                                          f"{{zoo: sndlib/abilene}} or {{file: topo.yaml}}") from None
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
    _check_mode(spec, file)
    adjacent = {frozenset((l.a, l.b)) for l in topo.links}
    for i, e in enumerate(spec.timeline):
        if e.kind in ("set_link", "link_down", "link_up") and frozenset(e.link) not in adjacent:
            raise SpecError(file, f"timeline.{i}.link", f"{e.link[0]} and {e.link[1]} are not joined "
                                                        f"by a link in {topo.name!r}")
    topo = wifi_topology(spec, topo, file)
    if spec.cluster is not None:  # placement and what cluster mode cannot carry (testbed/cluster.py)
        from testbed.cluster import ClusterError, plan_cluster
        try:
            plan_cluster(spec, topo)
        except ClusterError as e:
            raise SpecError(file, e.field, str(e)) from None
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
        if e.kind == "restart_controller":
            continue
        if e.kind in ("set_link", "link_down", "link_up"):
            if not e.link or len(e.link) != 2:
                raise SpecError(file, f"timeline.{i}.link", f"{e.kind} needs link: [END_A, END_B]")
            if e.kind == "set_link" and e.bw is None and e.loss is None and e.delay is None:
                raise SpecError(file, f"timeline.{i}", "set_link needs bw and/or loss (or delay, on an ns3 link)")
        elif e.kind in ("move_station", "set_velocity"):
            continue    # WiFi stations: checked by wifi_topology
        elif e.kind == "crash_node" and e.task is not None:
            if e.node is not None:
                raise SpecError(file, f"timeline.{i}", "crash_node takes node or task, not both")
            if e.task not in {t.id for t in spec.tasks}:
                raise SpecError(file, f"timeline.{i}.task", f"no task with id {e.task}")
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
        if e.kind == "pause_node" and e.for_s is None:
            raise SpecError(file, f"timeline.{i}.for_s", "pause_node needs for_s: how long the node is stopped")
        if e.kind == "drift":
            if "data" not in spec.nodes[e.node]:
                raise SpecError(file, f"timeline.{i}.node", f"{e.node} has no role 'data': nothing to drift")
            if not e.labels:
                raise SpecError(file, f"timeline.{i}.labels", "drift needs labels: the labels of the new samples")
    for i, e in enumerate(spec.timeline):
        if e.kind in ("crash_node", "drift") and e.node in joins and e.at_s < joins[e.node]:
            raise SpecError(file, f"timeline.{i}.at_s", f"{e.node} joins only at {joins[e.node]:g} s")



def _check_mode(spec: Spec, file: str):
    """What a non-DCC mode needs of the rest of the spec (the DCC only forwards there)."""
    if spec.mode == "dcc":
        return
    why = f"needs the DCC, and mode is {spec.mode!r}"
    for i, t in enumerate(spec.tasks):
        if t.replicas:
            raise SpecError(file, f"tasks.{i}.replicas", f"replica placement {why}; use deploy_to")
    for i, w in enumerate(spec.workloads):
        if w.server is None:
            raise SpecError(file, f"workloads.{i}.server", f"routing queries (QIRCE) {why}; name a server")
    if spec.serve_s:
        raise SpecError(file, "serve_s", f"tasks submitted at run time are handed off by the DCC: {why}")
    opts = getattr(spec.modes, spec.mode)
    server = getattr(opts, "server", None)
    if server is not None and server not in spec.nodes:
        raise SpecError(file, f"modes.{spec.mode}.server", f"{server!r} is not a node of this spec "
                                                           f"(hosts with roles: {', '.join(sorted(spec.nodes))})")
    if spec.mode == "fedavg" and opts.clients_per_round and opts.clients_per_round > len(spec.hosts_with("data")):
        raise SpecError(file, "modes.fedavg.clients_per_round",
                        f"{opts.clients_per_round} per round but only {len(spec.hosts_with('data'))} data nodes")


def _span(names: list[str]) -> str:
    return f"{names[0]}..{names[-1]}" if len(names) > 2 else ", ".join(names)


# --- WiFi segments (ns-3) and station mobility (issue #6) ----------------------------
# Kept apart: the spec's ``wifi:`` section, its checks, and the timeline kinds that
# move stations. The segments travel on the topology (testbed.ns3link.wifi).

class WifiApSpec(_Strict):
    switch: str = Field(description="the switch whose port the access point is")
    position: list[float] = Field(default_factory=lambda: [0.0, 0.0], description="[x, y(, z)] m")


class WifiStationSpec(_Strict):
    position: list[float] = Field(description="[x, y(, z)] m at the start")
    velocity: list[float] | None = Field(None, description="[vx, vy(, vz)] m/s from the start "
                                                           "(constant velocity); None: stays put")


class WifiPropagationSpec(_Strict):
    model: Literal["log_distance"] = "log_distance"
    exponent: float = Field(3.0, ge=1.5, le=6, description="path loss exponent (2 free space, "
                                                           "3 indoor obstructed)")
    reference_loss_db: float | None = Field(None, ge=0, le=100, description="loss at 1 m; None: free "
                                                                            "space at the standard's band")


class WifiSegmentSpec(_Strict):
    """One access point on a switch and its stations (hosts of the topology attached
    to that switch), simulated by ns-3: 802.11a or g, Ideal or Minstrel rate control,
    log-distance path loss, constant positions or velocities (and timeline moves)."""
    name: str | None = Field(None, description="default wifi1, wifi2, ...")
    ap: WifiApSpec
    standard: Literal["80211a", "80211g"] = "80211a"
    rate_manager: Literal["ideal", "minstrel"] = "ideal"
    tx_power_dbm: float = Field(16.0206, ge=-10, le=30)
    rx_sensitivity_dbm: float = Field(-82.0, ge=-110, le=-40, description="weaker frames are not received: "
                                      "-82 is the standard's minimum at 6 Mbit/s; commodity receivers: -88..-91")
    propagation: WifiPropagationSpec = Field(default_factory=WifiPropagationSpec)
    stations: dict[str, WifiStationSpec]
    tell_dcc: bool = Field(True, description="the runner tells the DCC each station's link capacity "
                                             "(POST /v1/links) as the channel model gives it, when it changes")


Spec.model_rebuild()


def _xyz(v, file: str, field: str) -> tuple[float, float, float]:
    if not isinstance(v, list) or len(v) not in (2, 3):
        raise SpecError(file, field, f"expected [x, y] or [x, y, z] in metres, got {v!r}")
    if not all(abs(c) < 1e6 for c in v):
        raise SpecError(file, field, f"coordinates must be below 1e6 in size, got {v!r}")
    return tuple(float(c) for c in v) + (0.0,) * (3 - len(v))


def _natural(name: str):
    import re
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def wifi_topology(spec: Spec, topo: Topology, file: str) -> Topology:
    """Check the ``wifi:`` section and the timeline's WiFi events against the topology;
    return the topology carrying the segments (unchanged without any)."""
    import re
    from testbed.ns3link import wifi as w

    segs, names, owner = [], set(), {}
    for i, seg in enumerate(spec.wifi):
        where = f"wifi.{i}"
        name = seg.name or f"wifi{i + 1}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", name):
            raise SpecError(file, f"{where}.name", f"{name!r}: use 1-32 of A-Z a-z 0-9 _ . -")
        if name in names:
            raise SpecError(file, f"{where}.name", f"segment name {name!r} used twice")
        names.add(name)
        if seg.ap.switch not in topo.switches:
            raise SpecError(file, f"{where}.ap.switch", f"no switch {seg.ap.switch!r} in topology "
                                                        f"{topo.name!r} (it has {_span(topo.switches)})")
        ap_pos = _xyz(seg.ap.position, file, f"{where}.ap.position")
        if not seg.stations:
            raise SpecError(file, f"{where}.stations", "a segment needs at least one station (a host)")
        stations = []
        for host, st in sorted(seg.stations.items(), key=lambda kv: _natural(kv[0])):
            sw = f"{where}.stations.{host}"
            if host not in topo.hosts:
                raise SpecError(file, sw, f"no host {host!r} in topology {topo.name!r} (it has "
                                          f"{_span(topo.hosts)}); stations are hosts of the topology")
            if host in owner:
                raise SpecError(file, sw, f"{host} is already a station of segment {owner[host]!r}")
            attached = topo.host_switch(host)
            if attached != seg.ap.switch:
                raise SpecError(file, sw, f"{host} is attached to {attached} in the topology, not to the "
                                          f"access point's switch {seg.ap.switch}; put the AP on {attached} "
                                          f"or attach {host} to {seg.ap.switch}")
            owner[host] = name
            pos = _xyz(st.position, file, f"{sw}.position")
            vel = _xyz(st.velocity, file, f"{sw}.velocity") if st.velocity is not None else (0.0, 0.0, 0.0)
            stations.append(w.WifiStation(host, pos, vel))
        segment = w.WifiSegment(name, seg.ap.switch, tuple(stations), ap_pos, seg.standard, seg.rate_manager,
                                seg.tx_power_dbm, seg.propagation.exponent, seg.propagation.reference_loss_db,
                                seg.rx_sensitivity_dbm)
        reach = w.reach_m(segment)
        for st in stations:
            d = w.distance(st.position, ap_pos)
            if d > reach:
                raise SpecError(file, f"{where}.stations.{st.host}.position",
                                f"{st.host} starts {d:.1f} m from the access point, beyond its reach of "
                                f"{reach:.1f} m (received power below {segment.rx_sensitivity_dbm} dBm), so it could never "
                                f"associate; start it closer or raise tx_power_dbm")
        segs.append(segment)
    wtopo = w.with_wifi(topo, segs)
    backend = {frozenset((ln.a, ln.b)): ln.backend or spec.links.backend for ln in topo.links}
    for i, e in enumerate(spec.timeline):
        where = f"timeline.{i}"
        if e.kind in ("set_link", "link_down", "link_up") and e.link and len(e.link) == 2:
            if w.is_wifi_link(wtopo, *e.link):
                raise SpecError(file, f"{where}.link", f"{e.link[0]}-{e.link[1]} is a WiFi station's link: "
                                                       f"it changes as the station moves (move_station, "
                                                       f"set_velocity), not by {e.kind}")
            if e.delay is not None and backend.get(frozenset(e.link)) == "tc":
                raise SpecError(file, f"{where}.delay", f"link {e.link[0]}-{e.link[1]} is a tc link, whose "
                                                        f"delay cannot change while running; give it "
                                                        f"`backend: ns3` in the topology")
        if e.kind in ("move_station", "set_velocity"):
            if e.station not in owner:
                raise SpecError(file, f"{where}.station", f"{e.station!r} is not a WiFi station "
                                                          f"(stations: {sorted(owner, key=_natural) or 'none'})")
            if e.kind == "move_station":
                if e.to is None:
                    raise SpecError(file, f"{where}.to", "move_station needs to: [x, y(, z)]")
                _xyz(e.to, file, f"{where}.to")
                if e.velocity is not None:
                    raise SpecError(file, f"{where}.velocity", "move_station takes to and speed; "
                                                               "velocity belongs to set_velocity")
            else:
                if e.velocity is None:
                    raise SpecError(file, f"{where}.velocity", "set_velocity needs velocity: [vx, vy(, vz)]")
                _xyz(e.velocity, file, f"{where}.velocity")
                if e.to is not None or e.speed is not None:
                    raise SpecError(file, where, "set_velocity takes velocity only (to and speed "
                                                 "belong to move_station)")
        elif e.station is not None or e.to is not None or e.velocity is not None or e.speed is not None:
            raise SpecError(file, where, f"station, to, speed and velocity belong to move_station and "
                                         f"set_velocity, not to {e.kind}")
        if e.kind != "set_link" and e.delay is not None:
            raise SpecError(file, f"{where}.delay", f"delay belongs to set_link, not to {e.kind}")
    return wtopo
