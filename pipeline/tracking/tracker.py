"""MLflow tracking: one MLflow run per pipeline run; stages log prefixed metrics and tags.

Choices (documented in the README):
- Stages are *tagged steps* of one run, not nested runs: metrics are prefixed by what produced
  them (``train/loss``, ``dev/accuracy``, ``test/adapter/accuracy``) and each stage sets
  ``stage.<name>`` = ran|cached. A resumed or re-run pipeline continues the same MLflow run (its
  id is kept in ``<run_dir>/mlflow_run.json``).
- Default store: ``sqlite:///<output_dir>/mlflow.db`` (the file store is in maintenance mode),
  artifacts in ``<output_dir>/mlartifacts``;
  the first process creates the schema under a file lock, so parallel array tasks do not race.
- Only rank 0 logs. An http(s) tracking URI is checked (GET /health) before anything runs;
  after the start, calls go through a journal and a background sender (outbox.py), so a server
  that dies mid-run costs no training time and loses no metrics.
- Slurm array tasks tag their run with the array job and task ids, so a sweep is one view.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ..core.config import PipelineConfig
from ..core.stage import Stage
from ..util.files import ensure_writable, read_json, write_json_atomic
from ..util.secrets import redact
from .outbox import Outbox
from .sqlite_store import StoreError, ensure_sqlite_store

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run.json"
ARTIFACT_DIR = "mlartifacts"  # the sqlite store's artifacts, next to mlflow.db
# per HTTP call: 2 retries 1 s and 2 s apart, 30 s to answer (the user's MLFLOW_HTTP_* win)
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingError(RuntimeError):
    """The tracking server cannot be used; the message names the URI."""


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


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


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``http://user:pw@host`` → (``http://host``, user, pw); other URIs unchanged."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    host = parts.netloc.rsplit("@", 1)[1]
    clean = urllib.parse.urlunsplit(parts._replace(netloc=host))
    user, password = (urllib.parse.unquote(x or "") for x in (parts.username, parts.password))
    return clean, user, password


def tracking_uri(config: PipelineConfig) -> str:
    """The MLflow URI without credentials. Credentials in ``tracking.uri`` (``user:pw@``) become
    MLflow's own ``MLFLOW_TRACKING_USERNAME`` / ``…PASSWORD`` (unless already set), so no URI
    this pipeline prints, logs or writes carries them."""
    if config.tracking.uri:
        uri, user, password = split_credentials(config.tracking.uri)
        if user:
            os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user)
            os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password or "")
        return uri
    db = (Path(config.output_dir) / "mlflow.db").resolve()
    return f"sqlite:///{db}"


def auth_headers() -> dict[str, str]:
    """MLflow's credentials from the environment as an HTTP header (what its client sends)."""
    env = os.environ
    if env.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"}
    if env.get("MLFLOW_TRACKING_USERNAME"):
        pair = f"{env['MLFLOW_TRACKING_USERNAME']}:{env.get('MLFLOW_TRACKING_PASSWORD', '')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    return {}


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds, not a hang mid-training) when an http(s) server does not answer, or
    a local store (``file:``, ``sqlite:``) cannot be written where the URI puts it."""
    if local_store_dir(uri) is not None:
        check_local_store(uri)
        return
    if not uri.startswith(("http://", "https://")):
        return
    request = urllib.request.Request(f"{uri.rstrip('/')}/health", headers=auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status != 200:
                raise TrackingError(f"MLflow server {uri} answered /health with {response.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({exc}); start it or fix tracking.uri"
        ) from None


def check_local_store(uri: str) -> None:
    """A ``file:`` or ``sqlite:`` store's directory can be made and written (nothing left)."""
    local = local_store_dir(uri)
    if local is None:
        return
    try:
        ensure_writable(local, create=False, what="tracking store directory")
    except PermissionError as exc:
        raise TrackingError(f"tracking.uri {uri}: {exc}") from None


def local_store_dir(uri: str) -> Path | None:
    """The directory a ``file:`` or ``sqlite:`` URI writes in; None for other URIs."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent
    if uri.startswith("file:"):
        return Path(urllib.parse.urlparse(uri).path or ".")
    return None


def ensure_sqlite_schema(uri: str) -> None:
    """A sqlite store exists complete, or is created whole (tracking/sqlite_store.py)."""
    from ..engine.models import cache_dir

    try:
        ensure_sqlite_store(uri, cache_dir())
    except StoreError as exc:
        raise TrackingError(str(exc)) from None


def use_experiment(uri: str, name: str) -> str:
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
    return mlflow.set_experiment(name).experiment_id


def quiet_http_retries(uri: str) -> None:
    """Bound how long one HTTP call to the server may take (MLflow's defaults retry for ~8
    minutes), unless the user chose; retries and the system-metrics thread stay quiet: the
    outbox says once that the server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)


