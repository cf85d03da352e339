"""The Vagrantfile is valid and sets up the VM the README promises.

``vagrant validate --ignore-provider`` parses and checks the Vagrantfile
without a box, a provider or the network. Vagrant is installed by
``sudo make setup``; a machine without it fails here rather than skipping, so
a broken Vagrantfile cannot land unnoticed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VAGRANTFILE = REPO / "Vagrantfile"


def _code(text: str) -> str:
    """The Vagrantfile without its comment lines."""
    return "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))


def test_vagrant_validate(tmp_path):
    vagrant = shutil.which("vagrant")
    assert vagrant, ("vagrant is not installed: run `sudo make setup` (installs the Debian "
                     "package vagrant), then run the tests again")
    env = dict(os.environ,
               VAGRANT_HOME=str(tmp_path / "vagrant.d"),              # not ~/.vagrant.d
               VAGRANT_DOTFILE_PATH=str(tmp_path / "dot-vagrant"),    # no .vagrant/ in the repo
               VAGRANT_CHECKPOINT_DISABLE="1",                        # no version check online
               VAGRANT_NO_COLOR="1")
    dot_before = (REPO / ".vagrant").exists()
    r = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"vagrant validate failed:\n{r.stdout}\n{r.stderr}"
    assert "validated successfully" in r.stdout, r.stdout
    assert dot_before or not (REPO / ".vagrant").exists(), "vagrant validate wrote .vagrant/ in the repo"


def test_vagrantfile_box_and_provisioning():
    code = _code(VAGRANTFILE.read_text())
    assert re.search(r'config\.vm\.box\s*=\s*"debian/bookworm64"', code)
    # Provisioned by a root shell provisioner that runs `make setup` in /vagrant.
    prov = re.search(r'config\.vm\.provision\s+"[^"]*",\s*type:\s*"shell",\s*privileged:\s*true,'
                     r'\s*inline:\s*<<-SHELL\n(.*?)\n\s*SHELL', code, re.S)
    assert prov, "no privileged shell provisioner with an inline script"
    assert re.search(r"^\s*cd /vagrant && make setup\s*$", prov.group(1), re.M), prov.group(1)
    assert 'synced_folder ".", "/vagrant", type: "rsync"' in code


def test_vagrantfile_providers():
    code = _code(VAGRANTFILE.read_text())
    for provider, var in (("virtualbox", "vb"), ("libvirt", "lv")):
        block = re.search(rf'config\.vm\.provider "{provider}" do \|{var}\|\n(.*?)\n\s*end', code, re.S)
        assert block, f"no {provider} provider block"
        assert re.search(rf"{var}\.cpus = 2\b", block.group(1)), block.group(1)
        assert re.search(rf"{var}\.memory = 4096\b", block.group(1)), block.group(1)


def test_vagrantfile_says_why():
    text = VAGRANTFILE.read_text()
    assert "openvswitch module" in text and "sch_netem" in text
    assert "testbed/capabilities.py" in text
