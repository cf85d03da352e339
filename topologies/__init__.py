"""Topologies for the testbed: generators, topohub zoo and YAML files, resolved from a reference."""
from __future__ import annotations

import inspect
from pathlib import Path

from . import zoo
from .generators import GENERATORS
from .model import Link, Topology, TopologyError
from .yamlfile import load_yaml

__all__ = ["Link", "Topology", "TopologyError", "resolve", "list_all", "by_name", "GENERATORS"]

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
_REF_KEYS = {"generator": {"params"}, "zoo": {"hosts_per_switch", "speed_of_light_fraction"},
             "file": set()}


def _signature(gen: str) -> str:
    params = inspect.signature(GENERATORS[gen]).parameters.values()
    args = [p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params]
    return f"{gen}({', '.join(args)})"


def generate(gen: str, params: dict) -> Topology:
    """Call generator ``gen`` with ``params``, checking names before the call."""
    if not isinstance(gen, str) or gen not in GENERATORS:
        raise TopologyError(f"unknown generator {gen!r}; known generators: {', '.join(GENERATORS)}")
    if not isinstance(params, dict):
        raise TopologyError(f"params of generator {gen!r} must be a mapping, got {params!r}")
    sig = inspect.signature(GENERATORS[gen])
    for p in params:
        if p not in sig.parameters:
            raise TopologyError(f"generator {gen!r} has no parameter {p!r}; usage: {_signature(gen)}")
    for p in sig.parameters.values():
        if p.default is inspect.Parameter.empty and p.name not in params:
            raise TopologyError(f"generator {gen!r} needs parameter {p.name!r}; usage: {_signature(gen)}")
    return GENERATORS[gen](**params).validate()


def find_file(file, base_dir=".") -> Path:
    """``file`` as given if absolute, else relative to base_dir, else to the repo root."""
    p = Path(file)
    for cand in ([p] if p.is_absolute() else [Path(base_dir) / p, REPO_ROOT / p]):
        if cand.is_file():
            return cand
    raise TopologyError(f"topology file {str(file)!r} not found (looked in {base_dir} and {REPO_ROOT})")


def resolve(ref: dict, base_dir=".") -> Topology:
    """Topology for a reference: ``{"generator": g, "params": {...}}``,
    ``{"zoo": name, "hosts_per_switch": n}`` or ``{"file": path}``."""
    if not isinstance(ref, dict):
        raise TopologyError(f"topology reference must be a mapping, got {ref!r}")
    kinds = [k for k in _REF_KEYS if k in ref]
    if len(kinds) != 1:
        raise TopologyError(f"topology reference needs exactly one of generator, zoo, file; got {sorted(ref)}")
    kind = kinds[0]
    extra = set(ref) - {kind} - _REF_KEYS[kind]
    if extra:
        allowed = ", ".join(sorted(_REF_KEYS[kind])) or "nothing else"
        raise TopologyError(f"unknown key(s) {', '.join(sorted(extra))} in {kind} topology reference "
                            f"(allowed with {kind}: {allowed})")
    if kind == "generator":
        return generate(ref["generator"], ref.get("params") or {})
    if kind == "zoo":
        opts = {k: ref[k] for k in _REF_KEYS["zoo"] if k in ref}
        return zoo.load(ref["zoo"], **opts).validate()
    return load_yaml(find_file(ref["file"], base_dir))


def shipped_files() -> list[str]:
    """Example YAML files in this package, as paths relative to the repo root."""
    return sorted(str(p.relative_to(REPO_ROOT)) for p in PACKAGE_DIR.glob("*.yaml"))


def list_all() -> list[tuple[str, str]]:
    """(name, kind) of every generator, shipped YAML file and zoo topology."""
    return ([(g, "generator") for g in GENERATORS] + [(f, "file") for f in shipped_files()]
            + [(z, "zoo") for z in zoo.names()])


def _value(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def by_name(name: str) -> Topology:
    """``fattree:k=4`` / ``waxman:n=20,seed=3`` / ``linear:n=3``, a zoo name, or a YAML path."""
    gen, _, args = name.partition(":")
    if gen in GENERATORS:
        params = {}
        for item in filter(None, (a.strip() for a in args.split(","))):
            key, eq, val = item.partition("=")
            if not eq:
                raise TopologyError(f"{name!r}: expected key=value, got {item!r}; usage: {_signature(gen)}")
            params[key.strip()] = _value(val.strip())
        return generate(gen, params)
    if name in zoo.names():
        return zoo.load(name).validate()
    if name.endswith((".yaml", ".yml")) or Path(name).is_file():
        return load_yaml(find_file(name))
    close = zoo.suggest(name, [n for n, _ in list_all()])
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise TopologyError(f"unknown topology {name!r}.{hint} `daitn topo list` shows all; "
                        f"generators take parameters like fattree:k=4")
