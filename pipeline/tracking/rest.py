"""`pipeline rest MODEL_URI`: MLflow's scoring server for a registered adapter, behind a thin
front that keeps abuse away from it.

MLflow's server (``mlflow models serve``) answers a malformed CSV or Parquet body with a 400 whose
JSON carries a ``stack_trace`` (the server's install paths included), a deeply nested JSON body
with a 500 and a ``RecursionError``, and reads a body of any size. The front, an ASGI wrapper
around the same FastAPI app, answers before MLflow sees the request:

- a body over ``max_body_bytes`` (declared or streamed): 413 naming the limit;
- a body that does not parse as its content type says (JSON, nested too deep for Python's
  parser included; CSV; Parquet): 400 naming the cause;
- a JSON row (``dataframe_records``, ``dataframe_split``, ``instances``, ``inputs``) whose task
  field is null or absent: 400 naming the row and field ("is null" / "is missing"), which pandas
  would otherwise turn into the same NaN;

and it takes ``stack_trace`` out of every error MLflow gives (logged here instead); a 5xx keeps
its status with a one-line message. ``/ping``, ``/health`` and ``/version`` pass through.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
RECORD_KEYS = ("dataframe_records", "instances", "inputs")


class BadRequest(ValueError):
    """A request body the front refuses: the status and the message the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parsed_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise BadRequest(400, "JSON body: nested too deeply to parse") from None
    except UnicodeDecodeError as exc:
        raise BadRequest(400, f"JSON body: not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(400, f"JSON body: malformed at line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg}") from None  # fmt: skip


def json_rows(payload: Any) -> list[dict[str, Any]] | None:
    """The rows of a scoring request (MLflow's JSON forms), keyed by column; None when the
    payload holds no row-shaped data (MLflow then says what it expects)."""
    if not isinstance(payload, dict):
        return None
    split = payload.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("columns"), list):
        columns = split["columns"]
        data = split.get("data") if isinstance(split.get("data"), list) else []
        return [dict(zip(columns, row, strict=False)) for row in data if isinstance(row, list)]
    for key in RECORD_KEYS:
        records = payload.get(key)
        if isinstance(records, list) and all(isinstance(r, dict) for r in records):
            return records
    return None


def check_fields(rows: list[dict[str, Any]], fields: list[str]) -> None:
    """Every row has every task field, and none is null (pandas would make both NaN)."""
    for number, row in enumerate(rows, start=1):
        for field in fields:
            if field not in row:
                raise BadRequest(400, f"row {number}: field {field!r} is missing")
            if row[field] is None:
                raise BadRequest(400, f"row {number}: field {field!r} is null")


def check_body(content_type: str, body: bytes, fields: list[str]) -> None:
    """BadRequest when ``body`` does not parse as ``content_type`` or a row lacks a field."""
    mime = content_type.split(";")[0].strip().lower()
    if mime == "application/json":
        rows = json_rows(parsed_json(body))
        if rows is not None:
            check_fields(rows, fields)
    elif mime == "text/csv":
        import pandas as pd

        try:
            pd.read_csv(io.BytesIO(body))
        except Exception as exc:  # pandas raises several types for a malformed CSV
            raise BadRequest(400, f"CSV body: {str(exc).splitlines()[0]}") from None
    elif mime in ("application/x-parquet", "application/parquet"):
        import pyarrow.parquet as pq

        try:
            pq.read_table(io.BytesIO(body))
        except Exception as exc:
            raise BadRequest(400, f"Parquet body: not a readable Parquet file ({exc})") from None


class Front:
    """The ASGI front around MLflow's scoring app (see the module docstring)."""

    def __init__(self, inner: Any, fields: list[str], max_body_bytes: int) -> None:
        self.inner, self.fields, self.max_body_bytes = inner, fields, max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/invocations":
            await self.inner(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self.read_body(headers, receive)
            check_body(headers.get("content-type", ""), body, self.fields)
        except BadRequest as exc:
            await answer(send, exc.status, str(exc))
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.inner(scope, replay, without_stack_traces(send))

    async def read_body(self, headers: dict[str, str], receive: Receive) -> bytes:
        limit = self.max_body_bytes
        too_big = BadRequest(413, f"request body over the server's limit of {limit:,} bytes "
                                  "(pipeline rest --max-body-mib)")  # fmt: skip
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


async def answer(send: Send, status: int, message: str) -> None:
    code = "REQUEST_TOO_LARGE" if status == 413 else "BAD_REQUEST"
    body = json.dumps({"error_code": code, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        }
    )  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def without_stack_traces(send: Send) -> Send:
    """``send`` for the inner app: an error response's JSON loses its ``stack_trace`` (logged
    here), a 5xx's message becomes one line; other responses pass as they are."""
    state: dict[str, Any] = {}

    async def filtered(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            if message["status"] < 400:
                state["pass"] = True
                await send(message)
                return
            state.update(start=message, body=b"")
            return
        if state.get("pass"):
            await send(message)
            return
        state["body"] += message.get("body", b"")
        if message.get("more_body", False):
            return
        start, body = state["start"], cleaned(state["start"]["status"], state["body"])
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return filtered


def cleaned(status: int, body: bytes) -> bytes:
    try:
        error = json.loads(body)
    except ValueError:
        error = {"message": body.decode("utf-8", "replace")}
    if not isinstance(error, dict):
        error = {"message": str(error)}
    if trace := error.pop("stack_trace", None):
        log.warning("scoring server error (stack trace kept here, not sent):\n%s", trace)
    if status >= 500:
        log.warning("scoring server answered %d: %s", status, error.get("message", ""))
        error["message"] = "the server failed on this request; its log says why"
    return json.dumps(error).encode()


def build_app(model_uri: str, max_body_bytes: int) -> Front:
    """MLflow's scoring app for ``model_uri`` behind the front; the task's fields come from the
    model's signature."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(model_uri)
    schema = model.metadata.get_input_schema()
    fields = schema.input_names() if schema is not None else []
    return Front(scoring_server.init(model), fields, max_body_bytes)


def serve(model_uri: str, host: str, port: int, max_body_mib: float) -> None:
    import uvicorn

    app = build_app(model_uri, int(max_body_mib * 2**20))
    log.info("serving %s on http://%s:%d/invocations", model_uri, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
