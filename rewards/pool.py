"""A small process pool with a hard wall-clock bound per batch, for math-verify.

Why not `concurrent.futures.ProcessPoolExecutor`: it can neither abandon nor kill one task. Here each worker
sends its results as it goes (at least every FLUSH_S seconds), so at a batch's deadline the unfinished items are
known: they get the default value and the call returns. The workers that held them are told to drop the rest
of their chunk; the function's own timers free them (`rewards.accuracy` cuts each item at the batch's
deadline), and they rejoin warm. Only a worker still busy `stuck_after` seconds past the deadline (stuck in C
code, where Python cannot deliver a signal) is killed and replaced. Workers die with the trainer: a SIGKILLed
trainer runs no clean-up, and a worker stuck in C code would otherwise outlive it (see `_bind_to_parent`).

Why workers are fresh interpreters (`subprocess` running `python -c`) and not `multiprocessing` processes: a
training process has torch loaded with its OpenMP / CUDA threads, and `fork` copies locks those threads hold,
which can deadlock the child. `spawn` and `forkserver` avoid that but re-import the parent's `__main__` in each
worker, which fails in scripts without an `if __name__ == "__main__"` guard and drags torch into every worker.
A worker here imports only `rewards.accuracy` and warms math-verify up (about 0.5 s on an idle core, once per
worker), and talks over two pipes with `multiprocessing.connection` framing (pickle).
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait

logger = logging.getLogger(__name__)

WARM_UP = ("rewards.accuracy", "warm_up")  # imported and called by each worker before it reports ready
START_TIMEOUT_S = 60.0  # for the first start; not counted in a batch's bound
FLUSH_S = 0.02  # a worker sends its finished results at least this often (and at the end of each chunk)
CHUNK_MAX = 32  # items per chunk: amortizes a round trip (~20 ms of work), small enough to balance and to lose
# Address-space cap per worker: a warm math-verify worker peaks at ~125 MB, so this only stops a runaway (a huge
# big-int power) from taking the machine's memory; past it, the item raises MemoryError and gets the default.
WORKER_MEMORY_BYTES = 2 << 30
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_MISSING = object()


def _bind_to_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this worker when its parent dies (PR_SET_PDEATHSIG), however it dies.

    A worker in its own session gets no hangup from the terminal, and one stuck in C code (a big-int power)
    notices neither a closed pipe nor an alarm, so without this it would outlive a SIGKILLed trainer. The signal
    follows the *thread* that started the worker: a pool started from a thread that then exits loses its
    workers, and replaces them on its next batch. Elsewhere this does nothing; the pipe close still ends a
    worker that is not stuck."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the prctl: no signal will come
        os._exit(0)


def serve(read_fd: int, write_fd: int, parent: int) -> None:
    """Worker loop. Receives ("run", batch, fn, default, items), ("cancel", batch) or None (exit); sends
    ("ready",) once, then per chunk ("items", batch, [(index, value), ...]) every FLUSH_S seconds and
    ("done", batch, [the rest]) at its end or when cancelled."""
    _bind_to_parent(parent)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):  # no `resource` (Windows), or a lower hard limit already set
        pass
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # else one "Timeout during ..." line per hostile item
    module, name = WARM_UP
    getattr(importlib.import_module(module), name)()
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    outbox.send(("ready",))
    try:
        while (msg := inbox.recv()) is not None:
            if msg[0] != "run":  # a cancel for a chunk already done
                continue
            _, batch, fn, default, items = msg
            results, flushed = [], time.monotonic()
            for index, args in items:
                if inbox.poll():  # while a chunk runs, only its cancel (or None) can arrive
                    if inbox.recv() is None:
                        return
                    break
                try:
                    results.append((index, fn(*args)))
                except Exception:
                    results.append((index, default))
                if time.monotonic() - flushed > FLUSH_S:
                    outbox.send(("items", batch, results))
                    results, flushed = [], time.monotonic()
            outbox.send(("done", batch, results))
    except (EOFError, OSError):  # the parent went away
        return


class _Worker:
    """One worker process and its two pipes. Raises OSError (or MemoryError) when the process cannot start, e.g.
    at the process limit or out of memory; `_start_worker` turns that into None."""

    def __init__(self):
        fds: list[int] = []
        try:
            fds += os.pipe()
            fds += os.pipe()
            to_child_r, to_child_w, from_child_r, from_child_w = fds
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # find `rewards` as we do
            code = f"from rewards.pool import serve; serve({to_child_r}, {from_child_w}, {os.getpid()})"
            # Its own session: Ctrl-C and hangups from the terminal go to the trainer alone (a worker exits when
            # its pipe closes, or with its parent), and under the kernel's autogroup scheduling a worker gets its
            # own share of a busy machine's CPU instead of splitting the trainer's with the other workers.
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(to_child_r, from_child_w), env=env, start_new_session=True
            )
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        os.close(to_child_r)
        os.close(from_child_w)
        self.outbox = Connection(to_child_w, readable=False)
        self.conn = Connection(from_child_r, writable=False)
        self.ready = False
        self.batch: int | None = None  # the batch of its chunk in flight
        self.kill_at: float | None = None  # set when that chunk was cancelled

    def send(self, msg) -> bool:
        try:
            self.outbox.send(msg)
            return True
        except OSError:
            return False

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.outbox.close()
        self.conn.close()


def _start_worker() -> _Worker | None:
    """A new worker, or None (logged) when the system cannot start one: a reward must not crash training."""
    try:
        return _Worker()
    except (OSError, MemoryError, subprocess.SubprocessError) as e:
        logger.error("rewards: could not start a math-verify worker: %r", e)
        return None


class BoundedPool:
    """`workers` processes that map a picklable function over items under a per-batch wall-clock bound.

    Started lazily (on the first `map`) and reused; `close()` runs at interpreter exit. One `map` at a time (a
    lock); a pool inherited by a forked child is left to its parent, the child starts its own.
    """

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"BoundedPool needs at least one worker, got {workers}")
        self.size = workers
        self.broken = False
        self._workers: list[_Worker] = []
        self._batch = 0
        self._pid = os.getpid()
        self._lock = threading.Lock()
        atexit.register(self.close)

    def start(self) -> bool:
        """Start the workers unless this process has them (up to START_TIMEOUT_S, outside any batch's bound);
        False when none can start."""
        with self._lock:
            return self._started()

    def map(self, fn, items: list[tuple], batch_timeout: float, default, stuck_after: float) -> list | None:
        """`[fn(*args) for args in items]`, returned within about `batch_timeout` seconds of the call.

        Items not finished by the deadline, or whose worker died, hold `default` (as do those whose `fn`
        raised). A worker still busy `stuck_after` seconds after its chunks were cancelled is killed and
        replaced. The pool's first start is waited for outside the bound. Returns None when no worker can be
        started at all; the caller then scores in-process.
        """
        with self._lock:
            if not self._started():
                return None
            deadline = time.monotonic() + batch_timeout
            self._batch += 1
            batch, values, todo = self._batch, [_MISSING] * len(items), deque(self._chunks(len(items)))
            while True:
                self._reap(time.monotonic())
                for w in list(self._workers):
                    self._dispatch(w, batch, fn, default, items, todo)
                now = time.monotonic()
                if now >= deadline or not self._workers or not (todo or any(w.batch == batch for w in self._workers)):
                    break
                wake = min([deadline] + [w.kill_at for w in self._workers if w.kill_at is not None])
                ready_conns = wait([w.conn for w in self._workers], timeout=max(0.0, wake - now))
                for w in list(self._workers):
                    if w.conn in ready_conns:
                        self._drain(w, batch, values)
            for w in self._workers:
                if w.batch == batch:
                    w.kill_at = time.monotonic() + stuck_after
                    w.send(("cancel", batch))
            return [default if v is _MISSING else v for v in values]

    def close(self) -> None:
        """Ask this process's workers to exit, then kill whichever is still busy after a second."""
        if os.getpid() != self._pid:
            return
        for w in self._workers:
            w.send(None)
        deadline = time.monotonic() + 1.0
        for w in self._workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            w.kill()
        self._workers = []

    def _chunks(self, n: int) -> list[list[int]]:
        size = max(1, min(CHUNK_MAX, math.ceil(n / (self.size * 8))))  # ~8 chunks per worker balance the load
        return [list(range(i, min(i + size, n))) for i in range(0, n, size)]

    def _dispatch(self, w: _Worker, batch: int, fn, default, items, todo: deque) -> None:
        """One chunk to `w` if it is idle. One at a time: a send then never blocks on a worker stuck mid-chunk."""
        if not (todo and w.ready and w.batch is None):
            return
        chunk = todo.popleft()
        if w.send(("run", batch, fn, default, [(i, items[i]) for i in chunk])):
            w.batch = batch
        else:  # it died between batches: replaced, and the chunk goes back to the queue
            todo.appendleft(chunk)
            self._replace(w)

    def _drain(self, w: _Worker, batch: int | None, values: list) -> None:
        """Read everything `w` has sent so far; results of an earlier (abandoned) batch are dropped."""
        while True:
            try:
                msg = w.conn.recv()
            except (EOFError, OSError):
                self._lost(w)
                return
            if msg[0] == "ready":
                w.ready = True
            else:
                if msg[1] == batch:
                    for index, value in msg[2]:
                        values[index] = value
                if msg[0] == "done":
                    w.batch, w.kill_at = None, None
            if not w.conn.poll():
                return

    def _reap(self, now: float) -> None:
        for w in list(self._workers):
            if w.kill_at is not None and now >= w.kill_at and w.conn.poll():
                # Its "done" may be waiting unread since the last batch: it finished in time, it is not stuck.
                self._drain(w, None, [])
            if w in self._workers and w.kill_at is not None and now >= w.kill_at:
                logger.warning("rewards: a verify worker stayed busy past its batch (stuck in C code?); replaced")
                self._replace(w)

    def _lost(self, w: _Worker) -> None:
        """A worker exited. Mid-batch (crash, OOM kill): its unfinished items keep the default and it is replaced.
        Before it ever got ready (e.g. an import error): dropped, not retried, so a broken setup cannot loop."""
        if w.ready:
            code = w.proc.poll()
            logger.warning("rewards: a verify worker exited (code %s); its unfinished items keep the default", code)
            self._replace(w)
        else:
            logger.error("rewards: a verify worker failed to start (exit code %s)", w.proc.poll())
            w.kill()
            self._workers.remove(w)

    def _replace(self, w: _Worker) -> None:
        """Kill `w` and put a new worker in its place; if none can start, the pool goes on one worker short (with
        none left, the next batch starts it afresh, as the first one did)."""
        w.kill()
        new = _start_worker()
        if new is None:
            self._workers.remove(w)
        else:
            self._workers[self._workers.index(w)] = new

    def _started(self) -> bool:
        if os.getpid() != self._pid:
            self._workers, self._pid = [], os.getpid()
        return bool(self._workers) or (not self.broken and self._first_start())

    def _first_start(self) -> bool:
        """Start the workers and wait (up to START_TIMEOUT_S) until all are ready; False, and serial scoring
        from then on, if none could start."""
        self._workers = [w for w in (_start_worker() for _ in range(self.size)) if w is not None]
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._workers and not all(w.ready for w in self._workers):
            starting = [w for w in self._workers if not w.ready]
            ready_conns = wait([w.conn for w in starting], timeout=max(0.0, deadline - time.monotonic()))
            if not ready_conns:
                break
            for w in starting:
                if w.conn in ready_conns:
                    self._drain(w, 0, [])
        if any(w.ready for w in self._workers):
            return True
        logger.error("rewards: no math-verify worker could start; scoring in-process from now on")
        for w in self._workers:
            w.kill()
        self._workers, self.broken = [], True
        return False


_POOLS: dict[int, BoundedPool] = {}


def get_pool(workers: int) -> BoundedPool:
    """The process-wide pool of this size, so several rewards share workers instead of each starting its own."""
    if workers not in _POOLS:
        _POOLS[workers] = BoundedPool(workers)
    return _POOLS[workers]
