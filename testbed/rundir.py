"""Reading a finished run directory (for ``daitn compare`` and ``daitn report``), with errors for people.

Required files: ``summary.json``, ``events.jsonl``, ``spec.resolved.yaml``. Optional:
``manifest.json`` (run id; else the directory name), ``lineage.json``, ``maps.json``,
``dcc-state.json``, ``flows/``. A required file that is missing, or any file that is present
but unreadable, raises :class:`RunDirError` naming the file, what is wrong and what to do.
A cut-off last line of ``events.jsonl`` (a run killed while writing it) is dropped with a
warning (``RunDir.warnings``); a bad line anywhere else is corruption and an error.

Unlike :func:`testbed.results.read_jsonl` (which skips bad lines while a run is still being
written), this reader refuses to compare or report on silently damaged data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = ["RunDirError", "RunDir", "load_run", "read_events"]

RUN_FILES = ("summary.json", "events.jsonl", "spec.resolved.yaml", "manifest.json")


class RunDirError(ValueError):
    """A run directory cannot be read; ``str()`` says which file, what is wrong, what to do."""


def _rerun_hint(run_dir: Path) -> str:
    return (f"run it again to get a complete run directory: "
            f"daitn run {run_dir / 'spec.resolved.yaml'} --out NEW_DIR")


def read_events(path: Path) -> tuple[list[dict], list[str]]:
    """Events of an ``events.jsonl``, and warnings (a cut-off last line is dropped, said here)."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise RunDirError(f"{path}: not UTF-8 text (byte {e.start}): the file is corrupted; "
                          f"{_rerun_hint(path.parent)}") from None
    except OSError as e:
        raise RunDirError(f"{path}: cannot be read ({e.strerror})") from None
    lines = text.splitlines()
    numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]
    events, warnings = [], []
    for pos, (no, line) in enumerate(numbered):
        try:
            e = json.loads(line)
            problem = None if isinstance(e, dict) else f"a JSON {type(e).__name__}, not an event object"
            if problem is None and not isinstance(e.get("kind"), str):
                problem = "an object without a 'kind'"
            if problem is None and not isinstance(e.get("t"), (int, float)):
                problem = "an event without a numeric time 't'"
        except json.JSONDecodeError as err:
            problem = f"not JSON ({err.msg} at column {err.colno})"
        if problem is None:
            events.append(e)
            continue
        if pos == len(numbered) - 1:
            # a run killed while the file was written leaves its last line cut
            warnings.append(f"{path}: last line ({no}) is cut off or unreadable ({problem}) - ignored; "
                            f"the run was probably killed while writing it")
            continue
        raise RunDirError(f"{path}: line {no} is {problem}: the file is corrupted (only a cut-off "
                          f"last line is tolerated); {_rerun_hint(path.parent)}")
    if not events:
        raise RunDirError(f"{path}: no readable event in it (empty or corrupted); "
                          f"{_rerun_hint(path.parent)}")
    return events, warnings


def _json(path: Path, want: type, what: str) -> object:
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise RunDirError(f"{path}: not UTF-8 text: the file is corrupted; {_rerun_hint(path.parent)}") from None
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}): the file "
                          f"is corrupted or cut off; {_rerun_hint(path.parent)}") from None
    except OSError as e:
        raise RunDirError(f"{path}: cannot be read ({e.strerror})") from None
    if not isinstance(data, want):
        raise RunDirError(f"{path}: expected {what}, found a JSON {type(data).__name__}; the file is not "
                          f"what `daitn run` writes; {_rerun_hint(path.parent)}")
    return data


