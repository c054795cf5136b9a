"""Encoding chunks of rows on several processes, results in the order the chunks came.

Each worker process runs the tokenizer on one thread (``TOKENIZERS_PARALLELISM=false``), so
``num_proc`` processes use ``num_proc`` cores; at most two chunks per worker are in flight, so
memory is bounded by the chunk size, not by the data.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue
import signal
import sys
from collections import deque
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from .data import Encoder
from .encoded import record_batch

IN_FLIGHT_PER_WORKER = 2
KEEP_SOURCE = ("dev", "test")  # splits whose predictions are joined back to the user's file
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal sent to us when our parent dies
PARENT_CHECK_SECONDS = 1.0  # where prctl is missing, an idle worker checks its parent this often


class WorkerDied(RuntimeError):
    """A tokenize worker process ended without handing back its chunk (killed, out of memory)."""


def encode_chunk(encoder: Encoder, split: str, rows: list[dict], source: str) -> pa.RecordBatch:
    """One chunk of a split's rows as an Arrow batch (dev and test keep each row's line and
    fields, to join predictions back to the user's file)."""
    return record_batch(encoder.encode(rows, source, keep_source=split in KEEP_SOURCE))


def process_count(num_proc: int | None, rows: int, chunk_rows: int) -> int:
    """Encoding processes: ``num_proc`` (default: the threads this process may use, see
    ``util/cpus.py``), no more than there are chunks of rows."""
    from ..util.cpus import thread_count

    return max(1, min(num_proc or thread_count()[0], -(-rows // chunk_rows)))


@contextlib.contextmanager
def one_tokenizer_thread() -> Iterator[None]:
    """The fast tokenizer on one thread per process while inside (set before forking, it also
    keeps ``tokenizers`` from warning about a fork after its thread pool started)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM")
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def die_with_parent(parent: int) -> bool:
    """Have the kernel SIGKILL this process when ``parent`` dies (Linux's PR_SET_PDEATHSIG), so
    a ``kill -9`` of the run leaves no worker blocked on its queue. False where prctl is not
    available (the worker then checks its parent while it waits)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
    return True


def _next_task(tasks: Any, parent: int, watched_by_kernel: bool) -> Any:
    """The next task; a worker whose parent is gone exits instead of waiting for ever."""
    if watched_by_kernel:
        return tasks.get()
    while True:
        try:
            return tasks.get(timeout=PARENT_CHECK_SECONDS)
        except queue.Empty:
            if os.getppid() != parent:
                os._exit(1)


def _work(encoder: Encoder, tasks: Any, results: Any, parent: int) -> None:
    """A worker (started inside ``one_tokenizer_thread``: its tokenizer runs on one thread):
    encode chunks from the task queue until None. It dies on SIGTERM (not by the
    run's handler it inherited) and with its parent, and leaves Ctrl-C to the main process,
    which stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watched = die_with_parent(parent)
    while (task := _next_task(tasks, parent, watched)) is not None:
        number, chunk = task
        try:
            results.put((number, True, encode_chunk(encoder, *chunk)))
        except Exception as exc:  # a DataError naming the file and line, most likely
            results.put((number, False, exc))


class Workers:
    """``count`` encoding processes taking chunks from one queue as they free up; results are
    handed back in the order the chunks were given. The main process only ever waits with a
    timeout and checks the workers are alive, and stops them all (killed, unless they finished)
    when it leaves, so a worker that dies cannot hang the run."""

    def __init__(self, encoder: Encoder, count: int) -> None:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        self.tasks, self.results = context.Queue(), context.Queue()
        self.processes = [
            context.Process(
                target=_work, args=(encoder, self.tasks, self.results, os.getpid()), daemon=True
            )
            for _ in range(count)
        ]
        for process in self.processes:
            process.start()
        self.given = self.taken = 0
        self.ready: dict[int, pa.RecordBatch] = {}

    def give(self, chunk: tuple) -> None:
        self.tasks.put((self.given, chunk))
        self.given += 1

    def take(self) -> pa.RecordBatch:
        """The result of the oldest chunk not yet taken (its error re-raised)."""
        while self.taken not in self.ready:
            try:
                number, ok, value = self.results.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in self.processes if not p.is_alive()]
                if dead:
                    raise WorkerDied(_death_notice(dead[0].pid, dead[0].exitcode)) from None
                continue
            if not ok:
                raise value
            self.ready[number] = value
        self.taken += 1
        return self.ready.pop(self.taken - 1)

    def stop(self, finished: bool) -> None:
        """``finished``: let them exit (killed if not gone after 10 s); else kill them now."""
        if finished:
            for _ in self.processes:
                self.tasks.put(None)
            for process in self.processes:
                process.join(timeout=10)
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join()
        self.tasks.cancel_join_thread()


def _death_notice(pid: int | None, exit_code: int | None) -> str:
    if exit_code is not None and exit_code < 0:
        how = f"was killed by signal {-exit_code} ({signal.strsignal(-exit_code)})"
    else:
        how = f"exited with code {exit_code}"
    return (
        f"a tokenize worker (pid {pid}) {how} before it finished its rows (out of memory, or "
        "stopped by hand?); the stage left nothing behind: run the same command again"
    )


def encode_in_order(
    encoder: Encoder, chunks: Iterator[tuple[str, Any, list[dict], str]], num_proc: int
) -> Iterator[tuple[str, Any, pa.RecordBatch]]:
    """(split, positions, batch) for every (split, positions, rows, source) chunk, in order;
    ``num_proc`` > 1 encodes on that many worker processes (forked where the OS can)."""
    if num_proc <= 1:
        for split, positions, rows, source in chunks:
            yield split, positions, encode_chunk(encoder, split, rows, source)
        return
    workers = Workers(encoder, num_proc)
    pending: deque = deque()
    finished = False
    try:
        for split, positions, rows, source in chunks:
            workers.give((split, rows, source))
            pending.append((split, positions))
            if len(pending) >= IN_FLIGHT_PER_WORKER * num_proc:
                yield *pending.popleft(), workers.take()
        while pending:
            yield *pending.popleft(), workers.take()
        finished = True
    finally:  # also on an error or an interrupt: no worker outlives the stage
        workers.stop(finished)
