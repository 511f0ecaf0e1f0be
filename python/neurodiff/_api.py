"""GENERATED from the API's OpenAPI document by scripts/gen_python_client.py; do not edit.

Regenerate: neurodiff openapi > openapi.json && python scripts/gen_python_client.py openapi.json python/neurodiff/_api.py
"""

# ruff: noqa
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ._codec import Transport


@dataclass
class AlertList:
    alerts: list[AlertView]


@dataclass
class AlertView:
    checkpoint_id: str
    created_at: datetime
    deliveries: list[DeliveryView]
    """Read by a second query."""
    details: list[str]
    id: str
    location: str
    message: str
    rule: str
    scan_id: str
    scan_name: str
    severity: Severity
    acknowledged_at: datetime | None = None
    audit_id: str | None = None
    observed: float | None = None
    threshold: float | None = None


@dataclass
class ArtifactList:
    artifacts: list[ArtifactView]


@dataclass
class ArtifactView:
    content_type: str
    name: str
    sha256: str
    size_bytes: int
    url: str
    """Where to download it."""


@dataclass
class AuditPage:
    audits: list[AuditView]
    next_cursor: str | None = None
    """Pass as `cursor` for the next page; absent on the last one."""


@dataclass
class AuditRequest:
    """The body of `POST /v1/audits` (and what `neurodiff audit` builds from its flags)."""
    activations: dict[str, Any] | None = None
    cmap: dict[str, Any] | None = None
    crosscoder: dict[str, Any] | None = None
    logit_lens: dict[str, Any] | None = None
    sae_diff: dict[str, Any] | None = None
    steering: dict[str, Any] | None = None
    stitching: dict[str, Any] | None = None
    traces: dict[str, Any] | None = None
    weights: dict[str, Any] | None = None
    adapter: str | None = None
    """A PEFT LoRA adapter on `base`; give this or `finetuned`."""
    analyses: list[str] | None = None
    """Analyses to run: `weights`, `activations`, `logit-lens`, `traces`, `cmap`, `stitching`, `steering`, `crosscoder`, `sae-diff`; default `["weights"]`."""
    base: str | None = None
    """The base model (required; a scan's audit template leaves it out, the scan sets it)."""
    corpus: dict[str, Any] | None = None
    """`{"source": "s3://bucket/text.jsonl", "seq_len": 128, "max_samples": 256, "batch_size": 16, "shard_samples": 128}`; no source: the built-in corpus."""
    dtype: Dtype | None = None
    finetuned: str | None = None
    """The fine-tuned checkpoint; give this or `adapter`."""
    layers: list[int] | None = None
    """Blocks of the weight audit; default all."""
    range_bytes: int | None = None
    """The most bytes of both models' block weights one shard of the activations or the logit lens holds: a larger pair runs as chains of layer-range shards (blocks [a, b) each, handing the residual streams on through object storage, on any worker). Default: every shard runs every block."""


@dataclass
class AuditView:
    """An audit as the API shows it."""
    created_at: datetime
    id: str
    progress: Progress
    spec: dict[str, Any]
    status: AuditStatus
    error: str | None = None
    finished_at: datetime | None = None
    idempotency_key: str | None = None


@dataclass
class BlockHitView:
    """One block of one audit, with the metric the query ranked by."""
    audit_created_at: datetime
    audit_id: str
    base: str
    target: str
    analysis: AnalysisKind
    """The analysis whose section the row comes from."""
    hook: BlockSite
    """The hook (`hook_resid_post`, ...), or `output`."""
    metric: BlockMetric
    value: float
    kl_mean: float | None = None
    layer: int | None = None
    """The block; absent for a row at the model's output."""
    mean_cosine: float | None = None
    mean_diff_norm: float | None = None
    mean_rel_diff: float | None = None


@dataclass
class BlockPage:
    results: list[BlockHitView]


@dataclass
class BlockRow:
    """One block's metrics of an analysis, as the team database's block results record them."""
    analysis: AnalysisKind
    """The analysis whose section the row comes from."""
    hook: BlockSite
    """The hook (`hook_resid_post`, ...), or `output`."""
    kl_mean: float | None = None
    layer: int | None = None
    """The block; absent for a row at the model's output."""
    mean_cosine: float | None = None
    mean_diff_norm: float | None = None
    mean_rel_diff: float | None = None


