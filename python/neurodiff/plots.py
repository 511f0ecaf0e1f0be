"""Matplotlib figures of an audit's results, drawn from results.json (the report's SVGs, drawn by
the Rust renderer, are `Results.svg(name)`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .results import Results


def _show_in_notebooks() -> None:
    """In IPython, figures made without pyplot are shown by the PNG formatter registered here
    (pyplot's inline backend would register it only once pyplot is imported)."""
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "display_formatter"):
        select_figure_formats(shell, {"png"})  # type: ignore[no-untyped-call]


def _figure(title: str) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    _show_in_notebooks()

    # A bare Figure (no pyplot): nothing global is touched, and a notebook shows it as returned.
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    return fig, ax


def _lines(title: str, df: pd.DataFrame, by: str | list[str], x: str, y: str, xlabel: str, ylabel: str) -> Figure:
    """One line of `y` against `x` per group of `by`, labelled by the group."""
    fig, ax = _figure(title)
    for key, g in df.groupby(by, sort=False):
        label = " ".join(map(str, key)) if isinstance(key, tuple) else str(key)
        ax.plot(g[x].astype(int), g[y], marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    return fig


def activation_trajectory(r: Results) -> Figure:
    """Mean relative difference of the states by block, one line per hook."""
    return _lines("Activation difference by block", r.blocks("activations"), "hook", "layer",
                  "mean_rel_diff", "block", "mean ‖h_ft − h_base‖ / ‖h_base‖")


def layers(r: Results) -> Figure:
    """The weights' relative change per block."""
    df = r.layers.dropna(subset=["layer"])
    fig, ax = _figure("Relative weight change by block")
    ax.bar(df["layer"].astype(int), df["rel_fro"].fillna(0.0))
    ax.set_xlabel("block")
    ax.set_ylabel("‖ΔW‖_F / ‖W_base‖_F")
    return fig


def logit_lens_kl(r: Results) -> Figure:
    """KL(p_ft ‖ p_base) of the logit lens by block: mean, median and 95th percentile."""
    df = r.blocks("logit-lens").dropna(subset=["layer"])
    fig, ax = _figure("Logit-lens KL by block")
    for column in ("kl_mean", "kl_p50", "kl_p95"):
        ax.plot(df["layer"].astype(int), df[column], marker="o", label=column)
    ax.set_yscale("log")
    ax.set_xlabel("block")
    ax.set_ylabel("KL (nats)")
    ax.legend(fontsize="small")
    return fig


def traces_consistency(r: Results) -> Figure:
    """Per position: the norm of δ_j and the overlap of its top tokens between sample halves."""
    df = r.traces.positions
    fig, ax = _figure(f"Traces at block {r.traces.layer}")
    ax.plot(df["position"].astype(int), df["half_overlap"], marker="o", label="half overlap")
    ax.set_xlabel("position")
    ax.set_ylabel("top-20 overlap (even / odd samples)")
    ax.set_ylim(0, 1.05)
    ax2 = ax.twinx()
    ax2.plot(df["position"].astype(int), df["delta_norm"], color="grey", linestyle="--", label="‖δ‖")
    ax2.set_ylabel("‖δ_j‖")
    return fig


def cmap(r: Results) -> Figure:
    """Recovery by block of patching each component, per direction."""
    return _lines("Cross-model activation patching", r.blocks("cmap"), ["direction", "component"],
                  "layer", "recovery", "block", "recovery")


def stitching_kl(r: Results) -> Figure:
    """KL of the stitched models to the fine-tune, by split."""
    return _lines("Stitching: KL to the fine-tune by split", r.blocks("stitching"), "direction", "k",
                  "kl_to_ft", "split k", "KL(p_ft ‖ p_stitched)")


PLOTS: dict[str, Callable[[Results], Figure]] = {
    "activation_trajectory": activation_trajectory,
    "layers": layers,
    "logit_lens_kl": logit_lens_kl,
    "traces_consistency": traces_consistency,
    "cmap": cmap,
    "stitching_kl": stitching_kl,
}


def draw(r: Results, name: str) -> Figure:
    make = PLOTS.get(name)
    if make is None:
        raise ValueError(f"no plot `{name}`; plots: {', '.join(PLOTS)} (every report SVG: Results.svg)")
    return make(r)
