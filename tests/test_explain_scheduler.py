"""The explanation jobs' bookkeeping (xray_core.serving.scheduler), without processes: order, what
a page is told while it waits, a newer film cancelling the older, stale owners, shared and kept
results. A clock of the test's own stands for time; `take` is what a worker calls."""

from __future__ import annotations

import threading
import time

import pytest

from xray_core.serving.scheduler import JobKey, Scheduler


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Worker:
    """What a worker gives `take`: it records the tickets it was told to stop."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler, self.cancelled = scheduler, []

    def take(self):
        taken = self.scheduler.take(self.cancelled.append, timeout=0)
        return None if taken is None else taken[0]


def key(film: str, options: dict | None = None) -> JobKey:
    return JobKey.of(film, "model-fingerprint", options or {"num_samples": 512, "seed": 0})


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def jobs(clock):
    return Scheduler(stale_after=5.0, keep_results=2, clock=clock)


def test_the_key_names_film_model_and_settings_whatever_their_order():
    assert JobKey.of("a", "m", {"seed": 0, "num_samples": 512}) == JobKey.of("a", "m", {"num_samples": 512, "seed": 0})
    assert JobKey.of("a", "m", {"seed": 0}) != JobKey.of("b", "m", {"seed": 0})
    assert JobKey.of("a", "m", {"seed": 0}) != JobKey.of("a", "m2", {"seed": 0})
    assert JobKey.of("a", "m", {"seed": 0}) != JobKey.of("a", "m", {"seed": 1})


def test_jobs_run_in_arrival_order_and_a_waiting_page_is_told_how_many_are_ahead(jobs):
    worker = Worker(jobs)
    first, second, third = (jobs.submit(owner, key(owner), ()) for owner in ("ann", "bob", "cy"))
    assert jobs.status(first).state == "queued" and jobs.status(first).ahead == 0
    assert worker.take() == first
    status = jobs.status(first)
    assert (status.state, status.done, status.total) == ("running", 0, 0)
    jobs.progress(first, 64, 512)
    assert (jobs.status(first).done, jobs.status(first).total) == (64, 512)
    assert jobs.status(second).ahead == 1  # the running one
    assert jobs.status(third).ahead == 2
    jobs.finish(first, "done", result="panels of ann")
    assert jobs.status(second).ahead == 0 and jobs.status(third).ahead == 1
    assert worker.take() == second and worker.take() == third and worker.take() is None


def test_asking_again_for_the_same_film_is_the_same_job(jobs):
    ticket = jobs.submit("ann", key("a"), ())
    assert jobs.submit("ann", key("a"), ()) == ticket
    Worker(jobs).take()
    assert jobs.submit("ann", key("a"), ()) == ticket  # running: still the same
    jobs.finish(ticket, "done", result="r")
    assert jobs.submit("ann", key("a"), ()) == ticket and jobs.status(ticket).result == "r"


def test_a_newer_film_cancels_the_owners_older_job_queued_or_running(jobs):
    worker = Worker(jobs)
    blocker = jobs.submit("bob", key("b"), ())
    queued = jobs.submit("ann", key("a1"), ())
    newer = jobs.submit("ann", key("a2"), ())
    assert jobs.status(queued).state == "cancelled"  # dropped from the queue at once
    assert jobs.status(newer).ahead == 1  # only bob's is before it
    assert worker.take() == blocker and worker.take() == newer

    # ann's running job: cancelled through its worker when she moves on, gone once it stopped
    latest = jobs.submit("ann", key("a3"), ())
    assert worker.cancelled == [newer]
    assert jobs.status(newer).state == "running"  # until the worker answers
    jobs.finish(newer, "cancelled")
    assert jobs.status(newer).state == "cancelled"
    assert jobs.status(latest).state == "queued"
    assert worker.cancelled == [newer]  # bob's job was never touched


def test_a_different_setting_is_another_job(jobs):
    first = jobs.submit("ann", key("a", {"num_samples": 512, "seed": 0}), ())
    second = jobs.submit("ann", key("a", {"num_samples": 512, "seed": 1}), ())
    assert second != first and jobs.status(first).state == "cancelled"


def test_a_job_nobody_asks_about_is_dropped_after_stale_after_seconds(jobs, clock):
    worker = Worker(jobs)
    running = jobs.submit("gone-running", key("r"), ())
    assert worker.take() == running
    queued = jobs.submit("gone-queued", key("q"), ())
    waiting = jobs.submit("still-here", key("w"), ())
    for _ in range(6):  # still-here asks every second; the others left the page
        clock.now += 1.0
        jobs.status(waiting, owner="still-here")
    assert jobs.status(queued).state == "cancelled"
    assert worker.cancelled == [running]
    jobs.finish(running, "cancelled")
    assert jobs.status(waiting, owner="still-here").state == "queued"
    assert jobs.status(waiting).ahead == 0
    assert worker.take() == waiting


def test_asking_without_being_an_owner_keeps_nothing_alive(jobs, clock):
    ticket = jobs.submit("ann", key("a"), ())
    for _ in range(6):
        clock.now += 1.0
        jobs.status(ticket)  # someone else looking: not ann
    assert jobs.status(ticket).state == "cancelled"


def test_a_stale_owner_that_comes_back_gets_a_new_job(jobs, clock):
    ticket = jobs.submit("ann", key("a"), ())
    clock.now += 6.0
    jobs.sweep()
    assert jobs.status(ticket).state == "cancelled"
    again = jobs.submit("ann", key("a"), ())
    assert again != ticket and jobs.status(again, owner="ann").state == "queued"


def test_owners_of_the_same_film_model_and_settings_share_one_job(jobs):
    worker = Worker(jobs)
    ann = jobs.submit("ann", key("same"), ())
    bob = jobs.submit("bob", key("same"), ())
    assert ann == bob
    assert worker.take() == ann
    jobs.submit("ann", key("other"), ())  # ann moves on: bob still waits for it
    assert worker.cancelled == []
    jobs.drop("bob")  # bob leaves: nobody wants it
    assert worker.cancelled == [ann]


def test_a_finished_result_is_kept_for_the_next_who_asks_and_only_the_last_few(jobs):
    worker = Worker(jobs)
    for film in ("a", "b", "c"):
        ticket = jobs.submit("ann", key(film), ())
        assert worker.take() == ticket
        jobs.finish(ticket, "done", result=f"panels of {film}")
    bob = jobs.submit("bob", key("c"), ())
    assert jobs.status(bob).state == "done" and jobs.status(bob).result == "panels of c"
    assert jobs.status(jobs.submit("cy", key("b"), ())).result == "panels of b"
    assert jobs.status(jobs.submit("dee", key("a"), ())).state == "queued"  # keep_results=2: a was let go
    assert worker.take() is not None


def test_a_failure_is_said_once_and_tried_again_only_when_asked(jobs):
    worker = Worker(jobs)
    ticket = jobs.submit("ann", key("a"), ())
    worker.take()
    jobs.finish(ticket, "failed", message="Orthogonal sampling needs a power of two.")
    status = jobs.status(ticket)
    assert (status.state, status.message) == ("failed", "Orthogonal sampling needs a power of two.")
    assert jobs.submit("ann", key("a"), ()) == ticket  # the page asking again does not loop
    again = jobs.submit("ann", key("a"), (), retry=True)
    assert again != ticket and jobs.status(again).state == "queued"


def test_drop_cancels_the_owners_job(jobs):
    ticket = jobs.submit("ann", key("a"), ())
    jobs.drop("ann")
    assert jobs.status(ticket).state == "cancelled"
    jobs.drop("nobody")  # nothing to drop: nothing happens


def test_a_waiting_worker_wakes_when_a_job_arrives():
    jobs = Scheduler()
    taken = []
    worker = threading.Thread(target=lambda: taken.append(jobs.take(lambda t: None, timeout=30)))
    worker.start()
    time.sleep(0.2)
    ticket = jobs.submit("ann", key("a"), ("run", "image", {}))
    worker.join(10)  # well before take's own 30 s timeout: the submission woke it
    assert taken and taken[0][0] == ticket and taken[0][2] == ("run", "image", {})
