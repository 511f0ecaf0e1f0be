"""The one-line headline per analysis, and the rich summary a notebook shows for Results."""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .results import Results


def _g(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _weights(s: Mapping[str, Any]) -> str:
    tensors = s.get("tensors", [])
    layers = [x for x in s.get("layers", []) if x.get("layer") is not None and x.get("rel_fro") is not None]
    if not tensors:
        return "no tensors compared"
    top = tensors[0]
    line = f"{len(tensors)} tensors; most changed {top['name']} (rel_fro {_g(top.get('rel_fro'))})"
    if layers:
        moved = max(layers, key=lambda x: x["rel_fro"])
        line += f"; block {moved['layer']} moved most (rel_fro {_g(moved['rel_fro'])})"
    return line


def _activations(s: Mapping[str, Any]) -> str:
    rows = [x for x in s.get("layers", []) if x.get("hook") == "hook_resid_post"]
    if not rows:
        return "no blocks"
    top = max(rows, key=lambda x: x.get("mean_rel_diff") or 0.0)
    first = next((x for x in rows if (x.get("mean_rel_diff") or 0.0) > 1e-6), None)
    line = f"largest relative difference at block {top['layer']} ({_g(top.get('mean_rel_diff'))})"
    if first is not None:
        line += f"; first differs at block {first['layer']}"
    return line


def _lens(s: Mapping[str, Any]) -> str:
    rows = s.get("layers", [])
    out = s.get("output") or {}
    line = f"output KL {_g(out.get('kl_mean'))} nats"
    if rows:
        top = max(rows, key=lambda x: x.get("kl_mean") or 0.0)
        line += f"; largest at block {top['layer']} ({_g(top.get('kl_mean'))})"
    return line


def _traces(s: Mapping[str, Any]) -> str:
    skip = s.get("skip_first", 0)
    at = next((p for p in s.get("positions", []) if p.get("position") == skip), None)
    if at is None:
        return f"block {s.get('layer')}"
    words = [str(t["token"]).strip() for t in (at.get("logit_lens") or {}).get("top_tokens", [])[:8]]
    return f"block {s.get('layer')}, position {skip}: {', '.join(words)}"


def _cmap(s: Mapping[str, Any]) -> str:
    cells = [c for c in s.get("cells", []) if c.get("component") in ("attn_out", "mlp_out")]
    if not cells:
        return "no cells"
    top = max(cells, key=lambda c: c.get("recovery") or 0.0)
    return f"largest recovery {_g(top.get('recovery'))} at block {top['layer']} {top['component']} ({top['direction']})"


def _stitching(s: Mapping[str, Any]) -> str:
    return f"loss base {_g(s.get('loss_base'))}, fine-tune {_g(s.get('loss_ft'))} nats"


def _steering(s: Mapping[str, Any]) -> str:
    chosen = s.get("chosen", [])
    parts = [f"{c['target']} block {c['layer']} α={_g(c.get('alpha'))}" for c in chosen[:3]]
    return "chosen: " + ("; ".join(parts) if parts else "none")


def _dictionary(s: Mapping[str, Any]) -> str:
    classes = s.get("classes") or {}
    return (
        f"block {s.get('layer')}: FVE {_g(s.get('fve_ft'))}, {classes.get('ft_only', 0)} fine-tune-only "
        f"latents ({s.get('ft_only_low_nu', 0)} with low ν)"
    )


_HEADLINES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "weights": _weights,
    "activations": _activations,
    "logit_lens": _lens,
    "traces": _traces,
    "cmap": _cmap,
    "stitching": _stitching,
    "steering": _steering,
    "crosscoder": _dictionary,
    "sae_diff": _dictionary,
}


def headlines(r: Results) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, section in r.raw.get("analyses", {}).items():
        make = _HEADLINES.get(name)
        try:
            out[name] = make(section) if make else "ran"
        except (KeyError, TypeError, ValueError) as e:
            out[name] = f"(unreadable: {e})"
    grades = r.grades
    if grades:
        out["grades"] = (
            f"{grades.get('organism')}: logit-lens P@20 {_g(grades.get('mean_logit_lens_p20'))}, "
            f"Patchscope P@20 {_g(grades.get('mean_patchscope_p20'))}"
        )
    return out


def _link(path: os.PathLike[str] | str, label: str) -> str:
    try:
        href = os.path.relpath(path)
    except ValueError:
        href = str(path)
    return f'<a href="{html.escape(href)}" target="_blank">{html.escape(label)}</a>'


def to_html(r: Results) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td style='text-align:left'><b>{e(k)}</b></td><td style='text-align:left'>{e(v)}</td></tr>"
        for k, v in headlines(r).items()
    )
    links = ""
    if r.directory is not None:
        files = [r.directory / "report.html", *sorted((r.directory / "plots").glob("*.svg"))]
        links = " · ".join(_link(f, f.name) for f in files if f.is_file())
    base, ft = r.base.get("reference", "?"), r.finetuned.get("reference", "?")
    return (
        f"<div><p><b>NeuroDiff audit</b> {e(str(base))} → {e(str(ft))}</p>"
        f"<table>{rows}</table>"
        + (f"<p>{links}</p>" if links else "")
        + "</div>"
    )
