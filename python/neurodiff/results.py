"""An audit's results (results.json and the files beside it) as DataFrames, plots and a summary.

The same object comes from an embedded audit (`neurodiff.audit`), from any results directory or
results.json (`neurodiff.load`), and from the service (`Job.results()`), so a notebook reads all
three alike.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import schema
from .schema import frame

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# results.json's section per analysis, by the name the CLI and the API take.
_SECTIONS = {
    "weights": "weights",
    "activations": "activations",
    "logit-lens": "logit_lens",
    "logit_lens": "logit_lens",
    "traces": "traces",
    "cmap": "cmap",
    "stitching": "stitching",
    "steering": "steering",
    "crosscoder": "crosscoder",
    "sae-diff": "sae_diff",
    "sae_diff": "sae_diff",
}

SCHEMA_VERSION = 1


class ResultsError(ValueError):
    """A results file that is not NeuroDiff's, or an analysis the audit did not run."""


def load(path: str | os.PathLike[str]) -> Results:
    """The results of an audit: a results directory (with results.json) or a results.json."""
    return Results.from_path(path)


class Results:
    """One audit's results."""

    def __init__(self, data: Mapping[str, Any], directory: Path | None = None) -> None:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ResultsError(
                f"results.json has schema_version {version!r}; this package reads {SCHEMA_VERSION}"
            )
        self.raw: Mapping[str, Any] = data
        self.directory = directory

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> Results:
        p = Path(path)
        file = p / "results.json" if p.is_dir() else p
        try:
            text = file.read_text()
        except OSError as e:
            raise ResultsError(f"{file}: {e.strerror or e}") from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ResultsError(f"{file}: not JSON ({e})") from e
        if not isinstance(data, dict):
            raise ResultsError(f"{file}: not a results object")
        return cls(data, file.parent)

    # ---- what ran on what
    @property
    def analyses(self) -> list[str]:
        """The sections present under `analyses`, in results.json's order."""
        return list(self.raw.get("analyses", {}))

    @property
    def base(self) -> Mapping[str, Any]:
        return dict(self.raw["base"])

    @property
    def finetuned(self) -> Mapping[str, Any]:
        return dict(self.raw["finetuned"])

    @property
    def grades(self) -> Mapping[str, Any] | None:
        g = self.raw.get("grades")
        return dict(g) if isinstance(g, dict) else None

    def section(self, analysis: str) -> Mapping[str, Any]:
        """One analysis's section of results.json; ResultsError naming those present if absent."""
        key = _SECTIONS.get(analysis, analysis)
        found = self.raw.get("analyses", {}).get(key)
        if not isinstance(found, dict):
            raise ResultsError(
                f"the audit did not run `{analysis}`; it ran: {', '.join(self.analyses) or 'nothing'}"
            )
        return found

    # ---- tables
    @property
    def tensors(self) -> pd.DataFrame:
        """One row per tensor, most changed first (the weights analysis)."""
        return frame(self.section("weights")["tensors"], schema.TENSORS)

    @property
    def layers(self) -> pd.DataFrame:
        """The weights analysis per block (layer <NA>: everything outside the blocks)."""
        return frame(self.section("weights")["layers"], schema.WEIGHT_LAYERS)

    @property
    def modules(self) -> pd.DataFrame:
        """The weights analysis per module kind across blocks."""
        return frame(self.section("weights")["modules"], schema.WEIGHT_MODULES)

    def blocks(self, analysis: str = "activations") -> pd.DataFrame:
        """Per-block results of a corpus analysis: activations (block x hook), logit-lens (block,
        and the output as layer <NA>), cmap (block x component x direction), stitching (split x
        direction) or steering (target x block x alpha)."""
        key = _SECTIONS.get(analysis, analysis)
        s = self.section(analysis)
        if key == "activations":
            return frame(s["layers"], schema.ACTIVATION_BLOCKS)
        if key == "logit_lens":
            rows = list(s["layers"])
            if isinstance(s.get("output"), dict):
                rows.append({**s["output"], "layer": None})
            return frame(rows, schema.LENS_BLOCKS)
        if key == "cmap":
            return frame(s["cells"], schema.CMAP_CELLS)
        if key == "stitching":
            return frame(s["points"], schema.STITCHING_POINTS)
        if key == "steering":
            return frame(s["curves"], schema.STEERING_CURVES)
        raise ResultsError(
            f"`{analysis}` has no per-block table; blocks() reads activations, logit-lens, cmap, "
            "stitching or steering"
        )

    @property
    def top_examples(self) -> pd.DataFrame:
        """The tokens whose state moved most, per block (the activations analysis)."""
        return frame(self.section("activations")["top_examples"], schema.TOP_EXAMPLES)

    @property
    def traces(self) -> Traces:
        """The readable traces (ADL and Patchscope)."""
        return Traces(self.section("traces"))

    # ---- files beside results.json
    def file(self, name: str) -> Path:
        """A file of the results directory: report.html, mean_diff.safetensors, or a plot."""
        if self.directory is None:
            raise ResultsError("these results were read without their directory")
        for candidate in (self.directory / name, self.directory / "plots" / name):
            if candidate.is_file():
                return candidate
        raise ResultsError(f"{name} is not in {self.directory}")

    @property
    def report(self) -> Path:
        return self.file("report.html")

    def svg(self, name: str) -> Any:
        """The report's plot `name` (e.g. `activation_trajectory`): an IPython SVG in a notebook,
        else the SVG's text."""
        text = self.file(name if name.endswith(".svg") else f"{name}.svg").read_text()
        try:
            from IPython.display import SVG
        except ImportError:
            return text
        return SVG(data=text)  # type: ignore[no-untyped-call]

    def plot(self, name: str) -> Figure:
        """A matplotlib figure of the results (`neurodiff.plots.PLOTS` names them)."""
        from .plots import draw

        return draw(self, name)

    # ---- summary
    def headlines(self) -> dict[str, str]:
        """One line per analysis that ran: what moved most, and where."""
        from .summary import headlines

        return headlines(self)

    def _repr_html_(self) -> str:
        from .summary import to_html

        return to_html(self)

    def __repr__(self) -> str:
        lines = [f"NeuroDiff results: {self.base.get('reference')} -> {self.finetuned.get('reference')}"]
        lines += [f"  {k}: {v}" for k, v in self.headlines().items()]
        return "\n".join(lines)


