"""The package itself: versions that agree, the torch check at import, the bundled binary."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import neurodiff as nd
from neurodiff import _binary, _build, _torch

ROOT = Path(__file__).resolve().parents[2]


def test_versions_agree() -> None:
    pyproject = tomllib.loads((ROOT / "python" / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == _build.PACKAGE_VERSION
    assert f"torch=={_build.TORCH_VERSION}" in pyproject["project"]["dependencies"]
    requirements = (ROOT / "scripts" / "requirements.txt").read_text()
    assert re.search(rf"^torch=={re.escape(_build.TORCH_VERSION)}$", requirements, re.M)
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    workspace = cargo["workspace"]["package"]["version"]
    assert _build.PACKAGE_VERSION == f"{workspace}+torch{_build.TORCH_VERSION}"
    out = _binary.run(["--version"]).split()
    assert out == ["neurodiff", workspace]
    if os.environ.get("NEURODIFF_EXPECT_INSTALLED") == "1":
        assert importlib.metadata.version("neurodiff") == _build.PACKAGE_VERSION


def _import_with_torch(tmp_path: Path, version: str | None) -> subprocess.CompletedProcess[str]:
    """Imports neurodiff in a new Python whose first sys.path entry holds a torch of `version`
    (its metadata only), or hides torch entirely (None)."""
    fake = tmp_path / "site"
    fake.mkdir()
    env = dict(os.environ)
    if version is not None:
        info = fake / f"torch-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        code = "import neurodiff"
    else:
        # importlib.metadata finds no torch when its finder is told so.
        code = (
            "import importlib.metadata as m\n"
            "real = m.version\n"
            "def version(name):\n"
            "    if name == 'torch': raise m.PackageNotFoundError(name)\n"
            "    return real(name)\n"
            "m.version = version\n"
            "import neurodiff"
        )
    package_root = str(Path(nd.__file__).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([str(fake), package_root])
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_another_torch_is_refused_at_import_naming_both(tmp_path: Path) -> None:
    r = _import_with_torch(tmp_path, "2.10.0")
    assert r.returncode != 0
    assert "TorchVersionError" in r.stderr
    assert "torch 2.10.0 is installed" in r.stderr
    assert f"built against torch {_build.TORCH_VERSION}" in r.stderr


def test_missing_torch_is_refused(tmp_path: Path) -> None:
    r = _import_with_torch(tmp_path, None)
    assert r.returncode != 0
    assert "torch is not installed" in r.stderr


def test_a_local_label_is_the_same_torch(tmp_path: Path) -> None:
    r = _import_with_torch(tmp_path, f"{_build.TORCH_VERSION}+cu130")
    assert r.returncode == 0, r.stderr


def test_libtorch_comes_from_the_installed_torch() -> None:
    import torch

    lib = _torch.libtorch_dir()
    assert lib == Path(torch.__file__).parent / "lib"
    env = _binary.child_env()
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(lib)


def test_the_wheel_s_binary_finds_the_torch_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wheel's binary carries no path of the machine that built it: in the venv it finds the
    venv's torch by its run path ($ORIGIN/../lib/pythonX.Y/site-packages/torch/lib); moved
    anywhere else it cannot start on its own, and the package's launcher still runs it."""
    if os.environ.get("NEURODIFF_EXPECT_INSTALLED") != "1":
        pytest.skip("checks the wheel's binary (scripts/python_test.sh)")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    installed = _binary.binary()
    alone = subprocess.run([str(installed), "--version"], env=env, capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr
    moved = tmp_path / "bin" / "neurodiff"
    moved.parent.mkdir()
    shutil.copy2(installed, moved)
    bare = subprocess.run([str(moved), "--version"], env=env, capture_output=True, text=True)
    assert bare.returncode != 0
    assert "libtorch" in bare.stderr or "libc10" in bare.stderr, bare.stderr
    monkeypatch.setenv("NEURODIFF_BIN", str(moved))
    assert _binary.run(["--version"]).startswith("neurodiff ")