def start_system_metrics(uri: str, run_id: str, resume: bool) -> Any:
    """CPU, memory, disk and network as ``system/*`` metrics, from MLflow's own monitor."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=uri)
    monitor.start()
    return monitor


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
    """Logs one pipeline run; a no-op on ranks other than 0.

    Starting the run (creating or resuming it, its params and tags) talks to the server directly
    and fails fast; everything after goes through the :class:`Outbox`, so a server that dies
    mid-run never stalls or kills training.
    """

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.enabled = is_rank_zero()
        self.uri = tracking_uri(config)
        self.run_id: str | None = None
        self.outbox: Outbox | None = None
        self.client: Any = None  # an MlflowClient on ``uri`` once started
        self._monitor: Any = None

    def start(self) -> Tracker:
        if not self.enabled:
            return self
        check_reachable(self.uri)
        ensure_sqlite_schema(self.uri)
        quiet_http_retries(self.uri)
        import mlflow

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        experiment_id = use_experiment(self.uri, self.config.tracking.experiment)
        self.client = client = mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        id_file = self.config.run_dir / RUN_ID_FILE
        previous = read_json(id_file).get("run_id") if id_file.is_file() else None
        if previous and not self._run_exists(client, previous):
            previous = None
        if previous:
            client.update_run(previous, status="RUNNING")
            self.run_id = previous
        else:
            self.run_id = client.create_run(experiment_id, run_name=self.display_name).info.run_id
            client.log_batch(self.run_id, params=self._params(), synchronous=True)
        write_json_atomic(id_file, {"run_id": self.run_id, "tracking_uri": self.uri})
        client.set_tag(self.run_id, "mlflow.source.name", "pipeline")
        self.outbox = Outbox(
            self.config.run_dir, self.uri, self.run_id, self.config.tracking.retry_seconds
        )
        self.outbox.set_tags(self._tags())
        self._monitor = start_system_metrics(self.uri, self.run_id, resume=previous is not None)
        return self

    @property
    def display_name(self) -> str:
        variant = self.config.variant
        return f"{self.config.name}/{variant}" if variant else self.config.name

    @staticmethod
    def _run_exists(client: Any, run_id: str) -> bool:
        import mlflow

        try:
            client.get_run(run_id)
            return True
        except mlflow.exceptions.MlflowException:
            return False

    def _params(self) -> list[Any]:
        from mlflow.entities import Param

        params = flatten(redact(self.config.to_dict()))
        params.update({"config_hash": self.config.config_hash, "git_commit": git_commit()})
        return [Param(k, "" if v is None else str(v)) for k, v in params.items()]

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

    def log_metrics(
        self, metrics: dict[str, float], step: int | None = None, scope: str = ""
    ) -> None:
        """Queue metrics; ``scope`` (the stage attempt) keeps a resumed stage from logging the
        steps it repeats twice."""
        if self.outbox is not None:
            self.outbox.log_metrics(metrics, step, scope)

    def stage_done(self, stage: Stage, status: str, path: Path) -> None:
        """Tag the stage ran|cached; when it ran, log the outputs it declares as tracked."""
        if self.outbox is None:
            return
        tags = {f"stage.{stage.name}": status}
        if status == "ran":
            tags.update(slurm_tags(stage))
        self.outbox.set_tags(tags)
        if status != "ran":
            return
        for name, artifact_dir in stage.tracked.items():
            if (path / name).exists():
                self.outbox.log_artifacts(path / name, artifact_dir)

    def log_resolved_config(self) -> None:
        """The redacted config the runner wrote next to the outputs, as a run artifact."""
        resolved = self.config.run_dir / "config.resolved.json"
        if self.outbox is not None and resolved.is_file():
            self.outbox.log_artifacts(resolved, "")

    def end(self, status: str = "FINISHED") -> None:
        if self.outbox is None:
            return
        if self._monitor is not None:
            self._monitor.finish()
        self.outbox.close(status, self.config.tracking.flush_timeout_s)
