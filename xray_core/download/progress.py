"""Progress of a download: one report type, a throttle for callbacks, and a text bar for the CLI."""

from __future__ import annotations

import sys
import time
from typing import Callable, NamedTuple


class DownloadProgress(NamedTuple):
    """One progress report: what is happening, how far, how fast, and how long is left.

    phase: "download" (bytes), "verify" (bytes hashed), "unpack" (bytes or images written).
    total, rate (units per second) and eta (seconds) are None while unknown.
    """

    phase: str
    done: int
    total: int | None
    rate: float | None
    eta: float | None
    unit: str = "bytes"

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)

    def describe(self) -> str:
        """One line for a progress bar: 'Downloading 540 MB of 1.2 GB (45%), 12 MB/s, 52 s left'."""
        verb = {"download": "Downloading", "verify": "Checking", "unpack": "Unpacking"}.get(
            self.phase, self.phase.capitalize())
        fmt = format_bytes if self.unit == "bytes" else (lambda n: f"{int(n):,} {self.unit}")
        text = f"{verb} {fmt(self.done)}"
        if self.total:
            text += f" of {fmt(self.total)} ({100 * self.fraction:.0f}%)"
        if self.rate:
            text += f", {fmt(self.rate)}/s"
        if self.eta is not None:
            text += f", {format_duration(self.eta)} left"
        return text


ProgressCallback = Callable[[DownloadProgress], None]


def format_bytes(n: float) -> str:
    """Human-readable size in decimal units (what browsers and file managers show)."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Reporter:
    """Throttles progress calls (a Streamlit rerender per chunk would slow the download)."""

    def __init__(self, callback: ProgressCallback | None, interval: float = 0.25):
        self.callback = callback
        self.interval = interval
        self.phase: str | None = None
        self.t0 = self.last = 0.0
        self.start_done = 0

    def __call__(self, phase: str, done: int, total: int | None, *, unit: str = "bytes",
                 force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if phase != self.phase:
            self.phase, self.t0, self.start_done, self.last = phase, now, done, 0.0
            force = True
        if not force and now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.t0
        rate = (done - self.start_done) / elapsed if elapsed > 0.05 else None
        eta = None
        if rate and total is not None and total >= done:
            eta = (total - done) / rate
        self.callback(DownloadProgress(phase, done, total, rate, eta, unit))


class TextProgress:
    """The CLI's progress: a tqdm bar per phase (download, verify, unpack) on a stream (stderr)."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.bar = None
        self.phase: str | None = None

    def __call__(self, p: DownloadProgress) -> None:
        from tqdm import tqdm

        if p.phase != self.phase or self.bar is None:
            self.close()
            in_bytes = p.unit == "bytes"
            self.bar = tqdm(total=p.total, desc=p.describe().split(" ", 1)[0], file=self.stream,
                            unit="B" if in_bytes else f" {p.unit}", unit_scale=in_bytes, unit_divisor=1000,
                            mininterval=0.5, dynamic_ncols=True)
            self.phase = p.phase
        self.bar.update(p.done - self.bar.n)
        if p.total is not None and p.done >= p.total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
