"""examples/quickstart.ipynb runs end to end: the embedded audit of a trained organism, its traces
and activation trajectory, and the team database of a real service."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import Service

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_notebook_executes(service: Service, trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    work = service.root / "notebook"  # under the service's allowed root: its worker reads the organisms
    work.mkdir()
    monkeypatch.setenv("NEURODIFF_SERVER", service.url)
    monkeypatch.setenv("NEURODIFF_TOKEN", service.token("py-notebook"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)  # type: ignore[no-untyped-call]
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    nbformat.write(nb, str(work / "quickstart.executed.ipynb"))  # type: ignore[no-untyped-call]

    def outputs(i: int) -> str:
        return json.dumps(nb.cells[i].get("outputs", []))

    texts = [outputs(i) for i in range(len(nb.cells))]
    everything = "\n".join(texts)
    assert "Traceback" not in everything
    # The summary, the trajectory figure, the traces' tokens, the grade and the database page.
    assert any("NeuroDiff audit" in t for t in texts)
    assert any("image/png" in t for t in texts), "no figure was drawn"
    assert any("image/svg+xml" in t for t in texts), "no report SVG was shown"
    assert any("prob" in t and "token" in t for t in texts)
    assert "mean_logit_lens_p20" in everything
    assert "across the team's audits" in everything
    assert "Set NEURODIFF_SERVER" not in everything
    assert os.path.isdir(work / "runs" / "a1")