class Traces:
    """The readable traces of one block: per position the mean difference δ_j read through the
    fine-tune's logit lens, its negation, and Patchscope."""

    def __init__(self, section: Mapping[str, Any]) -> None:
        self.raw = section
        self.layer: int = int(section["layer"])
        self.skip_first: int = int(section.get("skip_first", 0))
        self.nbar_ft: float = float(section["nbar_ft"])

    @property
    def positions(self) -> pd.DataFrame:
        rows = [
            {
                "position": p["position"],
                "n_samples": p["n_samples"],
                "delta_norm": p["delta_norm"],
                "patchscope_scale": (p.get("patchscope") or {}).get("scale"),
                "half_overlap": p.get("half_overlap"),
            }
            for p in self.raw["positions"]
        ]
        return frame(rows, schema.TRACE_POSITIONS)

    def _position(self, position: int | None) -> Mapping[str, Any]:
        want = self.skip_first if position is None else position
        for p in self.raw["positions"]:
            if p["position"] == want:
                return dict(p)
        have = [p["position"] for p in self.raw["positions"]]
        raise ResultsError(f"the traces have no position {want}; they have {have}")

    def tokens(self, position: int | None = None, kind: str = "logit_lens", k: int = 20) -> pd.DataFrame:
        """The top `k` tokens at `position` (default: the first past the BOS), with their
        probabilities; kind: logit_lens, negative or patchscope."""
        p = self._position(position)
        if kind not in ("logit_lens", "negative", "patchscope"):
            raise ResultsError(f"kind `{kind}`: logit_lens, negative or patchscope")
        tokens = (p.get(kind) or {}).get("top_tokens", [])
        rows = [{"rank": i + 1, **t} for i, t in enumerate(tokens[:k])]
        return frame(rows, schema.TOKENS)

    def patchscope_scales(self, position: int | None = None) -> pd.DataFrame:
        """Every scale Patchscope tried at `position`: the tokens all prompts agreed on, and the
        novel ones (not in an unpatched prompt's top 20)."""
        p = self._position(position)
        return frame((p.get("patchscope") or {}).get("scales", []), schema.PATCHSCOPE_SCALES)

    @property
    def overlap(self) -> pd.DataFrame:
        """Top-20 overlap of the logit lens between positions (rows and columns: positions)."""
        index = [p["position"] for p in self.raw["positions"]]
        return pd.DataFrame(self.raw["position_overlap"], index=index, columns=index, dtype="float64")

    def _repr_html_(self) -> str:
        t = self.tokens()
        words = ", ".join(html.escape(str(w)) for w in t["token"].head(10))
        return f"<b>Traces</b> at block {self.layer}, position {self.skip_first}: {words}"