@dataclass
class DeliveryView:
    attempts: int
    id: str
    """The `NeuroDiff-Delivery` header: the same on every retry."""
    next_attempt_at: datetime
    delivered_at: datetime | None = None
    gave_up_at: datetime | None = None
    last_error: str | None = None
    last_status: int | None = None


@dataclass
class HitAudit:
    """The audit a hit of the team database comes from (at the top level of every hit)."""
    audit_created_at: datetime
    audit_id: str
    base: str
    target: str


@dataclass
class LatentHitView:
    """One latent of one audit."""
    audit_created_at: datetime
    audit_id: str
    base: str
    target: str
    analysis: AnalysisKind
    """The dictionary's analysis."""
    class_: LatentClass = field(metadata={'json': "class"})
    example_tokens: list[str]
    frequency: float
    latent: int
    layer: int
    max_activation: float
    top_tokens: list[str]
    delta_norm: float | None = None
    domain_hit: bool | None = None
    nu_eps: float | None = None
    nu_r: float | None = None


@dataclass
class LatentPage:
    results: list[LatentHitView]


@dataclass
class LatentRow:
    """One latent of one audit's dictionary, as the team database's latent results record it."""
    analysis: AnalysisKind
    """The dictionary's analysis."""
    class_: LatentClass = field(metadata={'json': "class"})
    example_tokens: list[str]
    frequency: float
    latent: int
    layer: int
    max_activation: float
    top_tokens: list[str]
    delta_norm: float | None = None
    domain_hit: bool | None = None
    nu_eps: float | None = None
    nu_r: float | None = None


@dataclass
class Progress:
    shards_done: int
    shards_total: int


@dataclass
class RequestOptions:
    """The analyses' options as a request gives them: each may be left out (its defaults)."""
    activations: dict[str, Any] | None = None
    cmap: dict[str, Any] | None = None
    crosscoder: dict[str, Any] | None = None
    logit_lens: dict[str, Any] | None = None
    sae_diff: dict[str, Any] | None = None
    steering: dict[str, Any] | None = None
    stitching: dict[str, Any] | None = None
    traces: dict[str, Any] | None = None
    weights: dict[str, Any] | None = None


@dataclass
class ResultHitView:
    audit_created_at: datetime
    audit_id: str
    base: str
    target: str
    metric: TensorMetric
    tensor: dict[str, Any]
    value: float | None = None


@dataclass
class ResultPage:
    results: list[ResultHitView]


@dataclass
class RunView:
    alerts: int
    checkpoint_id: str
    created_at: datetime
    id: str
    location: str
    observed: dict[str, Any]
    """Each rule's observed value: the trend of what the rules watch."""
    state: RunState
    """`audited` (its audit runs), `baseline`, `evaluated` or `failed`."""
    audit_id: str | None = None
    audit_status: AuditStatus | None = None
    base: str | None = None
    error: str | None = None


@dataclass
class ScanList:
    scans: list[ScanView]


@dataclass
class ScanRequest:
    """`POST /v1/scans`."""
    name: str
    source: str
    """A directory whose subdirectories are checkpoints, an `s3://bucket/prefix/` whose sub-prefixes are, or a hub repository `org/name[@branch]` whose commits are."""
    audit: dict[str, Any] | None = None
    """The audit to run, as the body of `POST /v1/audits` without `base`, `finetuned` and `adapter`."""
    base: str | None = None
    base_mode: BaseMode | None = None
    cron: str | None = None
    every_s: int | None = None
    rules: list[dict[str, Any]] | None = None
    target: TargetKind | None = None
    webhook_secret: str | None = None
    """Signs the webhook bodies; generated when absent and shown once, at creation."""
    webhook_url: str | None = None


