"""Hostile and broken specs (issue #8): whatever file `daitn check`/`daitn run` is given,
the spec loader (testbed/spec.py, ``load_spec``) returns a Spec or raises a SpecError
naming the file and a field - never another exception, never a hang.

Property-based (hypothesis, the project's profile in tests/conftest.py): random YAML
documents, raw text and bytes, deep nesting and alias bombs, every shipped experiment
mutated (keys dropped, added or misspelt, types swapped, numbers out of range, unicode,
nesting), and random ``--set`` overrides. Each load runs under a wall-clock limit, so a
hang fails the example instead of stalling CI.
"""
from __future__ import annotations

import copy
import math
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st

from testbed.spec import MAX_TOPOLOGY_NODES, Spec, SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(p for p in (REPO / "experiments").rglob("*.yaml"))
# A spec loads in milliseconds; this only catches hangs (a loaded 2-core CI machine
# may be 50x slower than usual, hence the margin).
HANG_S = 20
PSEUDO_FIELDS = {"(file)", "(yaml)", "(top level)", "(--set)"}
_FUZZ = settings(deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])


def fuzz(n: int) -> settings:
    """n examples in CI (derandomized: the same n every run); 10x with DAITN_HYPOTHESIS=explore."""
    return settings(_FUZZ, max_examples=n if os.environ.get("DAITN_HYPOTHESIS", "ci") == "ci" else 10 * n)


class Hang(BaseException):
    """Raised by the alarm: BaseException, so that no ``except Exception`` in the code swallows it."""


@contextmanager
def time_limit(seconds: float, what: str):
    def alarm(*_):
        raise Hang(f"load_spec took more than {seconds} s on {what}")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def outcome(path: Path, overrides=None, extra_names=()) -> Spec | SpecError:
    """load_spec's answer, checked: a Spec, or a SpecError that names the file and a field."""
    try:
        with time_limit(HANG_S, str(path)):
            spec, topo = load_spec(path, overrides)
    except SpecError as e:
        assert e.file == str(path) and str(e).startswith(f"{path}: "), str(e)
        assert isinstance(e.field, str) and e.field and isinstance(e.reason, str) and e.reason.strip(), repr(e)
        head = e.field.split(".")[0]
        names = set(Spec.model_fields) | PSEUDO_FIELDS | {str(n) for n in extra_names}
        assert e.field in PSEUDO_FIELDS or head in names, f"field {e.field!r} names nothing in the spec: {e}"
        return e
    assert isinstance(spec, Spec) and topo.hosts
    return spec


# ---- values a hostile document may hold -----------------------------------------------

EXTREME_NUMBERS = [0, -1, -0.0, 0.5, 1, 2, 255, 256, 2**31, 2**32, 2**63, 2**64 + 1, 10**100, -10**100,
                   1e-300, 1e308, -1e308, math.inf, -math.inf, math.nan]
scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(EXTREME_NUMBERS),
    st.integers(min_value=-2**70, max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),                                   # any unicode (no surrogates)
    st.sampled_from(["", " ", "h1", "h999", "s1", "h1-eth0", "client", "data", "mpvu", "tree",
                     "fattree", "topozoo/Geant2012", "~", "null", "yes", "1e5", "../../etc/passwd",
                     "/dev/zero", "h\u0661", "\u202eh1", "h1\x00", "🙂" * 40]),
)
keys = st.one_of(st.text(max_size=12), st.sampled_from(list(Spec.model_fields) + ["params", "generator", "k",
                                                                                   "id", "client", "bw"]),
                 st.integers(min_value=-3, max_value=3))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=4)),
                      max_leaves=20)


def dump(doc) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


def write(tmp: Path, text: str | bytes) -> Path:
    p = tmp / "spec.yaml"
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return p


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spec-fuzz")


# ---- 1. random documents, text, bytes ---------------------------------------------------

