#!/usr/bin/env bash
# Idempotent machine set-up for the DA-ITN testbed (Debian 12, as root).
# Installs Debian packages, starts Open vSwitch without systemd, builds the
# project venv (.venv, sees Debian's mininet) and installs pinned Python deps.
# A second run on a set-up machine changes nothing: each step checks first.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
log() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: must run as root (it installs packages and starts Open vSwitch); try: sudo make setup" >&2
  exit 1
fi

DEB_PKGS="make g++ vagrant mininet openvswitch-switch openvswitch-common tcpdump tshark ethtool iperf3 iputils-ping iproute2 python3-venv python3-pip python3-dev procps psmisc"
missing=""
for p in $DEB_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: vagrant would otherwise pull ~400 packages (libvirt);
  # `vagrant validate` (tested) needs none of them.
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
  log "Debian packages present"
fi

# Open vSwitch: ovs-ctl works with or without systemd; it skips modprobe when
# the kernel has no openvswitch module (then bridges use the userspace datapath).
if ovs-vsctl --timeout=2 show >/dev/null 2>&1; then
  log "Open vSwitch running"
else
  log "starting Open vSwitch"
  /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random >/dev/null
  ovs-vsctl --timeout=10 show >/dev/null
fi

# Node processes drop root after entering their host's namespace and run as this
# system user (nodes/launcher.py; README, Security); without it they use nobody.
if getent passwd daitn-node >/dev/null; then
  log "user daitn-node present"
else
  log "creating system user daitn-node (node processes run as it)"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin daitn-node
fi

VENV="$here/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV (system site packages: Debian's mininet)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
# Reinstall Python deps only when the pins change.
stamp="$VENV/.deps-stamp"
want="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python deps (torch CPU, os-ken, scapy, ...)"
  pip_q() {  # pip, minus its noise about this machine's absent extra local indexes
    local rc=0
    "$VENV/bin/pip" install -q --disable-pip-version-check "$@" > /tmp/daitn-pip.log 2>&1 || rc=$?
    grep -v "is ignored: it is neither" /tmp/daitn-pip.log || true
    return $rc
  }
  pip_q -r requirements.txt
  pip_q --no-deps --no-build-isolation -e .
  "$VENV/bin/python" -c "import torch, os_ken, scapy, topohub, mininet.net" \
    || { echo "setup.sh: Python deps did not install; see pip's output above" >&2; exit 1; }
  echo "$want" > "$stamp"
else
  log "Python deps up to date"
fi
# The ns-3 side of simulated links, compiled once against the ns3 wheel (a no-op when
# the library for this wheel, compiler and source already exists; ~10 s otherwise).
"$VENV/bin/python" -m testbed.ns3link.build \
  || { echo "setup.sh: building the ns-3 link library failed; see above" >&2; exit 1; }
log "done"
