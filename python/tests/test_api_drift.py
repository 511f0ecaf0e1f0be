"""The client's models and operations are what the API's own OpenAPI document generates."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import neurodiff
from neurodiff import _binary

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_python_client", ROOT / "scripts" / "gen_python_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_python_client"] = module
    spec.loader.exec_module(module)
    return module


def _document() -> dict[str, object]:
    doc = json.loads(_binary.run(["openapi"]))
    assert isinstance(doc, dict)
    return doc


def test_the_client_is_generated_from_the_served_document() -> None:
    generated = _generator().generate(_document())
    shipped = (Path(neurodiff.__file__).parent / "_api.py").read_text()
    assert shipped == generated, (
        "python/neurodiff/_api.py differs from what `neurodiff openapi` generates: run "
        "`neurodiff openapi > o.json && python scripts/gen_python_client.py o.json python/neurodiff/_api.py`"
    )


def test_a_changed_document_is_caught(tmp_path: Path) -> None:
    """The check is not vacuous: a new field in a response changes the generated client."""
    doc = _document()
    schemas = doc["components"]["schemas"]  # type: ignore[index]
    schemas["AuditView"]["properties"]["new_field"] = {"type": "string"}
    (tmp_path / "o.json").write_text(json.dumps(doc))
    shipped = Path(neurodiff.__file__).parent / "_api.py"
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_python_client.py"), "--check", str(tmp_path / "o.json"), str(shipped)],
        capture_output=True, text=True,
    )
    assert check.returncode == 1
    assert "+    new_field: str | None = None" in check.stdout


def test_every_operation_has_a_method() -> None:
    doc = _document()
    ops = {op["operationId"] for item in doc["paths"].values() for op in item.values()}  # type: ignore[attr-defined]
    methods = {m for m in dir(neurodiff.Client) if not m.startswith("_")}
    assert ops <= methods, ops - methods
