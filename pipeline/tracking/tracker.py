"""MLflow tracking: one MLflow run per pipeline run; stages log prefixed metrics and tags.

Choices (documented in the README):
- Stages are *tagged steps* of one run, not nested runs: metrics are prefixed by what produced
  them (``train/loss``, ``dev/accuracy``, ``test/adapter/accuracy``) and each stage sets
  ``stage.<name>`` = ran|cached. A resumed or re-run pipeline continues the same MLflow run (its
  id is kept in ``<run_dir>/mlflow_run.json``).
- Default store: ``sqlite:///<output_dir>/mlflow.db`` (the file store is in maintenance mode),
  artifacts in ``<output_dir>/mlartifacts``;
  the first process creates the schema under a file lock, so parallel array tasks do not race.
- Only rank 0 logs. An http(s) tracking URI is checked (GET /health) before anything runs.
- Slurm array tasks tag their run with the array job and task ids, so a sweep is one view.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..core.config import PipelineConfig
from ..core.files import write_json_atomic
from ..core.stage import Stage

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run.json"
ARTIFACT_DIR = "mlartifacts"  # the sqlite store's artifacts, next to mlflow.db
SECRET_WORDS = ("token", "password", "passwd", "secret", "key", "credential", "apikey")
REDACTED = "***"


class TrackingError(RuntimeError):
    """The tracking server cannot be used; the message names the URI."""


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def is_secret_key(key: str) -> bool:
    """Whether a key names a secret: one of its ``_``/``-`` separated words is a secret word
    (``hub_token``, ``api_key``), not merely contains one (``num_virtual_tokens``)."""
    words = key.lower().replace("-", "_").split("_")
    return any(word in SECRET_WORDS for word in words)


def redact(data: Any, key: str = "") -> Any:
    """Replace values whose key looks secret (token, password, key, ...) with ***, and the
    user:password part of URIs."""
    if isinstance(data, dict):
        return {k: redact(v, k) for k, v in data.items()}
    if data is not None and is_secret_key(key):
        return REDACTED
    if isinstance(data, str) and "://" in data and "@" in data.split("://", 1)[1].split("/")[0]:
        scheme, rest = data.split("://", 1)
        return f"{scheme}://{REDACTED}@{rest.split('@', 1)[1]}"
    return data


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tracking_uri(config: PipelineConfig) -> str:
    if config.tracking.uri:
        return config.tracking.uri
    db = (Path(config.output_dir) / "mlflow.db").resolve()
    return f"sqlite:///{db}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds, not a hang mid-training) when an http(s) server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            if response.status != 200:
                raise TrackingError(f"MLflow server {uri} answered /health with {response.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({exc}); start it or fix tracking.uri"
        ) from None


def ensure_sqlite_schema(uri: str) -> None:
    """Create the sqlite store once, under a file lock (parallel first use races otherwise)."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".mlflow.db.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        import mlflow

        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def use_experiment(uri: str, name: str) -> None:
    """Make ``name`` the active experiment of ``uri``. On the default sqlite store a new
    experiment keeps its artifacts beside the database (``<output_dir>/mlartifacts``), not in
    ``./mlruns`` of whatever directory the first run started in."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
        root = Path(uri.removeprefix("sqlite:///")).parent / ARTIFACT_DIR
        # a parallel array task may have created it first
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            mlflow.create_experiment(name, artifact_location=root.resolve().as_uri())
    mlflow.set_experiment(name)


def slurm_tags(stage: Stage) -> dict[str, str]:
    """Which Slurm job ran ``stage`` (``slurm.<stage>.job_id``). The distributed stage's (train's)
    array ids are the run's ``slurm.array_job_id`` / ``slurm.array_task_id``: with `pipeline
    submit` the evaluate array continues the run later and must not replace them."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return {}
    tags = {f"slurm.{stage.name}.job_id": env["SLURM_JOB_ID"]}
    if stage.distributed and "SLURM_ARRAY_JOB_ID" in env:
        tags["slurm.array_job_id"] = env["SLURM_ARRAY_JOB_ID"]
        tags["slurm.array_task_id"] = env.get("SLURM_ARRAY_TASK_ID", "")
    return tags


class Tracker:
    """Logs one pipeline run; a no-op on ranks other than 0."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.enabled = is_rank_zero()
        self.uri = tracking_uri(config)
        self.run_id: str | None = None

    def start(self) -> Tracker:
        if not self.enabled:
            return self
        check_reachable(self.uri)
        ensure_sqlite_schema(self.uri)
        import mlflow

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        use_experiment(self.uri, self.config.tracking.experiment)
        id_file = self.config.run_dir / RUN_ID_FILE
        previous = json.loads(id_file.read_text()).get("run_id") if id_file.is_file() else None
        if previous and not self._run_exists(previous):
            previous = None
        run = mlflow.start_run(
            run_id=previous,
            run_name=None if previous else self.display_name,
            log_system_metrics=True,
        )
        self.run_id = run.info.run_id
        write_json_atomic(id_file, {"run_id": self.run_id, "tracking_uri": self.uri})
        if previous is None:
            self._log_params()
        mlflow.set_tags(self._tags())
        return self

    @property
    def display_name(self) -> str:
        variant = self.config.variant
        return f"{self.config.name}/{variant}" if variant else self.config.name

    def _run_exists(self, run_id: str) -> bool:
        import mlflow

        try:
            mlflow.MlflowClient().get_run(run_id)
            return True
        except mlflow.exceptions.MlflowException:
            return False

    def _log_params(self) -> None:
        import mlflow

        params = flatten(redact(self.config.to_dict()))
        params.update({"config_hash": self.config.config_hash, "git_commit": git_commit()})
        mlflow.log_params({k: "" if v is None else v for k, v in params.items()})

    def _tags(self) -> dict[str, str]:
        tags = {
            "pipeline.run_name": self.config.name,
            "pipeline.task": self.config.task.name,
            "pipeline.method": self.config.method.method,
            "pipeline.config_hash": self.config.config_hash,
        }
        if self.config.variant:
            tags["pipeline.variant"] = self.config.variant
        return tags

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.enabled and self.run_id:
            import mlflow

            clean = {k.replace("/", "."): float(v) for k, v in metrics.items()}
            mlflow.log_metrics(clean, step=step)

    def stage_done(self, stage: Stage, status: str, path: Path) -> None:
        """Tag the stage ran|cached; when it ran, log the outputs it declares as tracked."""
        if not (self.enabled and self.run_id):
            return
        import mlflow

        mlflow.set_tag(f"stage.{stage.name}", status)
        if status != "ran":
            return
        mlflow.set_tags(slurm_tags(stage))
        for name, artifact_dir in stage.tracked.items():
            target = path / name
            if target.is_dir():
                mlflow.log_artifacts(str(target), artifact_path=artifact_dir)
            elif target.is_file():
                mlflow.log_artifact(str(target), artifact_path=artifact_dir)

    def log_resolved_config(self) -> None:
        if self.enabled and self.run_id:
            import mlflow

            mlflow.log_dict(redact(self.config.to_dict()), "config.resolved.json")

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            import mlflow

            mlflow.end_run(status=status)