@dataclass
class ScanView:
    alerts_open: int
    base_mode: BaseMode
    created_at: datetime
    id: str
    name: str
    next_run_at: datetime
    paused: bool
    rules: list[dict[str, Any]]
    runs_total: int
    source: str
    target: TargetKind
    audit: dict[str, Any] | None = None
    """The audit each checkpoint gets (`POST /v1/audits` without the models)."""
    base: str | None = None
    cron: str | None = None
    every_s: int | None = None
    last_error: str | None = None
    last_polled_at: datetime | None = None
    runs: list[RunView] | None = None
    webhook_secret: str | None = None
    """Only in the answer to the scan's creation: keep it to verify the signatures."""
    webhook_url: str | None = None


@dataclass
class ShardList:
    """An audit's shards, in plan order."""
    shards: list[ShardView]


@dataclass
class ShardView:
    """One shard of an audit as the API shows it: where it ran and what it cost (the same status values as an audit's)."""
    attempt: int
    """Times it was handed to a worker."""
    shard: str
    """`layer-0003`, `activations/samples-000000-000064`, `logit-lens/samples-000000-000064/blocks-0004-0008`, …"""
    status: AuditStatus
    elapsed_s: float | None = None
    """Seconds the analysis ran."""
    error: str | None = None
    finished_at: datetime | None = None
    load_s: float | None = None
    """Seconds its worker spent loading the models (0 when they were warm)."""
    queue_wait_ms: float | None = None
    """How long its task waited on the queue before a worker took it."""
    started_at: datetime | None = None
    warm: bool | None = None
    """Whether its worker already held the models."""
    worker: str | None = None
    """The worker of its latest attempt."""


@dataclass
class Vocabulary:
    """`GET /v1/vocabulary`: every fixed list a client offers, from the enums themselves (the dashboard's menus read it, so they cannot drift from what the API accepts)."""
    alert_filters: list[AlertFilter]
    """`GET /v1/alerts?state=`."""
    analyses: list[AnalysisKind]
    """The analyses an audit can run, in report order."""
    block_analyses: list[AnalysisKind]
    """`GET /v1/results/blocks?analysis=`: the analyses with per-block rows."""
    block_metrics: list[BlockMetric]
    """`GET /v1/results/blocks?metric=`."""
    block_sites: list[BlockSite]
    """`GET /v1/results/blocks?hook=`: the hooks, and `output`."""
    dictionaries: list[AnalysisKind]
    """`GET /v1/results/latents?analysis=`: the analyses that train a dictionary."""
    latent_classes: list[LatentClass]
    """`GET /v1/results/latents?class=`."""
    run_states: list[RunState]
    severities: list[Severity]
    """Alert severities, least first."""
    statuses: list[AuditStatus]
    tensor_metrics: list[TensorMetric]
    """`GET /v1/results?metric=`."""


AlertFilter = Literal["open", "acknowledged", "all"]
"""Which alerts a listing shows."""


AnalysisKind = Literal["weights", "activations", "logit-lens", "traces", "cmap", "stitching", "steering", "crosscoder", "sae-diff"]
"""The analyses an audit can run, by the name users give them (`--analyses`, `"analyses"`), in the order reports show them."""


AuditStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
"""Where an audit stands, as stored in the database and shown by the API."""


BaseMode = Literal["fixed", "previous"]
"""How a scan chooses the base of each checkpoint's audit."""


BlockMetric = Literal["mean_rel_diff", "mean_diff_norm", "mean_cosine", "kl_mean"]
"""The numeric columns of the team database's block results (`GET /v1/results/blocks`)."""


BlockSite = Literal["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post", "output"]
"""What a row of the team database's block results reads: a hook of a block, or the model's output (the logit lens at the logits)."""


Dtype = Literal["auto", "fp32", "bf16", "fp16"]
"""The dtype the corpus analyses hold the models' weights in (`--dtype`, the request's `dtype`). The residual stream and every statistic stay in fp32 (sums in f64) whatever it is. `auto`: the checkpoint's own dtype on a GPU, fp32 on the CPU."""


LatentClass = Literal["ft_only", "base_only", "shared", "other", "diff"]
"""A dictionary latent's class: by its decoder-norm ratio Δ for a crosscoder, `diff` for every latent of an SAE on differences."""


RunState = Literal["audited", "baseline", "evaluated", "failed"]
"""Where one checkpoint of a scan stands."""


