"""The preemption contract, in one place: a signal → every rank checkpoints → exit code 3 →
re-running the same command resumes.

- In a training process, :class:`StopFlag` turns SIGTERM / SIGUSR1 / SIGINT (Ctrl-C) into a
  flag the train loop checks at each step boundary; after the checkpoint it raises
  :class:`Preempted`, rank 0 having left a marker file for whoever launched it.
- A launcher (the runner starting torchrun, the Slurm task) runs its child with
  :func:`run_forwarding_signals`: the signal goes to the child's process group once, and the
  marker turns the child's exit into :class:`Preempted` in the launcher too.
- Outside the train loop, SIGINT / SIGTERM raise :class:`Interrupted`: the stage running is
  abandoned without partial output.
- ``pipeline`` exits with :data:`EXIT_PREEMPTED` (3) on :class:`Preempted` and
  :class:`Interrupted`, with one line saying what to do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # Ctrl-C: like a preemption
EXIT_PREEMPTED = 3
PREEMPTED_MARKER = "preempted.json"  # written by rank 0 of a stage stopped by a signal


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint; re-running resumes it."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, step: int, checkpoint: str) -> None:
        super().__init__(
            f"training stopped by a signal at step {step}; checkpoint {checkpoint} saved. "
            "Re-run the same command to resume."
        )
        self.step, self.checkpoint = step, checkpoint


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM outside the train loop: the running stage is abandoned (its work directory
    removed, the MLflow run marked KILLED); finished stages stay."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, signum: int) -> None:
        super().__init__(
            f"stopped by {signal.Signals(signum).name}; finished stages are kept: re-run the same "
            "command to continue"
        )


@contextlib.contextmanager
def interrupting_on_stop_signals() -> Iterator[None]:
    """Within: SIGINT/SIGTERM raise :class:`Interrupted` (the train loop's StopFlag overrides
    this while it runs). Outside the main thread, a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopFlag:
    """Set by SIGTERM/SIGUSR1; the loop checkpoints and stops at the next step boundary."""

    def __init__(self) -> None:
        self.raised = False
        self.previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def _handle(self, signum, frame) -> None:
        log.warning("received %s: checkpointing after this step", signal.Signals(signum).name)
        self.raised = True

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def mark_preempted(directory: Path, step: int, checkpoint: Path) -> Preempted:
    """Leave the marker a launcher reads, and return the exception to raise."""
    from ..util.files import write_json_atomic

    write_json_atomic(directory / PREEMPTED_MARKER, {"step": step, "checkpoint": str(checkpoint)})
    return Preempted(step, str(checkpoint))


def clear_marker(directory: Path) -> None:
    (directory / PREEMPTED_MARKER).unlink(missing_ok=True)


def raise_if_marked(directory: Path) -> None:
    """Raise the child's :class:`Preempted` in its launcher (and consume the marker)."""
    marker = directory / PREEMPTED_MARKER
    if marker.is_file():
        stopped = json.loads(marker.read_text())
        marker.unlink()
        raise Preempted(stopped["step"], stopped["checkpoint"])


def run_forwarding_signals(
    command: list[str],
    env: dict[str, str],
    forward_as: dict[int, int] | None = None,
    stderr_tap: Callable[[str], None] | None = None,
) -> tuple[int, bool]:
    """Run ``command`` in its own session and wait; SIGTERM / SIGUSR1 received meanwhile go to
    its process group exactly once (mapped by ``forward_as``, default: SIGTERM for both — torchrun
    turns SIGTERM into a graceful stop of its workers). ``stderr_tap`` sees every line the child
    writes to stderr (which still goes to this process's stderr). Returns (exit code, signalled)."""
    forward_as = forward_as or {sig: signal.SIGTERM for sig in STOP_SIGNALS}
    stderr = subprocess.PIPE if stderr_tap else None
    proc = subprocess.Popen(command, env=env, start_new_session=True, stderr=stderr, text=True)
    relay = None
    if stderr_tap:
        relay = threading.Thread(target=_relay, args=(proc.stderr, stderr_tap), daemon=True)
        relay.start()
    signalled = False

    def forward(signum, frame) -> None:
        nonlocal signalled
        signalled = True
        log.warning("received %s: asking the ranks to checkpoint", signal.Signals(signum).name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, forward_as[signum])

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        returncode = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if relay:
        relay.join()
    return returncode, signalled


def _relay(stream: IO[str], tap: Callable[[str], None]) -> None:
    """Copy ``stream`` to this process's stderr line by line, showing each line to ``tap``."""
    for line in stream:
        sys.stderr.write(line)
        sys.stderr.flush()
        tap(line)
