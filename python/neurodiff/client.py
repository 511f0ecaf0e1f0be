"""The service from Python: submit audits, follow them, read their results and the team database.

`Client` is the generated `Operations` (one typed method per endpoint of the API's OpenAPI
document) plus what a notebook wants on top: `submit` returning a `Job`, `Job.wait` with a
progress bar, results as the same `Results` object an embedded audit gives, and the team
database's pages as DataFrames.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import _api, schema
from ._codec import ApiError, Transport, encode
from .results import Results
from .schema import frame

TERMINAL = ("succeeded", "failed", "cancelled")


class AuditFailed(RuntimeError):
    """The audit ended failed or cancelled; the message is the service's reason."""

    def __init__(self, view: _api.AuditView) -> None:
        super().__init__(f"audit {view.id} {view.status}: {view.error or 'no reason given'}")
        self.view = view


def _local(reference: str) -> str:
    """A local path made absolute (the worker resolves it under its policy), as the CLI sends it."""
    if "://" in reference or reference.startswith("/") or not os.path.exists(reference):
        return reference
    return os.path.abspath(reference)


class Client(_api.Operations):
    """A NeuroDiff service: `Client("http://host:8080", token=...)` (token also from
    $NEURODIFF_TOKEN, the URL from $NEURODIFF_SERVER)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        strict: bool = False,
    ) -> None:
        url = url or os.environ.get("NEURODIFF_SERVER") or "http://127.0.0.1:8080"
        super().__init__(Transport(url, token or os.environ.get("NEURODIFF_TOKEN"), timeout, strict))

    def __repr__(self) -> str:
        return f"Client({self.transport.url!r})"

    def submit(
        self,
        base: str,
        finetuned: str | None = None,
        *,
        adapter: str | None = None,
        analyses: Sequence[str] | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Job:
        """Submits an audit; its Job. Other keywords are fields of the request (the API's
        AuditRequest: `layers`, `corpus`, `dtype`, and each analysis's options by its name,
        `traces={"samples": 256}`)."""
        if (finetuned is None) == (adapter is None):
            raise ValueError("give a fine-tuned model or an adapter (adapter=...), not both")
        request = _api.AuditRequest(
            base=_local(base),
            finetuned=_local(finetuned) if finetuned is not None else None,
            adapter=_local(adapter) if adapter is not None else None,
            analyses=list(analyses) if analyses is not None else None,
            **fields,
        )
        view = self.create_audit(request, idempotency_key=idempotency_key)
        return Job(self, view)

    def job(self, audit_id: str) -> Job:
        """An audit already submitted, by id."""
        return Job(self, self.get_audit(audit_id))

    def results(self, **filters: Any) -> pd.DataFrame:
        """Tensors across the team's succeeded audits, largest `metric` first (GET /v1/results;
        filters: metric, model, layer, module, min, limit)."""
        page = self.query_results(**filters)
        rows = [{**_flat(encode(hit)), **hit.tensor} for hit in page.results]
        return frame(rows, schema.RESULT_HITS)

    def block_results(self, **filters: Any) -> pd.DataFrame:
        """Per-block rows of the corpus analyses across the team's audits (GET /v1/results/blocks)."""
        page = self.query_block_results(**filters)
        return frame([_flat(encode(hit)) for hit in page.results], schema.BLOCK_HITS)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not isinstance(v, dict)}


class Job:
    """One audit on the service."""

    def __init__(self, client: Client, view: _api.AuditView) -> None:
        self.client = client
        self.view = view

    @property
    def id(self) -> str:
        return str(self.view.id)

    @property
    def status(self) -> str:
        return str(self.view.status)

    def refresh(self) -> _api.AuditView:
        self.view = self.client.get_audit(self.id)
        return self.view

    def wait(self, progress: bool = True, timeout: float = 3600.0, poll: float = 0.5) -> Job:
        """Waits until the audit ends (a progress bar of its shards); raises AuditFailed if it
        failed or was cancelled, TimeoutError after `timeout` seconds."""
        bar: Any = None
        if progress:
            from .embedded import progress_bar

            bar = progress_bar(total=0, desc=f"audit {self.id[:8]}", unit="shard")
        deadline = time.monotonic() + timeout
        try:
            while True:
                view = self.refresh()
                if bar is not None:
                    bar.total = max(view.progress.shards_total, 0)
                    bar.n = max(view.progress.shards_done, 0)
                    bar.set_postfix_str(str(view.status), refresh=False)
                    bar.refresh()
                if view.status in TERMINAL:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"audit {self.id} still {view.status} after {timeout:.0f} s")
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()
        if self.view.status != "succeeded":
            raise AuditFailed(self.view)
        return self

    def results(self, out: str | os.PathLike[str] | None = None) -> Results:
        """The audit's results, as an embedded audit's: results.json and its artifacts (report,
        plots) downloaded to `out` (default: a new temporary directory)."""
        directory = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"neurodiff-{self.id[:8]}-"))
        (directory / "plots").mkdir(parents=True, exist_ok=True)
        listing = self.client.list_audit_artifacts(self.id)
        for artifact in listing.artifacts:
            name = artifact.name
            if not name or "/" in name or name.startswith("."):
                continue  # names are the service's own; never a path out of the directory
            target = directory / ("plots" if name.endswith(".svg") else "") / name
            self.client.transport.download("/v1/audits/{id}/artifacts/{name}", {"id": self.id, "name": name}, str(target))
        if not (directory / "results.json").exists():
            (directory / "results.json").write_text(json.dumps(self.client.get_audit_results(self.id)))
        return Results.from_path(directory)

    def cancel(self) -> None:
        self.client.cancel_audit(self.id)

    def shards(self) -> pd.DataFrame:
        """Each shard's status, worker, queue wait, load time and whether its models were warm."""
        page = self.client.list_audit_shards(self.id)
        return pd.DataFrame([encode(s) for s in page.shards])

    def __repr__(self) -> str:
        p = self.view.progress
        return f"Job({self.id}, {self.view.status}, {p.shards_done}/{p.shards_total} shards)"


__all__ = ["ApiError", "AuditFailed", "Client", "Job"]
