"""The columns and dtypes of every DataFrame the package returns (docs/python.md lists them).

Each table is a section of results.json (docs/results-schema.md) or a page of the team database;
a column per field, with pandas' nullable dtypes where the field may be null, so a missing
`rel_fro` (a zero base tensor) is <NA>/NaN rather than a silently different dtype.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import pandas as pd

Schema = Mapping[str, str]

TENSORS: Schema = {
    "name": "string",
    "layer": "Int64",
    "module": "string",
    "shape": "object",
    "fro": "float64",
    "base_fro": "float64",
    "rel_fro": "float64",
    "cosine": "float64",
    "max_abs": "float64",
    "spectral": "float64",
    "nuclear": "float64",
    "stable_rank": "float64",
    "effective_rank": "float64",
    "rank_90": "Int64",
    "rank_99": "Int64",
    "numerical_rank": "Int64",
    "top_singular_values": "object",
    "energy_top_k": "object",
    "rows_compared": "Int64",
    "method": "string",
}

# What the weights analysis aggregates per block and per module kind.
_AGGREGATE: Schema = {
    "fro": "float64",
    "base_fro": "float64",
    "rel_fro": "float64",
    "n_tensors": "Int64",
    "most_changed": "string",
    "most_changed_rel_fro": "float64",
}

WEIGHT_LAYERS: Schema = {"layer": "Int64", **_AGGREGATE}

WEIGHT_MODULES: Schema = {"module": "string", **_AGGREGATE}

ACTIVATION_BLOCKS: Schema = {
    "layer": "Int64",
    "hook": "string",
    "n_tokens": "Int64",
    "mean_diff_norm": "float64",
    "p50_diff_norm": "float64",
    "p95_diff_norm": "float64",
    "mean_rel_diff": "float64",
    "p50_rel_diff": "float64",
    "p95_rel_diff": "float64",
    "mean_cosine": "float64",
    "mean_base_norm": "float64",
    "mean_ft_norm": "float64",
    "position_diff_norm": "object",
    "position_rel_diff": "object",
}

TOP_EXAMPLES: Schema = {
    "layer": "Int64",
    "hook": "string",
    "sample": "Int64",
    "position": "Int64",
    "diff_norm": "float64",
    "rel_diff": "float64",
    "token": "string",
    "context": "string",
}

LENS_BLOCKS: Schema = {
    "layer": "Int64",
    "n_tokens": "Int64",
    "kl_mean": "float64",
    "kl_p50": "float64",
    "kl_p95": "float64",
    "rising": "object",
    "falling": "object",
}

CMAP_CELLS: Schema = {
    "layer": "Int64",
    "component": "string",
    "direction": "string",
    "recovery": "float64",
    "kl": "float64",
}

STITCHING_POINTS: Schema = {
    "k": "Int64",
    "direction": "string",
    "kl_to_base": "float64",
    "kl_to_ft": "float64",
    "loss": "float64",
}

STEERING_CURVES: Schema = {
    "target": "string",
    "layer": "Int64",
    "alpha": "float64",
    "kl_to_ft": "float64",
    "perplexity": "float64",
    "domain_mass": "float64",
}

TRACE_POSITIONS: Schema = {
    "position": "Int64",
    "n_samples": "Int64",
    "delta_norm": "float64",
    "patchscope_scale": "float64",
    "half_overlap": "float64",
}

TOKENS: Schema = {
    "rank": "Int64",
    "id": "Int64",
    "token": "string",
    "prob": "float64",
}

PATCHSCOPE_SCALES: Schema = {
    "scale": "float64",
    "agreed": "object",
    "novel": "object",
}

# Pages of the team database (GET /v1/results, /v1/results/blocks): which audit, then the row.
_HIT: Schema = {
    "audit_id": "string",
    "base": "string",
    "target": "string",
    "audit_created_at": "datetime64[ns, UTC]",
    "metric": "string",
    "value": "float64",
}

RESULT_HITS: Schema = {**_HIT, **TENSORS}

BLOCK_HITS: Schema = {
    **_HIT,
    "analysis": "string",
    "layer": "Int64",
    "hook": "string",
    "mean_diff_norm": "float64",
    "mean_rel_diff": "float64",
    "mean_cosine": "float64",
    "kl_mean": "float64",
}

# Every table, by the name docs/python.md gives it.
TABLES: dict[str, Schema] = {
    "tensors": TENSORS,
    "weight_layers": WEIGHT_LAYERS,
    "weight_modules": WEIGHT_MODULES,
    "activation_blocks": ACTIVATION_BLOCKS,
    "top_examples": TOP_EXAMPLES,
    "lens_blocks": LENS_BLOCKS,
    "cmap_cells": CMAP_CELLS,
    "stitching_points": STITCHING_POINTS,
    "steering_curves": STEERING_CURVES,
    "trace_positions": TRACE_POSITIONS,
    "tokens": TOKENS,
    "patchscope_scales": PATCHSCOPE_SCALES,
    "result_hits": RESULT_HITS,
    "block_hits": BLOCK_HITS,
}


def frame(rows: Iterable[Mapping[str, Any]], schema: Schema) -> pd.DataFrame:
    """A DataFrame of `rows` with exactly the schema's columns, in its order and dtypes."""
    rows = list(rows)
    columns: dict[str, pd.Series[Any]] = {}
    for name, dtype in schema.items():
        values = [r.get(name) for r in rows]
        if dtype.startswith("datetime64"):
            columns[name] = pd.Series(pd.to_datetime(cast("list[str]", values), utc=True), dtype=dtype)
        else:
            columns[name] = pd.Series(values, dtype=dtype)
    return pd.DataFrame(columns)
