"""The bookkeeping of explanation jobs, without processes: who waits for what, and in which order.

Jobs wait in arrival order; a newer job of the same owner (one browser session) cancels that
owner's older one, queued or running; a job whose owners have not asked about it for
`stale_after` seconds (they left the page or closed the tab) is cancelled; owners asking for the
same film, model and settings share one job; finished results are kept by their `JobKey` (film
hash, model fingerprint, options), so a result is only ever handed out for its own film. A
running job is cancelled through the callable its worker gave `take`. `serving.service` runs
the workers; tests drive a `Scheduler` alone, with a clock of their own.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict, deque
from typing import Any, Callable, NamedTuple

STALE_AFTER = 5.0  # seconds without a question from any of its owners before a job is dropped
KEEP_RESULTS = 8  # finished explanations kept for whoever asks for the same film, model and settings
ACTIVE = ("queued", "running")


class JobKey(NamedTuple):
    """What an explanation depends on: the film's bytes, the model and the settings."""

    film: str  # sha256 of the file's bytes
    model: str  # Model.fingerprint
    options: tuple  # sorted (name, value) pairs of explain_film's settings

    @classmethod
    def of(cls, film_sha256: str, fingerprint: str, options: dict) -> "JobKey":
        return cls(str(film_sha256), str(fingerprint), tuple(sorted(options.items())))


@dataclasses.dataclass(frozen=True)
class Status:
    """Where a job stands: queued (`ahead` jobs before it), running (`done` of `total` LIME
    samples scored), done (`result`), cancelled, or failed (`message`, a sentence)."""

    state: str
    ahead: int = 0
    done: int = 0
    total: int = 0
    result: Any = None
    message: str = ""


@dataclasses.dataclass(eq=False)
class _Job:
    id: int
    key: JobKey
    task: tuple | None  # (run_path, image, options), dropped once the job ends
    owners: dict  # owner -> when it last asked (the scheduler's clock)
    state: str = "queued"
    done: int = 0
    total: int = 0
    result: Any = None
    message: str = ""
    on_cancel: Callable[[int], None] | None = None  # tells the worker running it to stop
    cancelling: bool = False


class Scheduler:
    """The jobs, their owners and the kept results; thread-safe. Workers call `take` for the next
    job and `progress` / `finish` as it goes; pages call `submit`, `status` and `drop`."""

    def __init__(self, *, stale_after: float = STALE_AFTER, keep_results: int = KEEP_RESULTS,
                 clock: Callable[[], float] = time.monotonic):
        self.stale_after, self.keep_results, self._clock = float(stale_after), int(keep_results), clock
        self._cond = threading.Condition()
        self._jobs: dict[int, _Job] = {}
        self._queue: deque[int] = deque()
        self._latest: dict[str, int] = {}  # owner -> its current job
        self._results: OrderedDict[JobKey, Any] = OrderedDict()
        self._ids = 0

    def submit(self, owner: str, key: JobKey, task: tuple, *, retry: bool = False) -> int:
        """A ticket for `key` on behalf of `owner`. Asking again for the owner's current key returns
        the same ticket (a failed one too, unless `retry`); asking for another key cancels the
        owner's previous job."""
        with self._cond:
            now = self._clock()
            current = self._jobs.get(self._latest.get(owner, -1))
            if (current is not None and current.key == key and not current.cancelling
                    and current.state != "cancelled" and not (current.state == "failed" and retry)):
                current.owners[owner] = now
                self._sweep(now)
                return current.id
            if current is not None:
                self._release(current, owner)
            job = next((j for j in self._jobs.values()
                        if j.key == key and j.state in ACTIVE and not j.cancelling), None)
            if job is None:
                self._ids += 1
                job = _Job(self._ids, key, task, {})
                if key in self._results:
                    self._results.move_to_end(key)
                    job.state, job.result, job.task = "done", self._results[key], None
                else:
                    self._queue.append(job.id)
                    self._cond.notify_all()
                self._jobs[job.id] = job
            job.owners[owner] = now
            self._latest[owner] = job.id
            self._sweep(now)
            return job.id

    def status(self, ticket: int, *, owner: str | None = None) -> Status:
        """Where `ticket` stands; asking as one of its owners keeps the job alive."""
        with self._cond:
            now = self._clock()
            job = self._jobs.get(ticket)
            if job is not None and owner in job.owners:
                job.owners[owner] = now
            self._sweep(now)
            job = self._jobs.get(ticket)
            if job is None:
                return Status("cancelled", message="This explanation was dropped: no one was waiting for it.")
            if job.state == "queued":
                running = sum(j.state == "running" for j in self._jobs.values())
                return Status("queued", ahead=self._queue.index(job.id) + running)
            return Status(job.state, done=job.done, total=job.total, result=job.result, message=job.message)

    def drop(self, owner: str) -> None:
        """The owner wants no explanation any more (no film on its page)."""
        with self._cond:
            job = self._jobs.get(self._latest.get(owner, -1))
            if job is not None:
                self._release(job, owner)
            self._latest.pop(owner, None)

    def sweep(self) -> None:
        """Cancel the jobs no owner has asked about for `stale_after` seconds."""
        with self._cond:
            self._sweep(self._clock())

    def take(self, on_cancel: Callable[[int], None], *, timeout: float) -> tuple[int, JobKey, tuple] | None:
        """For a worker: the oldest queued job, now running (`on_cancel(ticket)` is called, under
        the scheduler's lock, if it is to stop), or None after `timeout` seconds without one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._sweep(self._clock())
                if self._queue:
                    job = self._jobs[self._queue.popleft()]
                    job.state, job.on_cancel = "running", on_cancel
                    return job.id, job.key, job.task
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def progress(self, ticket: int, done: int, total: int) -> None:
        with self._cond:
            job = self._jobs.get(ticket)
            if job is not None:
                job.done, job.total = int(done), int(total)

    def finish(self, ticket: int, state: str, *, result: Any = None, message: str = "") -> None:
        """A worker's answer: "done" (with its result), "cancelled" or "failed" (with a sentence)."""
        with self._cond:
            job = self._jobs.get(ticket)
            if job is None:
                return
            if state == "done":
                self._results[job.key] = result
                self._results.move_to_end(job.key)
                while len(self._results) > self.keep_results:
                    self._results.popitem(last=False)
            job.state, job.result, job.message, job.task, job.on_cancel = state, result, message, None, None
            if not job.owners:
                del self._jobs[job.id]
            self._cond.notify_all()

    def wake(self) -> None:
        """Let waiting `take` calls look again (the service is closing)."""
        with self._cond:
            self._cond.notify_all()

    def _release(self, job: _Job, owner: str) -> None:
        """`owner` no longer wants `job`; a job nobody wants is cancelled (queued: at once;
        running: through its worker) or, when finished, forgotten (its result stays kept)."""
        job.owners.pop(owner, None)
        if self._latest.get(owner) == job.id:
            del self._latest[owner]
        if job.owners:
            return
        if job.state == "queued":
            self._queue.remove(job.id)
            del self._jobs[job.id]
        elif job.state == "running":
            job.cancelling = True
            if job.on_cancel is not None:
                job.on_cancel(job.id)
        else:
            del self._jobs[job.id]

    def _sweep(self, now: float) -> None:
        for owner, ticket in list(self._latest.items()):
            job = self._jobs.get(ticket)
            if job is None:
                del self._latest[owner]
            elif now - job.owners.get(owner, float("-inf")) > self.stale_after:
                self._release(job, owner)
