"""Start the DCC (os-ken) in this process: ``python -m controllers.launch --port P``.

os-ken 4.2 ships no manager CLI, so we do what one would: monkey-patch with
eventlet, import the controller and topology modules (they register their
options), parse options, then run the apps. Order matters (see DESIGN.md §5).
"""
from __future__ import annotations

import argparse
import logging
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="controllers.launch")
    ap.add_argument("--port", type=int, default=6653, help="OpenFlow TCP listen port")
    ap.add_argument("--host", default="127.0.0.1", help="OpenFlow listen address")
    args = ap.parse_args(argv)

    from os_ken.lib import hub
    hub.patch(thread=False)
    if hub.HUB_TYPE == "native":
        # Native hub's TaskExit is Exception: a handler that raises would end its
        # app's event thread silently (no log) and freeze the DCC. Make it a
        # class of its own so os-ken logs the exception and carries on.
        hub.TaskExit = type("TaskExit", (BaseException,), {})
    from os_ken import cfg
    from os_ken.base import app_manager  # noqa: F401  (first: breaks an import cycle)
    from os_ken.controller import controller  # noqa: F401  (registers ofp-* options)
    from os_ken.topology import switches  # noqa: F401  (registers its options; we use its LLDP codec)

    cfg.CONF(args=["--ofp-tcp-listen-port", str(args.port), "--ofp-listen-host", args.host], project="os_ken")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from os_ken.base.app_manager import AppManager
    AppManager.run_apps(["controllers.dcc_app"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