@dataclass
class RunDir:
    """A finished run directory, read and checked once."""

    path: Path
    summary: dict
    events: list[dict]
    spec: dict                       # spec.resolved.yaml as plain data
    manifest: dict | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str((self.manifest or {}).get("run_id") or self.path.name)

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.spec.get("name") or "?")

    @property
    def mode(self) -> str:
        return str(self.spec.get("mode") or "dcc")

    @property
    def policy(self) -> str:
        if self.mode != "dcc":  # the MTRCE policy plans nothing outside DCC mode
            return "-"
        pol = (self.spec.get("controller") or {}).get("policy")
        if pol is None:  # older specs: the DCC says in its plan event
            pol = next((e.get("policy") for e in self.events if e["kind"] == "plan" and e.get("policy")), None)
        return str(pol or "?")

    @property
    def seed(self):
        return self.summary.get("seed", self.spec.get("seed"))

    def optional_json(self, name: str, want: type = dict, what: str = "a JSON object"):
        """``name`` in the run directory, or None if absent (RunDirError if present but unreadable)."""
        p = self.path / name
        return _json(p, want, what) if p.is_file() else None

    def topology(self):
        """The run's topology from its resolved spec, or None (with a warning) if it cannot be rebuilt."""
        from testbed.spec import SpecError, Spec, resolve_topology
        from topologies.model import TopologyError

        file = str(self.path / "spec.resolved.yaml")
        try:
            spec = Spec.model_validate(self.spec)
        except Exception as e:  # pydantic ValidationError: a spec from an older schema
            self.warnings.append(f"{file}: does not validate with this version of the spec format "
                                 f"({str(e).splitlines()[0]}); topology pictures are left out")
            return None
        from testbed.controller import REPO_ROOT
        # a `file:` topology is relative to the spec it came from; try there, then the repo
        origin = Path(str((self.manifest or {}).get("spec") or "")).parent
        last = None
        for base in (self.path, REPO_ROOT / origin, REPO_ROOT):
            try:
                return resolve_topology(spec, file, base)
            except (SpecError, TopologyError) as e:
                last = e
        self.warnings.append(f"{file}: its topology cannot be rebuilt ({last}); topology pictures are left out")
        return None


def load_run(path: str | Path) -> RunDir:
    """Read and check the run directory at ``path`` (RunDirError says what is wrong)."""
    p = Path(path)
    if not p.exists():
        raise RunDirError(f"{p}: no such directory; pass a run directory written by `daitn run`")
    if not p.is_dir():
        raise RunDirError(f"{p}: not a directory; pass a run directory written by `daitn run` "
                          f"(it holds {', '.join(RUN_FILES)})")
    if not any((p / f).exists() for f in RUN_FILES):
        raise RunDirError(f"{p}: not a run directory (none of {', '.join(RUN_FILES)} is in it); "
                          f"pass a directory written by `daitn run`")
    for f in ("summary.json", "events.jsonl", "spec.resolved.yaml"):
        if not (p / f).is_file():
            why = (" - the run did not finish (killed or crashed before its results were written?); "
                   "logs/ shows how far it got" if f == "summary.json" else "")
            raise RunDirError(f"{p / f}: missing{why}; {_rerun_hint(p)}")
    summary = _json(p / "summary.json", dict, "a JSON object")
    if not isinstance(summary.get("tasks"), list):
        raise RunDirError(f"{p / 'summary.json'}: has no 'tasks' list (keys: {', '.join(sorted(summary)) or 'none'}); "
                          f"it is not a summary written by `daitn run`; {_rerun_hint(p)}")
    for i, t in enumerate(summary["tasks"]):
        if not isinstance(t, dict) or "id" not in t:
            raise RunDirError(f"{p / 'summary.json'}: tasks[{i}] is not a task record with an 'id'; "
                              f"{_rerun_hint(p)}")
    events, warnings = read_events(p / "events.jsonl")
    try:
        spec = yaml.safe_load((p / "spec.resolved.yaml").read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RunDirError(f"{p / 'spec.resolved.yaml'}: not valid YAML ({str(e).splitlines()[0]}); "
                          f"the file is corrupted; the run's manifest.json names the spec it came from") from None
    if not isinstance(spec, dict):
        raise RunDirError(f"{p / 'spec.resolved.yaml'}: not a YAML mapping (a spec); the file is corrupted")
    run = RunDir(p, summary, sorted(events, key=lambda e: e["t"]), spec, warnings=warnings)
    run.manifest = run.optional_json("manifest.json")
    return run
