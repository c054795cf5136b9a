"""The ``tracking:`` section of a run config: where MLflow tracks the run."""

from __future__ import annotations

from pydantic import Field, field_validator

from .section import Section

TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


class TrackingSection(Section):
    uri: str | None = Field(None, description="MLflow URI; default sqlite under the run dir.")
    experiment: str = "adept"
    retry_seconds: float = Field(
        5.0, gt=0, description="While the server is down, how often the sender tries again."
    )
    flush_timeout_s: float = Field(
        60.0,
        ge=0,
        description="At the end of a run, how long to wait for tracking calls still queued; "
        "what is left is sent by the next `pipeline run` of the same run directory.",
    )

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        accepted = (
            f"accepted: sqlite:///PATH/mlflow.db (a local store), http(s)://HOST:PORT (a "
            f"server), or another scheme MLflow takes ({', '.join(TRACKING_SCHEMES)})"
        )
        if value is None or value == "databricks":  # MLflow's one URI without "://"
            return value
        if "://" not in value:
            raise ValueError(f"{value!r} is not a URI (no scheme://); {accepted}")
        scheme = value.split("://", 1)[0].split("+")[0]
        if scheme not in TRACKING_SCHEMES:
            raise ValueError(f"unsupported scheme {scheme!r}; {accepted}")
        return value
