"""What `daitn run` shows while it runs (testbed/progress.py): the task board from
events, the live table on a terminal, plain lines elsewhere, nothing with --quiet."""
import io

from rich.console import Console

from testbed.progress import COLUMNS, Progress, TaskBoard

EVENTS = [
    {"kind": "task_submitted", "src": "h1", "task": 1, "target_accuracy": 0.85, "t": 1},
    {"kind": "itinerary_received", "src": "h1", "task": 1, "itinerary": ["h2", "h4"], "feasible": True, "t": 2},
    {"kind": "transfer", "src": "h1", "task": 1, "to": "h2", "msg": "MODEL_CHUNK", "bytes": 21000, "t": 3},
    {"kind": "train", "src": "h2", "task": 1, "hop": 1, "lap": 0, "t": 4},
    {"kind": "evaluation", "src": "h2", "task": 1, "hop": 1, "accuracy": 0.61, "t": 5},
    {"kind": "replan", "src": "dcc", "task": 1, "cause": "link down (s1-s3)", "old": ["h2", "h4"],
     "new": ["h2", "h6"], "t": 6},
    {"kind": "transfer", "src": "h2", "task": 1, "to": "h6", "msg": "MODEL_CHUNK", "bytes": 21000, "t": 7},
    {"kind": "workload_result", "src": "h1", "answered": 9, "failed": 1, "t": 8},
]


def test_board_follows_a_task():
    b = TaskBoard()
    for e in EVENTS[:5]:
        b.update(e)
    assert b.rows() == [["1", "h1", "training", "h2", "1", "0", "0.610 / 0.85", "21.0 kB", "0", "h2 -> h4"]]
    for e in EVENTS[5:]:
        b.update(e)
    [row] = b.rows()
    assert row[2:4] == ["moving", "h2 -> h6"] and row[7] == "42.0 kB" and row[8] == "1" and row[9] == "h2 -> h6"
    assert (b.queries_answered, b.queries_failed) == (9, 1)
    b.update({"kind": "task_result", "src": "h1", "task": 1, "end_reason": "target_reached", "accuracy": 0.9})
    assert b.rows()[0][2:4] == ["target_reached", "h1"] and b.rows()[0][6] == "0.900 / 0.85"


def test_live_table_on_a_terminal(capsys):
    buf = io.StringIO()
    p = Progress(quiet=False, console=Console(file=buf, force_terminal=True, width=160))
    assert p.use_live
    p.start_live()
    p("DCC converged")
    for e in EVENTS:
        p.event(e)
    p.stop_live()
    out = buf.getvalue()
    assert "DCC converged" in out and "re-plans" in out and "h2 -> h6" in out and "0.610 / 0.85" in out
    assert all(c.split()[0] in out for c in COLUMNS)
    assert capsys.readouterr().out == ""  # everything went to the console


def test_plain_lines_off_a_terminal_and_nothing_when_quiet(capsys):
    p = Progress(quiet=False, console=Console(file=io.StringIO(), force_terminal=False))
    assert not p.use_live
    p.start_live()
    p("network up")
    p.event(EVENTS[0])
    p.stop_live()
    assert "network up" in capsys.readouterr().out
    q = Progress(quiet=True, console=Console(file=io.StringIO(), force_terminal=True))
    q.start_live()
    q("network up")
    q.stop_live()
    assert capsys.readouterr().out == "" and q.live is None
