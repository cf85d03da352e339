"""Runs last (see Makefile): the whole suite left nothing of ours behind."""
import os

import pytest

from testbed.clean import leftovers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="emulation tier needs root")


def test_no_bridges_processes_or_namespaces_left():
    left = leftovers()
    assert not any(left.values()), f"the test suite left these behind: {left}"


def test_no_switch_or_host_interfaces_left_in_root_namespace():
    names = os.listdir("/sys/class/net")
    ours = [n for n in names if "-eth" in n and n.split("-eth")[0][:1] in ("s", "h")
            and n.split("-eth")[0][1:].isdigit()]
    assert not ours, f"veth interfaces left in the root namespace: {ours}"
