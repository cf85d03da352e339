"""The DCC controller as a separate process with its own log, state and events.

``ControllerProcess`` starts ``python -m controllers.launch``, waits until its
OpenFlow port accepts connections, and always stops it. The process reads the
expected fabric from a JSON file and writes its state atomically to another,
which the runner and tests poll (no sleeps).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from controllers.fabric import Fabric
from testbed.wait import wait_for

REPO_ROOT = Path(__file__).resolve().parent.parent


class ControllerError(RuntimeError):
    """The controller failed to start or died; the message points at its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ControllerProcess:
    def __init__(self, workdir: Path, fabric: Fabric, run_id: str, port: int | None = None,
                 lldp_interval: float = 1.0, key_file: Path | None = None):
        self.dir = Path(workdir)
        self.fabric = fabric
        self.run_id = run_id
        self.port = port or free_port()
        self.lldp_interval = lldp_interval
        self.key_file = key_file
        self.fabric_path = self.dir / "fabric.json"
        self.state_path = self.dir / "dcc-state.json"
        self.events_path = self.dir / "dcc-events.jsonl"
        self.log_path = self.dir / "logs" / "controller.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ControllerProcess":
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self, keep: bool = False):
        """Start the DCC; ``keep``: a restart - its events file grows on, its state is rebuilt."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.fabric_path.write_text(json.dumps(self.fabric.to_dict(), indent=1))
        for p in (self.state_path, self.events_path):
            if not keep or p == self.state_path:
                p.unlink(missing_ok=True)
        env = dict(os.environ, DAITN_FABRIC=str(self.fabric_path), DAITN_STATE=str(self.state_path),
                   DAITN_EVENTS=str(self.events_path), DAITN_RUN=self.run_id,
                   DAITN_LLDP_INTERVAL=str(self.lldp_interval),
                   DAITN_KEY_FILE=str(self.key_file or ""),
                   PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "controllers.launch", "--port", str(self.port)],
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(REPO_ROOT), start_new_session=True)
        try:
            wait_for(self._listening, 30, f"the DCC to listen on OpenFlow port {self.port}",
                     last=self._status)
        except BaseException:
            self.stop()
            raise

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise ControllerError(f"the controller exited with code {self.proc.returncode}; "
                                  f"see {self.log_path}:\n{self.log_tail()}")
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _status(self) -> str:
        return "running" if self.proc and self.proc.poll() is None else "exited"

    def state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_converged(self, timeout: float = 60) -> dict:
        def ok():
            if not self.alive():
                raise ControllerError(f"the controller died; see {self.log_path}:\n{self.log_tail()}")
            st = self.state()
            return st if st.get("converged") else None

        def seen():
            st = self.state()
            return (f"switches {len(st.get('switches_connected', []))}/{len(st.get('switches_expected', []))},"
                    f" links {st.get('links_discovered')}/{st.get('links_expected')},"
                    f" missing {st.get('link_check', {}).get('missing', [])[:5]}")

        return wait_for(ok, timeout, "the DCC to discover the whole topology", last=seen)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def logged_exceptions(self) -> list[str]:
        """Tracebacks in the controller log (tests fail on any, as Faucet's do)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [ln for ln in text.splitlines() if "Traceback" in ln or " ERROR " in ln]

    def crash_and_restart(self, down_s: float = 0.0) -> float:
        """Kill the DCC (SIGKILL: a crash, nothing saved), stay down ``down_s``, start it
        again on the same OpenFlow and API ports; returns the seconds it was not listening."""
        t0 = time.time()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()
        self.proc = None
        time.sleep(down_s)
        self.start(keep=True)
        return time.time() - t0

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        self.proc = None