@fuzz(150)
@given(doc=values)
def test_random_yaml_documents(tmp, doc):
    outcome(write(tmp, dump(doc)), extra_names=doc if isinstance(doc, dict) else ())


@fuzz(100)
@given(text=st.one_of(st.text(max_size=200),
                      st.text(alphabet=st.sampled_from("{}[]:-,&*!|>'\"#%@` \n\ta1"), max_size=200)))
def test_random_text(tmp, text):
    try:
        top = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError):
        top = None
    outcome(write(tmp, text), extra_names=top if isinstance(top, dict) else ())


@fuzz(50)
@given(data=st.binary(max_size=200))
def test_random_bytes(tmp, data):
    assert isinstance(outcome(write(tmp, b"name: x\n" + data)), (Spec, SpecError))


@pytest.mark.parametrize("text", [
    "[" * 20000 + "]" * 20000,                                  # PyYAML composes recursively
    "a: " + "{b: " * 5000 + "1" + "}" * 5000,
    "x: " + "- " * 3000 + "1",
    "\ufeffname: bom",
    b"name: q\n\xff\xfe\x00bad utf-8",
    "name: &a [*a]",                                            # a self-referencing alias
    "tasks: !!python/object/apply:os.system ['true']\n",        # safe_load refuses tags
], ids=["deep_lists", "deep_maps", "deep_block_lists", "bom", "bad_utf8", "self_alias", "python_tag"])
def test_deep_nesting_and_odd_bytes(tmp, text):
    got = outcome(write(tmp, text))
    assert isinstance(got, SpecError), got


