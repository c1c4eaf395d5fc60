"""Background jobs: every model call and every slow file operation runs in a QThreadPool worker.

A :class:`Job` wraps ``fn(cancel, progress) -> result``; its signals arrive on the GUI thread.
:class:`ModelQueue` runs model jobs one at a time and coalesces render requests: while one
render runs, newer requests replace the pending one, so only the latest edit is rendered next.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from engine.errors import Cancelled

log = logging.getLogger(__name__)

CancelFn = Callable[[], bool]
ProgressFn = Callable[[float, str], None]
JobFn = Callable[[CancelFn, ProgressFn], Any]


class JobSignals(QObject):
    progress = Signal(float, str)
    done = Signal(object, float)  # result, seconds
    failed = Signal(object)  # exception
    cancelled = Signal()
    finished = Signal()  # always, after one of the three above


class Job(QRunnable):
    """A cancellable unit of background work."""

    def __init__(self, name: str, fn: JobFn, partial_results: bool = False) -> None:
        """``partial_results``: a job that returns normally after a cancel request still reports
        its result (e.g. a batch report of what was done before cancelling)."""
        super().__init__()
        self.partial_results = partial_results
        self.setAutoDelete(False)  # the Python side owns the object
        self.name = name
        self.fn = fn
        self.signals = JobSignals()
        self._cancel = threading.Event()
        self.running = False
        self.key = ""

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def is_cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> None:  # worker thread
        self.running = True
        t0 = time.perf_counter()
        try:
            if self._cancel.is_set():
                raise Cancelled()
            result = self.fn(self._cancel.is_set, lambda f, msg="": self.signals.progress.emit(float(f), str(msg)))
            if self._cancel.is_set() and not self.partial_results:
                raise Cancelled()
        except Cancelled:
            log.info("%s cancelled", self.name)
            self.signals.cancelled.emit()
        except BaseException as exc:  # noqa: BLE001 - reported to the GUI, never swallowed
            log.exception("%s failed", self.name)
            self.signals.failed.emit(exc)
        else:
            self.signals.done.emit(result, time.perf_counter() - t0)
        finally:
            self.running = False
            self.signals.finished.emit()


class JobRunner(QObject):
    """Owns the thread pool and keeps started jobs alive until they finish."""

    def __init__(self, parent: QObject | None = None, threads: int = 4) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self.jobs: set[Job] = set()

    def start(self, job: Job) -> Job:
        self.jobs.add(job)
        job.signals.finished.connect(lambda j=job: self.jobs.discard(j))
        self.pool.start(job)
        return job

    def busy(self) -> bool:
        return bool(self.jobs)

    def cancel_all(self) -> None:
        for j in list(self.jobs):
            j.cancel()

    def wait(self, msecs: int = 30000) -> bool:
        return self.pool.waitForDone(msecs)


class ModelQueue(QObject):
    """Serial queue for model jobs with per-key coalescing (a newer job with the same key replaces
    a pending one). Emits ``busyChanged`` and ``jobStarted(name)`` for the status bar."""

    busyChanged = Signal(bool)
    jobStarted = Signal(str)

    def __init__(self, runner: JobRunner) -> None:
        super().__init__(runner)
        self.runner = runner
        self.current: Job | None = None
        self.pending: list[tuple[str, Callable[[], Job]]] = []

    def submit(self, key: str, make_job: Callable[[], Job]) -> None:
        """Queue a job factory; the job is created only when it starts (so it sees the latest state)."""
        self.pending = [(k, f) for k, f in self.pending if k != key]
        self.pending.append((key, make_job))
        self._next()

    def drop(self, key: str | None = None) -> None:
        """Forget pending jobs (all, or those with ``key``)."""
        self.pending = [(k, f) for k, f in self.pending if key is not None and k != key]

    def cancel(self, keep: tuple[str, ...] = ("model",)) -> bool:
        """Cancel the running job and drop pending ones, except those whose key is in ``keep``
        (loading the model is never cancelled). True if a running job was asked to stop."""
        self.pending = [(k, f) for k, f in self.pending if k in keep]
        if self.current is not None and getattr(self.current, "key", None) not in keep:
            self.current.cancel()
            return True
        return False

    @property
    def busy(self) -> bool:
        return self.current is not None or bool(self.pending)

    def _next(self) -> None:
        if self.current is not None:
            return
        while self.pending:
            key, make = self.pending.pop(0)
            job = make()
            if job is None:
                continue
            job.key = key
            self.current = job
            job.signals.finished.connect(self._finished)
            self.jobStarted.emit(job.name)
            self.busyChanged.emit(True)
            self.runner.start(job)
            return
        self.busyChanged.emit(False)

    def _finished(self) -> None:
        self.current = None
        self._next()
