"""The ``daitn`` command line as a user meets it: check, topo, --help (no root needed).

All subprocesses of a group are started at once and collected by a fixture, so
the file stays fast.
"""
import copy
import os
import struct
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DAITN = REPO / ".venv" / "bin" / "daitn"
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
TIMEOUT = 120

pytestmark = pytest.mark.skipif(not DAITN.exists(), reason="daitn entry point not installed in .venv")

GOOD = {
    "name": "cli",
    "topology": {"generator": "tree", "params": {"depth": 2, "fanout": 3}},
    "links": {"bw": 50},
    "nodes": {"h1": ["client"], "h2": ["data"], "h5": ["data"], "h9": ["mpvu"]},
    "tasks": [{"id": 1, "client": "h1", "target_accuracy": 0.8, "deadline_s": 60}],
    "capture": ["h1-eth0"],
}


def _pop(key):
    return lambda d: d.pop(key)


# name -> (mutation, field, fragment of the reason)
BAD = {
    "unknown_top_key": (lambda d: d.update(colour="blue"), "colour", "unknown key"),
    "unknown_nested_key": (lambda d: d.update(training={"lrr": 0.1}), "training.lrr", "unknown key"),
    "missing_topology": (_pop("topology"), "topology", "required field is missing"),
    "unknown_generator": (lambda d: d.update(topology={"generator": "hypercube"}), "topology",
                          "unknown generator 'hypercube'"),
    "unknown_zoo": (lambda d: d.update(topology={"zoo": "sndlib/nowhere"}), "topology",
                    "unknown zoo topology 'sndlib/nowhere'"),
    "negative_bw": (lambda d: d.update(links={"bw": -5}), "links.bw", "greater than 0"),
    "host_not_in_topology": (lambda d: d["nodes"].update(h42=["data"]), "nodes.h42",
                             "no host 'h42' in topology"),
    "unknown_role": (lambda d: d["nodes"].update(h3=["trainer"]), "nodes.h3",
                     "unknown role 'trainer'"),
    "no_mpvu": (lambda d: d["nodes"].pop("h9"), "nodes", "exactly one host needs the role 'mpvu'"),
    "client_without_role": (lambda d: d["tasks"][0].update(client="h2"), "tasks.0.client",
                            "'h2' does not have the role 'client'"),
    "bad_capture": (lambda d: d.update(capture=["eth0"]), "capture.0", "'eth0' is not an interface"),
    "not_yaml": (None, "(yaml)", "not valid YAML"),
}