Severity = Literal["info", "low", "medium", "high", "critical"]
"""How much an alert matters, least first."""


TargetKind = Literal["checkpoint", "adapter"]
"""What the scan's checkpoints are."""


TensorMetric = Literal["rel_fro", "fro", "cosine", "max_abs", "spectral", "nuclear", "stable_rank", "effective_rank", "rank_90", "rank_99", "numerical_rank", "base_fro"]
"""The numeric columns of the team database's tensor results (`GET /v1/results`)."""


class Operations:
    """One method per operation of the API, named by its operationId."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def ack_alert(self, id: str) -> AlertView:
        """Acknowledge an alert (a second time changes nothing). (POST /v1/alerts/{id}/ack)"""
        return self.transport.call("POST", "/v1/alerts/{id}/ack", path={"id": id}, response=AlertView)  # type: ignore[no-any-return]

    def cancel_audit(self, id: str) -> AuditView:
        """Cancel a queued or running audit (a finished one is returned unchanged). (DELETE /v1/audits/{id})"""
        return self.transport.call("DELETE", "/v1/audits/{id}", path={"id": id}, response=AuditView)  # type: ignore[no-any-return]

    def create_audit(self, body: AuditRequest, *, idempotency_key: str | None = None) -> AuditView:
        """Submit an audit; 202 with its id. The same `Idempotency-Key` returns the same audit. (POST /v1/audits)"""
        return self.transport.call("POST", "/v1/audits", headers={"Idempotency-Key": idempotency_key}, body=body, response=AuditView)  # type: ignore[no-any-return]

    def create_scan(self, body: ScanRequest) -> ScanView:
        """Create a scan; 201 with the scan and, once, its webhook secret. It is due at once. (POST /v1/scans)"""
        return self.transport.call("POST", "/v1/scans", body=body, response=ScanView)  # type: ignore[no-any-return]

    def delete_scan(self, id: str) -> None:
        """Deletes the scan with its runs and alerts; the audits it started stay. (DELETE /v1/scans/{id})"""
        self.transport.call("DELETE", "/v1/scans/{id}", path={"id": id}, response=None)

    def get_alert(self, id: str) -> AlertView:
        """GET /v1/alerts/{id}"""
        return self.transport.call("GET", "/v1/alerts/{id}", path={"id": id}, response=AlertView)  # type: ignore[no-any-return]

    def get_audit(self, id: str) -> AuditView:
        """GET /v1/audits/{id}"""
        return self.transport.call("GET", "/v1/audits/{id}", path={"id": id}, response=AuditView)  # type: ignore[no-any-return]

    def get_audit_artifact(self, id: str, name: str) -> bytes:
        """`GET /v1/audits/{id}/artifacts/{name}`, streamed from object storage. (GET /v1/audits/{id}/artifacts/{name})"""
        return self.transport.call("GET", "/v1/audits/{id}/artifacts/{name}", path={"id": id, "name": name}, response=bytes)  # type: ignore[no-any-return]

    def get_audit_results(self, id: str) -> Any:
        """`GET /v1/audits/{id}/results`: results.json, the embedded audit's schema. (GET /v1/audits/{id}/results)"""
        return self.transport.call("GET", "/v1/audits/{id}/results", path={"id": id}, response=Any)

    def get_scan(self, id: str) -> ScanView:
        """One scan with its runs, newest first (each with the values its rules observed). (GET /v1/scans/{id})"""
        return self.transport.call("GET", "/v1/scans/{id}", path={"id": id}, response=ScanView)  # type: ignore[no-any-return]

    def get_vocabulary(self) -> Vocabulary:
        """Every fixed list a client offers (analyses, statuses, metrics, hooks, severities), as the API accepts them. (GET /v1/vocabulary)"""
        return self.transport.call("GET", "/v1/vocabulary", response=Vocabulary)  # type: ignore[no-any-return]

    def healthz(self) -> None:
        """GET /healthz"""
        self.transport.call("GET", "/healthz", response=None)

    def list_alerts(self, *, scan: str | None = None, state: str | None = None, limit: int | None = None) -> AlertList:
        """GET /v1/alerts"""
        return self.transport.call("GET", "/v1/alerts", query={"scan": scan, "state": state, "limit": limit}, response=AlertList)  # type: ignore[no-any-return]

    def list_audit_artifacts(self, id: str) -> ArtifactList:
        """`GET /v1/audits/{id}/artifacts` (GET /v1/audits/{id}/artifacts)"""
        return self.transport.call("GET", "/v1/audits/{id}/artifacts", path={"id": id}, response=ArtifactList)  # type: ignore[no-any-return]

    def list_audit_shards(self, id: str) -> ShardList:
        """The audit's shards in plan order: status, attempts, worker, and where the time went (queue wait, model loading, the analysis). (GET /v1/audits/{id}/shards)"""
        return self.transport.call("GET", "/v1/audits/{id}/shards", path={"id": id}, response=ShardList)  # type: ignore[no-any-return]

    def list_audits(self, *, status: str | None = None, model: str | None = None, since: datetime | None = None, until: datetime | None = None, limit: int | None = None, cursor: str | None = None) -> AuditPage:
        """The team's audits, newest first; filters by status, model and creation time; cursor pages. (GET /v1/audits)"""
        return self.transport.call("GET", "/v1/audits", query={"status": status, "model": model, "since": since, "until": until, "limit": limit, "cursor": cursor}, response=AuditPage)  # type: ignore[no-any-return]

    def list_scans(self) -> ScanList:
        """GET /v1/scans"""
        return self.transport.call("GET", "/v1/scans", response=ScanList)  # type: ignore[no-any-return]

    def pause_scan(self, id: str) -> ScanView:
        """POST /v1/scans/{id}/pause"""
        return self.transport.call("POST", "/v1/scans/{id}/pause", path={"id": id}, response=ScanView)  # type: ignore[no-any-return]

    def query_block_results(self, *, metric: str | None = None, model: str | None = None, analysis: str | None = None, layer: int | None = None, hook: str | None = None, min: float | None = None, limit: int | None = None) -> BlockPage:
        """`GET /v1/results/blocks`: blocks across the team's succeeded audits, largest metric first. (GET /v1/results/blocks)"""
        return self.transport.call("GET", "/v1/results/blocks", query={"metric": metric, "model": model, "analysis": analysis, "layer": layer, "hook": hook, "min": min, "limit": limit}, response=BlockPage)  # type: ignore[no-any-return]

    def query_latent_results(self, *, analysis: str | None = None, class_: str | None = None, token: str | None = None, model: str | None = None, max_nu_eps: float | None = None, max_nu_r: float | None = None, limit: int | None = None) -> LatentPage:
        """`GET /v1/results/latents`: latents across the team's succeeded audits, most frequent first. (GET /v1/results/latents)"""
        return self.transport.call("GET", "/v1/results/latents", query={"analysis": analysis, "class": class_, "token": token, "model": model, "max_nu_eps": max_nu_eps, "max_nu_r": max_nu_r, "limit": limit}, response=LatentPage)  # type: ignore[no-any-return]

    def query_results(self, *, metric: str | None = None, model: str | None = None, layer: int | None = None, module: str | None = None, min: float | None = None, limit: int | None = None) -> ResultPage:
        """`GET /v1/results`: tensors across every succeeded audit of the team, largest metric first. (GET /v1/results)"""
        return self.transport.call("GET", "/v1/results", query={"metric": metric, "model": model, "layer": layer, "module": module, "min": min, "limit": limit}, response=ResultPage)  # type: ignore[no-any-return]

    def readyz(self) -> None:
        """GET /readyz"""
        self.transport.call("GET", "/readyz", response=None)

    def resume_scan(self, id: str) -> ScanView:
        """POST /v1/scans/{id}/resume"""
        return self.transport.call("POST", "/v1/scans/{id}/resume", path={"id": id}, response=ScanView)  # type: ignore[no-any-return]

    def trigger_scan(self, id: str) -> ScanView:
        """Makes the scan due now (its schedule goes on from there). (POST /v1/scans/{id}/trigger)"""
        return self.transport.call("POST", "/v1/scans/{id}/trigger", path={"id": id}, response=ScanView)  # type: ignore[no-any-return]
