"""What `daitn run` shows while it runs.

Two views of the same events:

- lines, one per event of interest (``[  12.3s] h2: task 1 hop 1 ...``), always when
  the output is not a terminal (logs, CI, tests read them), and above the live
  table when it is;
- on a terminal, a live table (rich) of every task: state, where the model is,
  hops, laps, last verified accuracy against the target, model bytes moved,
  re-plans - plus queries answered - redrawn four times a second.

``--quiet`` shows neither. :class:`TaskBoard` (pure) folds events into the
table's rows, so it is unit-tested without a terminal.
"""
from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class TaskRow:
    id: int
    client: str = "?"
    state: str = "asked"
    at: str = "-"
    hops: int = 0
    lap: int = 0
    accuracy: float | None = None
    target: float | None = None
    bytes: int = 0
    replans: int = 0
    plan: str = ""


class TaskBoard:
    """Tasks and queries as the events tell them (node and DCC events alike)."""

    def __init__(self):
        self.tasks: dict[int, TaskRow] = {}
        self.queries_answered = 0
        self.queries_failed = 0
        self.events = 0

    def _row(self, tid) -> TaskRow:
        tid = int(tid)
        if tid not in self.tasks:
            self.tasks[tid] = TaskRow(tid)
        return self.tasks[tid]

    def update(self, e: dict):
        self.events += 1
        k, tid = e.get("kind"), e.get("task")
        if k in ("task_submitted", "task_handed_off") and tid is not None:
            r = self._row(tid)
            r.client, r.target = e.get("src", r.client), e.get("target_accuracy", r.target)
        elif k == "itinerary_received" and tid is not None:
            r = self._row(tid)
            r.plan = " -> ".join(e.get("itinerary") or [])
            r.state = "travelling" if e.get("feasible", True) and r.plan else "infeasible"
        elif k == "train" and tid is not None:
            r = self._row(tid)
            r.state, r.at, r.hops, r.lap = "training", e.get("src", "?"), int(e.get("hop", r.hops)), int(e.get("lap", 0))
        elif k == "evaluation" and tid is not None:
            r = self._row(tid)
            r.accuracy = e.get("accuracy")
        elif k == "transfer" and tid is not None:
            r = self._row(tid)
            r.bytes += int(e.get("bytes", 0))
            if e.get("msg") == "MODEL_CHUNK":
                r.state, r.at = "moving", f"{e.get('src', '?')} -> {e.get('to', '?')}"
        elif k == "replan" and tid is not None:
            r = self._row(tid)
            r.replans += 1
            r.plan = " -> ".join(e.get("new") or []) or r.plan
        elif k == "task_result" and tid is not None:
            r = self._row(tid)
            r.state, r.at = str(e.get("end_reason", "ended")), e.get("src", r.at)
            if e.get("accuracy") is not None:
                r.accuracy = e["accuracy"]
        elif k == "workload_result":
            self.queries_answered += int(e.get("answered", 0))
            self.queries_failed += int(e.get("failed", 0))
        elif k == "submitted_query_result":
            if e.get("answered"):
                self.queries_answered += 1
            else:
                self.queries_failed += 1

    def rows(self) -> list[list[str]]:
        out = []
        for r in sorted(self.tasks.values(), key=lambda r: r.id):
            acc = "-" if r.accuracy is None else f"{r.accuracy:.3f}"
            if r.target is not None:
                acc += f" / {r.target:g}"
            out.append([str(r.id), r.client, r.state, r.at, str(r.hops), str(r.lap), acc,
                        _human(r.bytes), str(r.replans), r.plan])
        return out


COLUMNS = ["task", "client", "state", "model at", "hops", "lap", "accuracy / target", "bytes", "re-plans", "plan"]


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


class Progress:
    """``say(text)`` prints a progress line; ``event(e)`` feeds the live table.
    ``live=None`` decides by the output: a live table only on a terminal."""

    def __init__(self, quiet: bool, live: bool | None = None, console=None):
        from rich.console import Console
        self.quiet = quiet
        self.t0 = time.time()
        self.board = TaskBoard()
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.use_live = (not quiet) and (self.console.is_terminal if live is None else live)
        self.live = None

    def __call__(self, text: str):
        if self.quiet:
            return
        line = f"[{time.time() - self.t0:6.1f}s] {text}"
        if self.live is not None:
            self.live.console.print(line, markup=False)
        else:
            print(line, flush=True)

    def event(self, e: dict):
        self.board.update(e)
        if self.live is not None:
            self.live.update(self.table())

    def table(self):
        from rich.table import Table
        t = Table(title=f"tasks ({time.time() - self.t0:.0f} s)", caption=(
            f"queries answered {self.board.queries_answered}, failed {self.board.queries_failed}"))
        for c in COLUMNS:
            t.add_column(c, overflow="fold")
        for row in self.board.rows():
            t.add_row(*row)
        return t

    def start_live(self):
        if self.use_live and self.live is None:
            from rich.live import Live
            self.live = Live(self.table(), console=self.console, refresh_per_second=4, transient=False)
            self.live.start()

    def stop_live(self):
        if self.live is not None:
            self.live.update(self.table())
            self.live.stop()
            self.live = None