def test_alias_bomb_does_not_explode(tmp):
    """'Billion laughs': each level references the one below nine times. PyYAML shares
    the aliased nodes, so a loader that walked the expanded tree would take 9^9 steps."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    base = yaml.safe_load((REPO / "experiments" / "quickstart.yaml").read_text())
    for field in ("capture", "topology", "nodes", "tasks", "timeline"):
        doc = "\n".join(lines[:-1] + [lines[-1].replace("l9: &l9", f"{field}: &l9")])
        doc += "\n" + "\n".join(f"{k}: {yaml.safe_dump(v, default_flow_style=True).strip()}"
                                for k, v in base.items() if k != field)
        got = outcome(write(tmp, doc), extra_names=[f"l{i}" for i in range(10)])
        assert isinstance(got, SpecError), field


# ---- 2. mutated valid specs -------------------------------------------------------------

def _paths(doc, prefix=()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def _mutate(doc, data) -> str:
    path = data.draw(st.sampled_from(_paths(doc)))
    op = data.draw(st.sampled_from(["drop", "replace", "add_key", "extreme", "retype", "nest", "typo"]))
    parent = _get(doc, path[:-1]) if path else None
    cur = _get(doc, path)
    if op == "drop" and path:
        del parent[path[-1]]
    elif op == "replace" and path:
        parent[path[-1]] = data.draw(values)
    elif op == "add_key" and isinstance(cur, dict):
        cur[data.draw(keys)] = data.draw(values)
    elif op == "add_key" and isinstance(cur, list):
        cur.append(data.draw(values))
    elif op == "extreme" and path:
        parent[path[-1]] = data.draw(st.sampled_from(EXTREME_NUMBERS))
    elif op == "retype" and path:
        parent[path[-1]] = data.draw(st.sampled_from([str(cur), [cur], {"x": cur}, True, None, "", []]))
    elif op == "nest" and path:
        depth = data.draw(st.integers(1, 60))
        for _ in range(depth):
            cur = data.draw(st.sampled_from([[cur], {"a": cur}]))
        parent[path[-1]] = cur
    elif op == "typo" and isinstance(cur, dict) and cur:
        k = data.draw(st.sampled_from(sorted(cur, key=str)))
        cur[f"{k}s" if isinstance(k, str) else k + 1] = cur.pop(k)
    return f"{op} at {'.'.join(map(str, path)) or '(top)'}"


# every shipped spec (experiments/policies/topo_*.yaml are topology files, not specs)
BASES = {p.relative_to(REPO).as_posix(): d for p in EXPERIMENTS
         if isinstance(d := yaml.safe_load(p.read_text()), dict) and "topology" in d}


def _absolute_files(doc, base: Path):
    """A `topology: {file: ...}` relative to the experiment, made absolute (the mutant lives elsewhere)."""
    topo = doc.get("topology") if isinstance(doc, dict) else None
    if isinstance(topo, dict) and isinstance(topo.get("file"), str):
        cand = base.parent / topo["file"]
        if cand.is_file():
            topo["file"] = str(cand)


def test_every_shipped_experiment_loads():
    """The starting points of the mutations are valid (else the fuzzing only tests errors)."""
    assert len(BASES) >= 5
    for name in BASES:
        assert isinstance(load_spec(REPO / name)[0], Spec), name


@fuzz(300)
@given(data=st.data())
def test_mutated_experiments(tmp, data):
    name = data.draw(st.sampled_from(sorted(BASES)))
    doc = copy.deepcopy(BASES[name])
    _absolute_files(doc, REPO / name)
    done = [_mutate(doc, data) for _ in range(data.draw(st.integers(1, 3)))]
    try:
        text = dump(doc)
    except (yaml.YAMLError, RecursionError):
        assume(False)
    got = outcome(write(tmp, text), extra_names=doc if isinstance(doc, dict) else ())
    note(f"{name}: {done} -> {got!r}")
    event("loaded" if isinstance(got, Spec) else "refused")  # --hypothesis-show-statistics


@fuzz(150)
@given(data=st.data())
def test_random_overrides(tmp, data):
    """`--set key=value` items: known dotted paths or junk, values any YAML or broken YAML."""
    name = data.draw(st.sampled_from(sorted(BASES)))
    paths = [".".join(map(str, p)) for p in _paths(BASES[name]) if p]
    key = data.draw(st.one_of(st.sampled_from(paths), st.text(max_size=20),
                              st.sampled_from(["", ".", "a..b", "seed.", ".seed", "tasks.0.id", "nodes.h1.x"])))
    val = data.draw(st.one_of(st.text(max_size=30), st.sampled_from(["[", "{a: ", "!!python/name:os.system",
                                                                     "*alias", "&a [*a]", ".nan", "1e999",
                                                                     "'", "- -", "@x", "%YAML 9"]),
                              values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip())))
    item = data.draw(st.sampled_from([f"{key}={val}", key, f"{key}={val}={val}"]))
    named = item.split("=", 1)[0].strip()   # what load_spec takes as the key
    got = outcome(REPO / name, [item], extra_names=[named.split(".")[0], item])
    note(f"{name} --set {item!r} -> {got!r}")
    event("loaded" if isinstance(got, Spec) else "refused")


# ---- 3. sizes -------------------------------------------------------------------------

@pytest.mark.parametrize("topology", [
    {"generator": "fattree", "params": {"k": 400}},
    {"generator": "linear", "params": {"n": 10**9}},
    {"generator": "ring", "params": {"n": 5, "hosts_per_switch": 10**12}},
    {"generator": "tree", "params": {"depth": 10**6, "fanout": 2}},
    {"generator": "tree", "params": {"depth": 3000, "fanout": 1}},
    {"generator": "waxman", "params": {"n": 10**7}},
    {"zoo": "sndlib/abilene", "hosts_per_switch": 10**9},
])
def test_huge_topologies_are_refused_before_they_are_built(tmp, topology):
    doc = dict(BASES["experiments/quickstart.yaml"], topology=topology)
    got = outcome(write(tmp, dump(doc)))
    assert isinstance(got, SpecError) and got.field == "topology", got
    assert str(MAX_TOPOLOGY_NODES) in got.reason or "deeply" in got.reason, got
