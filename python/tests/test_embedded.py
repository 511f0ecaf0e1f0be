"""The embedded audit from Python: the same results.json as the CLI, the planted changes found,
DataFrames with the documented columns and dtypes, models passed in memory, plots, errors."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import neurodiff as nd
from neurodiff import _binary, schema

ROOT = Path(__file__).resolve().parents[2]
ANALYSES = ["weights", "activations", "logit-lens"]
# A small corpus run: the organism's analyses take seconds.
FLAGS: dict[str, Any] = {"max_samples": 16, "seq_len": 32}


def _without_time(results: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in results.items() if k != "created_unix"}


@pytest.fixture(scope="module")
def rank_update(planted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> nd.Results:
    out = tmp_path_factory.mktemp("py") / "a1"
    return nd.audit(planted["base"], planted["rank-update"], analyses=ANALYSES, out=out, progress=False, **FLAGS)


def test_python_audit_equals_the_cli(rank_update: nd.Results, planted: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    subprocess.run(
        [str(_binary.binary()), "audit", str(planted["base"]), str(planted["rank-update"]),
         "--analyses", ",".join(ANALYSES), "--max-samples", "16", "--seq-len", "32",
         "--out", str(out), "--quiet"],
        env=_binary.child_env(), check=True, capture_output=True,
    )
    cli = json.loads((out / "results.json").read_text())
    assert _without_time(cli) == _without_time(dict(rank_update.raw))
    # The files beside it too: the same report and plots.
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(
        p.name for p in (rank_update.report.parent / "plots").iterdir()
    )


def test_the_planted_change_is_found(rank_update: nd.Results, planted: dict[str, Path]) -> None:
    truth = json.loads((planted["rank-update"] / "ground_truth.json").read_text())
    changed = truth["changed"]
    t = rank_update.tensors
    top = t.head(len(changed))
    assert set(top["name"]) == {c["tensor"] for c in changed}
    for c in changed:
        row = t[t["name"] == c["tensor"]].iloc[0]
        assert row["numerical_rank"] == c["rank"]
    # Everything else is untouched.
    assert (t.iloc[len(changed):]["fro"] == 0.0).all()
    # The activations first differ at the planted block, and not before it.
    blocks = rank_update.blocks("activations")
    post = blocks[blocks["hook"] == "hook_resid_post"].set_index("layer")["mean_rel_diff"]
    planted_layer = int(top.iloc[0]["layer"])
    assert (post.loc[: planted_layer - 1] == 0.0).all() if planted_layer > 0 else True
    assert post.loc[planted_layer] > 0.0


def _documented_columns() -> dict[str, list[str]]:
    """docs/python.md's tables: a `### name` heading, then a table whose first column is a column."""
    text = (ROOT / "docs" / "python.md").read_text()
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"^### `(\w+)`[^\n]*\n\n((?:\|.*\n)+)", text, re.M):
        rows = m.group(2).strip().splitlines()[2:]
        out[m.group(1)] = [r.split("|")[1].strip().strip("`") for r in rows]
    return out


def test_frames_carry_the_documented_columns_and_dtypes(rank_update: nd.Results) -> None:
    documented = _documented_columns()
    frames = {
        "tensors": (rank_update.tensors, rank_update.section("weights")["tensors"]),
        "weight_layers": (rank_update.layers, rank_update.section("weights")["layers"]),
        "weight_modules": (rank_update.modules, rank_update.section("weights")["modules"]),
        "activation_blocks": (rank_update.blocks("activations"), rank_update.section("activations")["layers"]),
        "top_examples": (rank_update.top_examples, rank_update.section("activations")["top_examples"]),
        "lens_blocks": (rank_update.blocks("logit-lens"), rank_update.section("logit_lens")["layers"]),
    }
    for name, (df, rows) in frames.items():
        want = schema.TABLES[name]
        assert list(df.columns) == list(want), name
        assert {c: str(df[c].dtype) for c in df.columns} == dict(want), name
        assert len(df) == len(rows) + (1 if name == "lens_blocks" else 0), name
        # No field of results.json is dropped without being documented as left out.
        fields = set().union(*(r.keys() for r in rows))
        assert fields <= set(want), f"{name}: fields not in the table: {fields - set(want)}"
    for name, cols in schema.TABLES.items():
        assert documented.get(name) == list(cols), f"docs/python.md's `{name}` table"
    t = rank_update.tensors
    assert pd.isna(t["max_abs"]).sum() == 0
    assert t["layer"].dtype == "Int64" and t["layer"].isna().any()  # the embeddings: outside blocks


