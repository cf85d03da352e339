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

ROLES = ("client", "data", "mpvu")


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
    delay: float | None = Field(None, ge=0, description="one-way delay, ms (needs netem)")
    loss: float | None = Field(None, ge=0, le=100, description="random loss per direction, %")
    override: bool = Field(False, description="replace the topology's own link values (e.g. "
                                              "topohub propagation delays) instead of filling unset ones")


class DataSpec(_Strict):
    dataset: Literal["digits"] = "digits"
    partition: Literal["dirichlet", "iid"] = "dirichlet"
    alpha: float = Field(0.3, gt=0)
    verification_fraction: float = Field(0.25, gt=0, lt=1)
    min_samples_per_node: int = Field(10, ge=1)


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


class ControllerSpec(_Strict):
    lldp_interval_s: float = Field(1.0, gt=0)
    converge_timeout_s: float = Field(60, gt=0)


class Spec(_Strict):
    name: str
    seed: int = 0
    mode: Literal["dcc"] = "dcc"
    topology: dict
    links: LinkDefaults = Field(default_factory=LinkDefaults)
    nodes: dict[str, list[str]]
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    tasks: list[TaskSpec]
    capture: list[str] = Field(default_factory=list, description="interfaces to capture, e.g. h1-eth0, s1-eth2")
    controller: ControllerSpec = Field(default_factory=ControllerSpec)

    def hosts_with(self, role: str) -> list[str]:
        return sorted((h for h, roles in self.nodes.items() if role in roles), key=lambda h: int(h[1:]))


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
        if t.id in ids:
            raise SpecError(file, f"tasks.{i}.id", f"duplicate task id {t.id}")
        ids.add(t.id)
        if "client" not in spec.nodes.get(t.client, []):
            raise SpecError(file, f"tasks.{i}.client", f"{t.client!r} does not have the role 'client'")
    if not spec.tasks:
        raise SpecError(file, "tasks", "at least one task is needed")
    from testbed.network import plan_ports  # pure; imports no mininet
    intfs = {f"{n}-eth{p}" for a, ap, b, bp in plan_ports(topo) for n, p in ((a, ap), (b, bp))}
    for i, intf in enumerate(spec.capture):
        if intf not in intfs:
            raise SpecError(file, f"capture.{i}", f"{intf!r} is not an interface of this topology "
                                                  f"(hosts have hN-eth0, switch sN has sN-eth1.."
                                                  f"sN-eth<degree>; see `daitn topo show`)")
    return topo


def _span(names: list[str]) -> str:
    return f"{names[0]}..{names[-1]}" if len(names) > 2 else ", ".join(names)