def _start(args):
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.Popen([str(DAITN), *map(str, args)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(procs: dict) -> dict:
    out = {}
    for k, p in procs.items():
        try:
            so, se = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            so, se = p.communicate()
        out[k] = subprocess.CompletedProcess(p.args, p.returncode, so, se)
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def check_runs(workdir):
    specs = {}
    good = workdir / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    specs["good"] = good
    for name, (mutate, _, _) in BAD.items():
        p = workdir / f"{name}.yaml"
        if mutate is None:
            p.write_text("name: [unclosed\n")
        else:
            d = copy.deepcopy(GOOD)
            mutate(d)
            p.write_text(yaml.safe_dump(d))
        specs[name] = p
    procs = {name: _start(["check", p]) for name, p in specs.items()}
    procs["quickstart"] = _start(["check", QUICKSTART])
    procs["missing_file"] = _start(["check", workdir / "does-not-exist.yaml"])
    procs["set_ok"] = _start(["check", good, "--set", "links.bw=20", "--set", "seed=5"])
    procs["set_list"] = _start(["check", good, "--set", "tasks.id=3"])
    procs["set_no_eq"] = _start(["check", good, "--set", "seed"])
    procs["set_fixes"] = _start(["check", specs["negative_bw"], "--set", "links.bw=10"])
    runs = _finish(procs)
    runs["_specs"] = specs
    return runs


@pytest.fixture(scope="module")
def misc_runs(workdir):
    png = workdir / "fattree.png"
    procs = {
        "help": _start(["--help"]),
        "check_help": _start(["check", "--help"]),
        "topo_list": _start(["topo", "list"]),
        "topo_show": _start(["topo", "show", "fattree:k=4", "--png", png]),
        "topo_show_zoo": _start(["topo", "show", "sndlib/abilene"]),
        "topo_unknown": _start(["topo", "show", "fatree:k=4"]),
        "topo_bad_param": _start(["topo", "show", "fattree:k=3"]),
        "no_args": _start([]),
        "bad_cmd": _start(["frobnicate"]),
    }
    runs = _finish(procs)
    runs["_png"] = png
    return runs


def assert_clean_error(r, code=2):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip(), "no error message"


# --- daitn check ------------------------------------------------------------------

def test_check_good_spec(check_runs):
    r = check_runs["good"]
    assert r.returncode == 0, r.stderr
    assert "OK - cli: tree-2x3 with 4 switches, 9 hosts, 12 links; 2 data nodes, 1 task(s)" in r.stdout
    assert "Traceback" not in r.stderr


def test_check_quickstart(check_runs):
    r = check_runs["quickstart"]
    assert r.returncode == 0, r.stderr
    assert "OK - quickstart" in r.stdout and "4 data nodes" in r.stdout


@pytest.mark.parametrize("name", sorted(BAD))
def test_check_bad_spec_exits_2_naming_file_field_reason(check_runs, name):
    r = check_runs[name]
    _, field, reason = BAD[name]
    spec = check_runs["_specs"][name]
    assert_clean_error(r)
    assert r.stdout == ""
    line = r.stderr.strip()
    assert line.startswith(f"daitn check: {spec}: {field}: "), line
    assert reason in line, line
    if name != "not_yaml":  # the YAML parser's message shows the offending line below
        assert len(line.splitlines()) == 1, line


def test_check_missing_file(check_runs):
    r = check_runs["missing_file"]
    assert_clean_error(r)
    assert "does-not-exist.yaml: (file): no such spec file" in r.stderr


def test_check_set_overrides(check_runs):
    assert check_runs["set_ok"].returncode == 0, check_runs["set_ok"].stderr
    assert check_runs["set_fixes"].returncode == 0, check_runs["set_fixes"].stderr


def test_check_set_into_list_is_clean_error(check_runs):
    r = check_runs["set_list"]
    assert_clean_error(r)
    assert ": tasks.id: --set cannot descend into 'tasks'" in r.stderr


def test_check_set_without_equals_is_clean_error(check_runs):
    r = check_runs["set_no_eq"]
    assert_clean_error(r)
    assert ": seed: --set takes key=value" in r.stderr


# --- daitn topo / help -------------------------------------------------------------

def test_help(misc_runs):
    r = misc_runs["help"]
    assert r.returncode == 0, r.stderr
    for cmd in ("run", "check", "doctor", "topo", "clean"):
        assert cmd in r.stdout
    assert misc_runs["check_help"].returncode == 0
    assert "--set" in misc_runs["check_help"].stdout


def test_usage_errors_exit_2(misc_runs):
    for k in ("no_args", "bad_cmd"):
        r = misc_runs[k]
        assert r.returncode == 2, (k, r.stderr)
        assert "usage: daitn" in r.stderr
        assert "Traceback" not in r.stderr


def test_topo_list(misc_runs):
    r = misc_runs["topo_list"]
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert ["generator", "fattree"] in rows
    assert ["zoo", "sndlib/abilene"] in rows
    assert ["file", "topologies/two_switch.yaml"] in rows
    assert len(rows) > 100


def test_topo_show_png(misc_runs):
    r = misc_runs["topo_show"]
    assert r.returncode == 0, r.stderr
    png = misc_runs["_png"]
    assert f"drawn to {png}" in r.stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack("!II", data[16:24])
    assert w > 100 and h > 100
    assert "s20" in r.stdout and "h16" in r.stdout


def test_topo_show_zoo(misc_runs):
    r = misc_runs["topo_show_zoo"]
    assert r.returncode == 0, r.stderr
    assert "abilene" in r.stdout.lower()


def test_topo_unknown_is_clean_error(misc_runs):
    r = misc_runs["topo_unknown"]
    assert_clean_error(r)
    assert "unknown topology 'fatree:k=4'" in r.stderr
    assert "fattree" in r.stderr  # suggestion
    r = misc_runs["topo_bad_param"]
    assert_clean_error(r)
    assert "k must be an even integer" in r.stderr
