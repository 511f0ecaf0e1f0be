"""Finds the user's torch and checks it is the one the bundled binary was linked against.

The wheel carries no libtorch: the `neurodiff` binary links libtorch dynamically and loads it from
the torch package installed beside it. libtorch has no stable ABI across releases, so any other
torch version must be refused at import, before a binary that would crash is ever started.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

from ._build import PACKAGE_VERSION, TORCH_VERSION


class TorchVersionError(ImportError):
    """The installed torch is not the version this wheel's binary was built against."""


def _release(version: str) -> str:
    """`2.11.0+cu130` -> `2.11.0`: a local label (CUDA, CPU) does not change the ABI."""
    return version.split("+", 1)[0]


def installed_torch_version() -> str | None:
    """The installed torch's version from its metadata, without importing torch (seconds)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_torch() -> str:
    """The installed torch's version; raises TorchVersionError naming both versions otherwise."""
    found = installed_torch_version()
    if found is None:
        raise TorchVersionError(
            f"neurodiff {PACKAGE_VERSION} needs torch {TORCH_VERSION} (its binary loads that "
            f"libtorch), but torch is not installed: pip install torch=={TORCH_VERSION}"
        )
    if _release(found) != TORCH_VERSION:
        raise TorchVersionError(
            f"neurodiff {PACKAGE_VERSION} was built against torch {TORCH_VERSION}, but torch "
            f"{found} is installed; libtorch has no stable ABI between releases. Install torch "
            f"{TORCH_VERSION} (pip install torch=={TORCH_VERSION}) or a neurodiff wheel built "
            f"for torch {found}."
        )
    return found


def libtorch_dir() -> Path:
    """The directory holding the installed torch's shared libraries (libtorch_cpu.so, ...)."""
    override = os.environ.get("NEURODIFF_LIBTORCH_DIR")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise TorchVersionError(f"torch {TORCH_VERSION} is not importable from this Python")
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    if not (lib / "libtorch_cpu.so").exists() and not (lib / "libtorch_cpu.dylib").exists():
        raise TorchVersionError(f"torch's libraries are not where torch {TORCH_VERSION} keeps them: {lib}")
    return lib
