"""Tracking calls that never block training: a journal on disk and one background sender.

Every call the tracker makes once the run has started (metrics, tags, artifacts, the run's end)
is appended to ``<run_dir>/tracking_journal.jsonl`` and sent, in order, by one background
thread. When the server does not answer, training goes on: the sender warns once, retries every
``retry_seconds`` and replays the backlog when the server is back. What is still unsent when the
run ends (after ``tracking.flush_timeout_s``) stays in the journal, and the next `pipeline run`
of the same run directory sends it. A metric point the journal already holds for the same stage
attempt, key and step (a resumed run repeating the steps after its checkpoint) is not logged
again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..core.files import read_json, write_json_atomic

log = logging.getLogger(__name__)

JOURNAL = "tracking_journal.jsonl"
SENT = "tracking_sent.json"  # {"run_id": ..., "seq": the last journal entry the server has}
MAX_POINTS_PER_BATCH = 900  # MLflow's log_batch takes at most 1000 metrics


class Outbox:
    """Queue MLflow calls for ``run_id`` on ``uri``; send them from a background thread."""

    def __init__(self, run_dir: Path, uri: str, run_id: str, retry_seconds: float = 5.0) -> None:
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self.journal, self.sent_file = run_dir / JOURNAL, run_dir / SENT
        self.uri, self.run_id, self.retry_seconds = uri, run_id, retry_seconds
        self._cond = threading.Condition()
        self._pending: deque[dict[str, Any]] = deque()
        self._seen: set[tuple[str, str, int]] = set()
        self._seq = 0
        self._down_since: float | None = None
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
            if step is not None and (scope, key, step) in self._seen:
                continue
            points.append([key, float(value), 0 if step is None else step, now])
            if step is not None:
                self._seen.add((scope, key, step))
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
        """Read the journal: remember the points logged, queue what the server never got."""
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
            if entry["op"] == "metrics":
                self._seen.update((entry["scope"], k, s) for k, _, s, _ in entry["points"])
            if entry["seq"] > sent_seq and entry["op"] != "end":  # this run ends itself
                self._pending.append(entry)
        if self._pending:
            log.info("sending %d tracking call(s) a previous run left unsent", len(self._pending))
        return len(self._pending)

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
            except Exception as exc:  # the server is down, or refuses this call
                if not self._failed(exc, batch):
                    with self._cond:
                        self._cond.wait(self.retry_seconds)
                    continue
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

    def _failed(self, exc: Exception, batch: list[dict[str, Any]]) -> bool:
        """Warn once per outage; True when the server refused the call itself (drop it)."""
        status = getattr(exc, "get_http_status_code", lambda: 500)()
        if 400 <= status < 500:
            log.warning("tracking server refused a %s call (%s); skipped", batch[0]["op"], exc)
            return True
        if self._down_since is None:
            self._down_since = time.monotonic()
            reason = str(exc).splitlines()[0][:200]
            log.warning(
                "tracking server %s not answering (%s); training goes on, tracking calls are kept "
                "in %s and sent when it is back",
                self.uri,
                reason,
                self.journal,
            )
        return False

    def _delivered(self, batch: list[dict[str, Any]]) -> None:
        with self._cond:
            for _ in batch:
                self._pending.popleft()
            backlog = len(self._pending)
        write_json_atomic(self.sent_file, {"run_id": self.run_id, "seq": batch[-1]["seq"]})
        if self._down_since is not None:
            log.info(
                "tracking server %s is back after %.0f s; sending the backlog (%d call(s) left)",
                self.uri,
                time.monotonic() - self._down_since,
                backlog,
            )
            self._down_since = None