def test_in_memory_transformers_models(tmp_path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    base = LlamaForCausalLM(config).eval()  # type: ignore[no-untyped-call]
    ft = LlamaForCausalLM(config).eval()  # type: ignore[no-untyped-call]
    ft.load_state_dict(base.state_dict())
    with torch.no_grad():
        w = ft.model.layers[1].mlp.down_proj.weight
        w += 0.05 * torch.outer(torch.randn(w.shape[0]), torch.randn(w.shape[1]))
    r = nd.audit(base, ft, analyses=["weights"], out=tmp_path / "mem", progress=False)
    top = r.tensors.iloc[0]
    assert top["name"] == "model.layers.1.mlp.down_proj.weight"
    assert top["numerical_rank"] == 1
    assert (r.tensors.iloc[1:]["fro"] == 0.0).all()


def test_plots_and_summary(rank_update: nd.Results) -> None:
    fig = rank_update.plot("activation_trajectory")
    lines = fig.axes[0].get_lines()
    assert len(lines) == rank_update.blocks("activations")["hook"].nunique()
    assert rank_update.plot("layers").axes
    assert rank_update.plot("logit_lens_kl").axes
    svg = rank_update.svg("activation_trajectory")
    assert "<svg" in (svg if isinstance(svg, str) else svg.data)
    html = rank_update._repr_html_()
    for name in ("weights", "activations", "logit_lens", "report.html"):
        assert name in html
    with pytest.raises(ValueError, match="no plot `nope`"):
        rank_update.plot("nope")
    with pytest.raises(nd.ResultsError, match="did not run `traces`"):
        rank_update.traces  # noqa: B018


def test_load_reads_a_directory_or_a_file(rank_update: nd.Results, tmp_path: Path) -> None:
    assert rank_update.report.parent is not None
    directory = rank_update.report.parent
    assert nd.load(directory).raw == rank_update.raw
    assert nd.load(directory / "results.json").raw == rank_update.raw
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    with pytest.raises(nd.ResultsError, match="results.json: not JSON"):
        nd.load(bad)
    bad.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(nd.ResultsError, match="schema_version 99"):
        nd.load(bad)


def test_binary_errors_name_the_problem(planted: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(nd.NeuroDiffError, match="nope"):
        nd.audit(planted["base"], tmp_path / "missing", analyses=["nope"], out=tmp_path / "x", progress=False)
    with pytest.raises(nd.NeuroDiffError, match="missing"):
        nd.audit(planted["base"], tmp_path / "missing", analyses=["weights"], out=tmp_path / "y", progress=False)


def test_progress_reaches_python(planted: dict[str, Path], tmp_path: Path) -> None:
    seen: list[tuple[int, int, str]] = []
    _binary.run(
        ["audit", str(planted["base"]), str(planted["attn-scaled"]), "--analyses", "weights",
         "--out", str(tmp_path / "p")],
        progress=lambda pos, total, msg: seen.append((pos, total, msg)),
    )
    assert seen, "no progress lines"
    assert all(0 <= pos <= total for pos, total, _ in seen if total)
    assert max(total for _, total, _ in seen) > 0


def test_traces_of_a_trained_organism(trained: dict[str, Path], tmp_path: Path) -> None:
    ft = trained["astronomy-full"]
    truth = json.loads((ft / "ground_truth.json").read_text())
    r = nd.audit(trained["base"], ft, analyses=["traces"], out=tmp_path / "t", progress=False,
                 trace_samples=256, max_new_tokens=0)
    tokens = r.traces.tokens(k=20)
    assert list(tokens.columns) == list(schema.TOKENS)
    assert tokens["rank"].tolist() == list(range(1, len(tokens) + 1))
    assert tokens["prob"].is_monotonic_decreasing
    grades = r.grades
    assert grades is not None and grades["domain"] == truth["domain"]
    # The traces name the domain: its words among the first tokens, as the CLI's grade counts.
    assert grades["mean_logit_lens_p20"] >= 0.5
    words = " ".join(tokens["token"].str.strip().str.lower())
    assert any(w.lower() in words for w in truth["domain_words"]), (words, truth["domain_words"])
    assert r.traces.positions["position"].tolist()[0] == 0
    assert r.plot("traces_consistency").axes


def test_cmap_and_stitching_tables_and_plots(planted: dict[str, Path], tmp_path: Path) -> None:
    r = nd.audit(planted["base"], planted["rank-update"], analyses=["cmap", "stitching"],
                 out=tmp_path / "t2", progress=False, max_samples=8, seq_len=32, cmap_samples=8)
    truth = json.loads((planted["rank-update"] / "ground_truth.json").read_text())
    found = re.search(r"layers\.(\d+)\.", truth["changed"][0]["tensor"])
    assert found is not None
    planted_layer = int(found.group(1))
    cells = r.blocks("cmap")
    points = r.blocks("stitching")
    for df, name, rows in ((cells, "cmap_cells", r.section("cmap")["cells"]),
                           (points, "stitching_points", r.section("stitching")["points"])):
        assert {c: str(df[c].dtype) for c in df.columns} == dict(schema.TABLES[name])
        assert len(df) == len(rows) and set().union(*(x.keys() for x in rows)) <= set(df.columns)
    # Patching the planted block's output from the fine-tune into the base recovers the most.
    into_base = cells[(cells["direction"] == "ft_into_base") & (cells["component"] != "resid_post")]
    best = into_base.sort_values("recovery", ascending=False).iloc[0]
    assert int(best["layer"]) == planted_layer
    assert len(r.plot("cmap").axes[0].get_lines()) == cells.groupby(["direction", "component"]).ngroups
    assert len(r.plot("stitching_kl").axes[0].get_lines()) == points["direction"].nunique()
