"""Tracking calls that never block training: a journal on disk and one background sender.

Every call the tracker makes once the run has started (metrics, tags, artifacts, the run's end)
is appended to ``<run_dir>/tracking_journal.jsonl`` and sent, in order, by one background
thread. When the server does not answer, or answers that it cannot take the call now (408,
429, 5xx: a shared server behind a proxy under load), training goes on: the sender warns once,
retries with back-off (``retry_seconds``, doubling up to 8×) and replays the backlog when the
server takes calls again. A call the server rejects as malformed (any other 4xx) is not sent
again: a warning names its points and the server's reason, and it is kept in
``tracking_rejected.jsonl``. What is still unsent when the run ends (after
``tracking.flush_timeout_s``) stays in the journal, and the next `pipeline run` of the same
run directory sends it. A metric point the journal already holds for the same stage attempt,
key and step (a resumed run repeating the steps after its checkpoint) is not logged again.

At every start the journal is compacted: delivered calls are dropped, leaving one line with the
last step logged per stage attempt and key (what the repeat check needs) and what is unsent.
System metrics (MLflow's own monitor thread) do not go through the journal: during an outage
they are lost.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..util.files import read_json, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

JOURNAL = "tracking_journal.jsonl"
SENT = "tracking_sent.json"  # {"run_id": ..., "seq": the last journal entry the server has}
REJECTED = "tracking_rejected.jsonl"  # calls the server refused as malformed, with its reason
MAX_POINTS_PER_BATCH = 900  # MLflow's log_batch takes at most 1000 metrics
RETRY_LATER = {408, 429}  # and every 5xx: the server cannot take the call now
TOO_MANY = re.compile(r"too many (\d{3}) error responses")
MAX_BACKOFF = 8  # retries wait retry_seconds × 1, 2, 4, 8, 8, …


class Outbox:
    """Queue MLflow calls for ``run_id`` on ``uri``; send them from a background thread."""

    def __init__(self, run_dir: Path, uri: str, run_id: str, retry_seconds: float = 5.0) -> None:
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self.journal, self.sent_file = run_dir / JOURNAL, run_dir / SENT
        self.uri, self.run_id, self.retry_seconds = uri, run_id, retry_seconds
        self._cond = threading.Condition()
        self._pending: deque[dict[str, Any]] = deque()
        self._last_step: dict[tuple[str, str], int] = {}  # (scope, key) → last step logged
        self._seq = 0
        self._down_since: float | None = None
        self._failures = 0
        self._unrecorded = False  # a sent-marker write failed (warned once)
        self._closing = False
        self.replayed = self._load()
        self._thread = threading.Thread(target=self._send_loop, name="tracking-outbox", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the caller's side
    def log_metrics(self, metrics: dict[str, float], step: int | None, scope: str) -> None:
        """Queue metric points; skip those this stage attempt already logged at ``step``."""
        now = int(time.time() * 1000)
        points = []
        for key, value in metrics.items():
            if step is not None and step <= self._last_step.get((scope, key), -1):
                continue  # logged before: a resumed run repeats the steps after its checkpoint
            points.append([key, float(value), 0 if step is None else step, now])
            if step is not None:
                self._last_step[(scope, key)] = step
        if points:
            self._put({"op": "metrics", "scope": scope, "points": points})

    def set_tags(self, tags: dict[str, str]) -> None:
        if tags:
            self._put({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifacts(self, path: Path, artifact_path: str) -> None:
        self._put({"op": "artifacts", "path": str(path), "artifact_path": artifact_path})

    def close(self, status: str, timeout: float) -> int:
        """Queue the run's end, wait up to ``timeout`` s for the backlog; return what is left."""
        self._put({"op": "end", "status": status})
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        left = len(self._pending)
        if left:
            log.warning(
                "%d tracking call(s) not delivered to %s within %.0f s; they stay in %s and the "
                "next `pipeline run` of this config sends them",
                left,
                self.uri,
                timeout,
                self.journal,
            )
        return left

    def _put(self, entry: dict[str, Any]) -> None:
        with self._cond:
            self._seq += 1
            entry = {"seq": self._seq, "run_id": self.run_id, **entry}
            with open(self.journal, "a") as f:
                f.write(json.dumps(entry) + "\n")
            self._pending.append(entry)
            self._cond.notify_all()

    # ------------------------------------------------------------------ replay
    def _load(self) -> int:
        """Read the journal: remember the steps logged, queue what the server never got, and
        compact the file to just that."""
        if not self.journal.is_file():
            return 0
        sent = read_json(self.sent_file) if self.sent_file.is_file() else {}
        sent_seq = sent.get("seq", 0) if sent.get("run_id") == self.run_id else 0
        for line in self.journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: it was never sent
                continue
            self._seq = max(self._seq, entry["seq"])
            if entry.get("run_id") != self.run_id:  # another server's run (tracking.uri moved)
                continue
            if entry["op"] == "steps":  # a compacted journal's memory of the steps logged
                self._last_step.update({(s, k): step for s, k, step in entry["steps"]})
            elif entry["op"] == "metrics":
                for key, _, step, _ in entry["points"]:
                    known = self._last_step.get((entry["scope"], key), -1)
                    self._last_step[(entry["scope"], key)] = max(known, step)
            if entry["seq"] > sent_seq and entry["op"] not in ("end", "steps"):  # ends itself
                self._pending.append(entry)
        self._compact()
        if self._pending:
            log.info("sending %d tracking call(s) a previous run left unsent", len(self._pending))
        return len(self._pending)

    def _compact(self) -> None:
        """Rewrite the journal as one line of steps logged plus the unsent calls."""
        steps = [[scope, key, step] for (scope, key), step in sorted(self._last_step.items())]
        memory = {"seq": self._seq, "run_id": self.run_id, "op": "steps", "steps": steps}
        lines = [memory, *self._pending] if steps else list(self._pending)
        write_text_atomic(self.journal, "".join(json.dumps(e) + "\n" for e in lines))

    # ------------------------------------------------------------------ the sender thread
    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = self._next_batch()
            try:
                self._send(batch)
            except Exception as exc:  # the server is down, busy, or refuses this call
                if self._retry_later(exc):
                    with self._cond:
                        self._cond.wait(self._backoff())
                    continue
                self._reject(batch, exc)
            self._delivered(batch)

    def _next_batch(self) -> list[dict[str, Any]]:
        """The first pending entry, joined by the metric entries right after it (one request)."""
        batch = [self._pending[0]]
        if batch[0]["op"] == "metrics":
            count = len(batch[0]["points"])
            for entry in list(self._pending)[1:]:
                if entry["op"] != "metrics" or count + len(entry["points"]) > MAX_POINTS_PER_BATCH:
                    break
                batch.append(entry)
                count += len(entry["points"])
        return batch

    def _send(self, batch: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric, RunTag

        entry = batch[0]
        if entry["op"] == "metrics":
            points = [p for e in batch for p in e["points"]]
            metrics = [Metric(k.replace("/", "."), v, ts, step) for k, v, step, ts in points]
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
        elif entry["op"] == "tags":
            tags = [RunTag(k, v) for k, v in entry["tags"].items()]
            self.client.log_batch(self.run_id, tags=tags, synchronous=True)
        elif entry["op"] == "artifacts":
            path = Path(entry["path"])
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), entry["artifact_path"])
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path), entry["artifact_path"])
        elif entry["op"] == "end":
            self.client.set_terminated(self.run_id, entry["status"])

    def _retry_later(self, exc: Exception) -> bool:
        """True when the call may succeed later: no answer (the server is down), or 408, 429,
        5xx (busy); warns once per outage. False: the server refused the call itself."""
        status = http_status(exc)
        if status is not None and status not in RETRY_LATER and 400 <= status < 500:
            return False
        self._failures += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            reason = str(exc).splitlines()[0][:200]
            log.warning(
                "tracking server %s not taking calls (%s); training goes on, tracking calls are "
                "kept in %s and sent when it takes them again",
                self.uri,
                reason,
                self.journal,
            )
        return True

    def _backoff(self) -> float:
        return self.retry_seconds * min(2 ** (self._failures - 1), MAX_BACKOFF)

    def _reject(self, batch: list[dict[str, Any]], exc: Exception) -> None:
        """The server refused ``batch`` as malformed: say which calls and why, keep them."""
        reason = str(exc).splitlines()[0][:300]
        with open(self.journal.parent / REJECTED, "a") as f:
            f.write(json.dumps({"status": http_status(exc), "reason": reason, "calls": batch}))
            f.write("\n")
        log.warning(
            "tracking server refused %s as malformed (HTTP %s: %s); not sent again, kept in %s",
            describe(batch),
            http_status(exc),
            reason,
            self.journal.parent / REJECTED,
        )

    def _delivered(self, batch: list[dict[str, Any]]) -> None:
        with self._cond:
            for _ in batch:
                self._pending.popleft()
            backlog = len(self._pending)
        self._failures = 0
        try:
            write_json_atomic(self.sent_file, {"run_id": self.run_id, "seq": batch[-1]["seq"]})
        except OSError as exc:  # a full disk: the main thread reports it; a resume resends
            if not self._unrecorded:
                log.warning("could not record what was sent in %s: %s", self.sent_file, exc)
            self._unrecorded = True
        if self._down_since is not None:
            log.info(
                "tracking server %s is back after %.0f s; sending the backlog (%d call(s) left)",
                self.uri,
                time.monotonic() - self._down_since,
                backlog,
            )
            self._down_since = None


def http_status(exc: Exception) -> int | None:
    """The HTTP status an MLflow call failed with; None when there was no answer. MLflow's
    client retries 408/429/5xx itself and then reports INTERNAL_ERROR (500) with urllib3's
    "too many 429 error responses": the status the server gave is read from that."""
    gave_up = TOO_MANY.search(str(exc))
    if gave_up:
        return int(gave_up.group(1))
    status = getattr(exc, "get_http_status_code", None)
    return None if status is None else status()


def describe(batch: list[dict[str, Any]]) -> str:
    """A batch in words: its metric keys with their step ranges, or its operation."""
    if batch[0]["op"] != "metrics":
        return f"a {batch[0]['op']} call"
    steps: dict[str, list[int]] = {}
    for entry in batch:
        for key, _, step, _ in entry["points"]:
            steps.setdefault(key, []).append(step)
    keys = ", ".join(f"{k} steps {min(v)}–{max(v)}" for k, v in steps.items())
    return f"{sum(map(len, steps.values()))} metric point(s) ({keys})"
