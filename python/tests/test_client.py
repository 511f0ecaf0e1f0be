"""The typed client against a real service (tests/conftest.py starts it): every endpoint the CLI
uses, round-tripped through the generated models in strict mode, and the team database as
DataFrames."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

import neurodiff as nd
from neurodiff import _api, _binary, schema

from conftest import Service


@pytest.fixture(scope="module")
def team_a(service: Service) -> nd.Client:
    return nd.Client(service.url, token=service.token("py-team-a"), strict=True)


@pytest.fixture(scope="module")
def team_b(service: Service) -> nd.Client:
    return nd.Client(service.url, token=service.token("py-team-b"), strict=True)


def _submit(client: nd.Client, models: dict[str, Path]) -> nd.Job:
    return client.submit(
        str(models["base"]), str(models["rank-update"]), analyses=["weights", "activations"],
        corpus={"max_samples": 8, "seq_len": 32}, idempotency_key="py-rank-update",
    )


@pytest.fixture(scope="module")
def finished(team_a: nd.Client, models_dir: dict[str, Path], service: Service) -> nd.Job:
    job = _submit(team_a, models_dir)
    try:
        return job.wait(progress=False, timeout=600)
    except (nd.AuditFailed, TimeoutError) as e:
        raise AssertionError(f"{e}\n{service.logs()}") from e


def test_the_document_served_is_the_binary_s(service: Service) -> None:
    served = json.loads(urllib.request.urlopen(f"{service.url}/openapi.json").read())
    assert served == json.loads(_binary.run(["openapi"]))


def test_submit_wait_results_equal_the_embedded_audit(
    finished: nd.Job, models_dir: dict[str, Path], tmp_path: Path
) -> None:
    assert finished.status == "succeeded"
    assert finished.view.progress.shards_done == finished.view.progress.shards_total > 0
    remote = finished.results(tmp_path / "remote")
    local = nd.audit(models_dir["base"], models_dir["rank-update"], analyses=["weights"],
                     out=tmp_path / "local", progress=False)
    a, b = remote.tensors, local.tensors
    assert a["name"].tolist() == b["name"].tolist()
    for column in ("fro", "rel_fro", "spectral", "stable_rank"):
        assert (a[column] - b[column]).abs().max() < 1e-6 * max(1.0, float(b[column].abs().max()))
    assert remote.directory is not None and (remote.directory / "report.html").is_file()
    svg = remote.svg("layers")
    assert "<svg" in (svg if isinstance(svg, str) else svg.data)
    assert remote.blocks("activations")["layer"].nunique() > 0
    # The same idempotency key gives the same audit.
    assert _submit(finished.client, models_dir).id == finished.id


def test_every_endpoint_the_cli_uses(finished: nd.Job, team_a: nd.Client, models_dir: dict[str, Path]) -> None:
    # audits: get, results, artifacts, one artifact, shards, list
    view = team_a.get_audit(finished.id)
    assert isinstance(view, _api.AuditView) and view.status == "succeeded"
    results = team_a.get_audit_results(finished.id)
    assert results["schema_version"] == 1
    artifacts = team_a.list_audit_artifacts(finished.id).artifacts
    names = {x.name for x in artifacts}
    assert {"results.json", "report.html"} <= names
    assert team_a.get_audit_artifact(finished.id, "report.html").startswith(b"<!")
    shards = team_a.list_audit_shards(finished.id).shards
    assert shards and all(s.status == "succeeded" for s in shards)
    assert finished.id in {str(a.id) for a in team_a.list_audits().audits}
    # scans: create, list, get, pause, resume, trigger, delete; alerts: list, ack
    source = models_dir["base"].parent.parent / "scan-source"  # no checkpoints yet: nothing to audit
    source.mkdir(exist_ok=True)
    scan = team_a.create_scan(_api.ScanRequest(
        name="py-scan", source=str(source), base=str(models_dir["base"]), cron="0 0 * * *",
        audit={"analyses": ["weights"]},
    ))
    assert scan.name == "py-scan"
    assert scan.id in {s.id for s in team_a.list_scans().scans}
    assert team_a.get_scan(scan.id).id == scan.id
    assert team_a.pause_scan(scan.id).paused
    assert not team_a.resume_scan(scan.id).paused
    assert team_a.trigger_scan(scan.id).id == scan.id
    assert team_a.list_alerts(scan=scan.id, state="all").alerts == []
    for call in (team_a.ack_alert, team_a.get_alert):
        with pytest.raises(nd.ApiError) as missing:
            call("00000000-0000-0000-0000-000000000000")
        assert missing.value.status == 404
    team_a.delete_scan(scan.id)
    with pytest.raises(nd.ApiError) as gone:
        team_a.get_scan(scan.id)
    assert gone.value.status == 404
    assert "logit-lens" in team_a.get_vocabulary().analyses
    team_a.healthz()
    team_a.readyz()
    # The team database's per-block rows (the activations of the audit) and its latents (none).
    blocks = team_a.block_results(metric="mean_rel_diff")
    assert list(blocks.columns) == list(schema.BLOCK_HITS)
    assert {c: str(blocks[c].dtype) for c in blocks.columns} == dict(schema.BLOCK_HITS)
    assert set(blocks["audit_id"]) == {finished.id} and set(blocks["analysis"]) == {"activations"}
    assert team_a.query_latent_results().results == []
    # Cancel: a queued audit is cancelled at once.
    queued = team_a.submit(str(models_dir["base"]), str(models_dir["attn-scaled"]), analyses=["weights"])
    assert team_a.cancel_audit(queued.id).status in ("cancelled", "succeeded")


def test_another_team_gets_404(finished: nd.Job, team_b: nd.Client) -> None:
    for call in (
        lambda: team_b.get_audit(finished.id),
        lambda: team_b.get_audit_results(finished.id),
        lambda: team_b.list_audit_artifacts(finished.id),
        lambda: team_b.list_audit_shards(finished.id),
    ):
        with pytest.raises(nd.ApiError) as e:
            call()
        assert e.value.status == 404
    assert team_b.results().empty


def test_a_bad_field_is_400_naming_it(team_a: nd.Client, models_dir: dict[str, Path]) -> None:
    with pytest.raises(nd.ApiError) as e:
        team_a.submit(str(models_dir["base"]), str(models_dir["rank-update"]), analyses=["nope"])
    assert e.value.status == 400
    assert "nope" in e.value.message
    with pytest.raises(nd.ApiError) as q:
        team_a.results(metric="loudness")
    assert q.value.status == 400 and "metric" in q.value.message


def test_missing_token_is_401(service: Service) -> None:
    with pytest.raises(nd.ApiError) as e:
        nd.Client(service.url, token="nd_wrong").list_audits()
    assert e.value.status == 401


def test_the_team_database_as_dataframes(finished: nd.Job, team_a: nd.Client, models_dir: dict[str, Path]) -> None:
    df = team_a.results(metric="rel_fro", min=0.01)
    assert list(df.columns) == list(schema.RESULT_HITS)
    assert {c: str(df[c].dtype) for c in df.columns} == dict(schema.RESULT_HITS)
    truth = json.loads((models_dir["rank-update"] / "ground_truth.json").read_text())
    assert set(df["name"]) == {c["tensor"] for c in truth["changed"]}
    assert (df["audit_id"] == finished.id).all()
    assert (df["value"] >= 0.01).all() and df["value"].is_monotonic_decreasing
    assert df["value"].tolist() == df["rel_fro"].tolist()


def test_a_failed_audit_raises(team_a: nd.Client, models_dir: dict[str, Path], tmp_path: Path) -> None:
    job = team_a.submit(str(models_dir["base"]), str(models_dir["base"]) + "-nowhere", analyses=["weights"])
    with pytest.raises(nd.AuditFailed) as e:
        job.wait(progress=False, timeout=300)
    assert e.value.view.status == "failed"
    assert e.value.view.error

