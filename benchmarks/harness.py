"""What every benchmark shares: the machine, the versions, the command, the quiet machine, the report.

A benchmark answers one question and is run by hand as a module from the project root
(`python -m benchmarks.NAME ...`). It opens `Bench(name, question=...)`, which waits for the
machine lock (so no two measurements share the cores; the lock is the file `benchmark.lock` in
the cache folder, which other heavy jobs may take too), records the load average and the busy
processes before and after, and writes `benchmarks/reports/NAME.md` and `NAME.json` with the
machine, the versions and the exact command. Speed figures from a machine that was not quiet say
so in the report.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from xray_core import fileio

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "benchmarks" / "reports"
# The folder holding chest_xray/ (and originals/): XRAY_DATA_DIR's parent when it is set (it names
# chest_xray/, as for the dashboard and the commands), else the development machine's shared data.
SHARED_DATA = (Path(os.environ["XRAY_DATA_DIR"]).resolve().parent if os.environ.get("XRAY_DATA_DIR")
               else ROOT.parent / "shared" / "data")
NOTICE = ("> Research software, not a medical device. Images: Kermany, Zhang & Goldbaum (2018), "
          "Mendeley Data V3, doi:10.17632/rscbjbr9sj.3, CC BY 4.0.")
PACKAGES = ("numpy", "pillow", "ai-edge-litert", "tensorflow", "keras", "onnxruntime", "scikit-image",
            "scikit-learn", "lime", "streamlit", "playwright")
QUIET_LOAD = 1.0  # a 1-minute load average above this on 2 cores means others were computing
SETTLE_SECONDS = 240  # how long a measurement waits for the load of what ran before it to fade


def versions(packages=PACKAGES) -> dict:
    """Installed versions, read from package metadata (nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    memory = None
    with contextlib.suppress(OSError, ValueError):
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
        memory = round(kb / 1024 / 1024, 1)
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gb": memory, "os": platform.platform()}


def busy_processes(seconds: float = 1.0) -> list[str]:
    """Other processes using at least 5 % of a core over the next `seconds`."""
    def ticks() -> dict[int, int]:
        out = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                out[int(stat.parent.name)] = int(fields[11]) + int(fields[12])  # utime + stime
        return out

    before = ticks()
    time.sleep(seconds)
    after = ticks()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, t in after.items():
        share = (t - before.get(pid, t)) / hz / seconds
        if pid != os.getpid() and share >= 0.05:
            with contextlib.suppress(OSError):
                cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                busy.append(f"{share:.0%} {' '.join(cmd.split())[:100]}")
    return busy


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def data_root(given: str | os.PathLike | None = None) -> Path:
    """The Kermany-layout folder to measure on: the one given, else the shared development data."""
    from xray_core import data

    return data.find_dataset(Path(given) if given else SHARED_DATA / "chest_xray")


def validation_films(run: str = "default", *, n: int | None = None, seed: int = 0,
                     root: str | os.PathLike | None = None) -> list[tuple[Path, int]]:
    """(path, label) of films from the run's own stored validation list: patients its networks did
    not train on. A seeded sample of n when n is given (the same films every time)."""
    import numpy as np

    from xray_core import runs, splits

    paths, labels = splits.validation_rows(runs.load_run(run), str(data_root(root)))
    pairs = [(Path(p), int(y)) for p, y in zip(paths, labels)]
    if n is not None and n < len(pairs):
        order = np.random.default_rng(seed).permutation(len(pairs))[:n]
        pairs = [pairs[i] for i in sorted(order)]
    return pairs


def _module(name: str) -> str:
    """The module this process runs (`python -m benchmarks.explain` writes several reports)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None and spec.name.startswith("benchmarks.") else f"benchmarks.{name}"


class Bench:
    """One measurement: the machine lock, the record of load and busy processes, and the report."""

    def __init__(self, name: str, *, question: str):
        self.name, self.question = name, question
        self.started = datetime.now(timezone.utc)
        self._lock = None

    def __enter__(self) -> "Bench":
        path = fileio.default_cache_dir() / "benchmark.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(path, "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # waits for another measurement to end
        # The 1-minute load average fades over minutes: after the previous measurement (or a test
        # run) ends, wait for it to drop, up to SETTLE_SECONDS; the report says what it was.
        deadline = time.monotonic() + SETTLE_SECONDS
        while os.getloadavg()[0] > QUIET_LOAD and time.monotonic() < deadline:
            time.sleep(5)
        self.load_before = os.getloadavg()
        self.busy_before = busy_processes()
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def write(self, body: str, data: dict) -> Path:
        """benchmarks/reports/NAME.md (title, notice, conditions, body) and NAME.json (data + conditions)."""
        load_after, busy_after = os.getloadavg(), busy_processes()
        # the load average after includes this benchmark's own work: judge the others by the busy lists
        quiet = self.load_before[0] <= QUIET_LOAD and not (self.busy_before or busy_after)
        conditions = {
            "question": self.question, "command": f"python -m {_module(self.name)} " + " ".join(sys.argv[1:]),
            "started": self.started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "versions": versions(),
            "load_average_before": [round(v, 2) for v in self.load_before],
            "load_average_after": [round(v, 2) for v in load_after],
            "busy_before": self.busy_before, "busy_after": busy_after, "quiet": quiet,
        }
        m, v = conditions["machine"], conditions["versions"]
        lines = [f"# {self.question}", "", NOTICE, "",
                 f"Command: `{conditions['command'].strip()}`, {conditions['started']} to {conditions['finished']}.",
                 f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}.",
                 "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
                 f"Load average (1, 5, 15 min) before {conditions['load_average_before']}, after "
                 f"{conditions['load_average_after']}" + ("; nothing else was computing." if quiet else
                 "; other processes were computing, so speed figures are lower than a quiet machine gives"
                 + (": " + "; ".join(self.busy_before + busy_after)[:400] if self.busy_before or busy_after else "")
                 + "."), "", body.rstrip(), ""]
        REPORTS.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_text(REPORTS / f"{self.name}.md", "\n".join(lines))
        fileio.atomic_write_json(REPORTS / f"{self.name}.json", {"conditions": conditions, **data})
        return REPORTS / f"{self.name}.md"
