"""Runs the bundled `neurodiff` binary with the user's libtorch, and follows its progress.

The wheel installs the Rust binary as a script of the environment; it is started as a child
process rather than loaded into Python, so a libtorch abort or an out-of-memory kill ends the
audit, never the notebook's kernel, and the Python side runs exactly the code path the CLI runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from ._build import TORCH_VERSION
from ._torch import libtorch_dir


class NeuroDiffError(RuntimeError):
    """The binary failed; the message is its own (it names the file, tensor or field)."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


def binary() -> Path:
    """The `neurodiff` binary: $NEURODIFF_BIN, else the one the wheel put beside this Python."""
    override = os.environ.get("NEURODIFF_BIN")
    if override:
        return Path(override)
    candidates = [
        Path(sysconfig.get_path("scripts")) / "neurodiff",
        Path(sys.executable).parent / "neurodiff",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    found = shutil.which("neurodiff")
    if found:
        return Path(found)
    raise NeuroDiffError(
        "the neurodiff binary is not installed beside this Python (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); reinstall the wheel or set NEURODIFF_BIN",
        127,
    )


def child_env() -> dict[str, str]:
    """The environment the binary runs in: the installed torch's libraries first on the path."""
    env = dict(os.environ)
    lib = str(libtorch_dir())
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = lib if not old else f"{lib}{os.pathsep}{old}"
    env["NEURODIFF_PROGRESS"] = "jsonl"
    return env


Progress = Callable[[int, int, str], None]


def run(args: Sequence[str], progress: Progress | None = None) -> str:
    """Runs `neurodiff ARGS`; its standard output. Progress lines from the binary's standard error
    (`{"progress": {...}}`) go to `progress`; a failure raises NeuroDiffError with its message."""
    cmd = [str(binary()), *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        encoding="utf-8",
        errors="replace",
    )
    tail: deque[str] = deque(maxlen=40)
    assert proc.stderr is not None and proc.stdout is not None
    # Standard output is drained beside standard error, so neither pipe can fill and block.
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read() if proc.stdout else ""), daemon=True)
    reader.start()
    try:
        for line in proc.stderr:
            event = _progress_event(line)
            if event is None:
                tail.append(line.rstrip("\n"))
            elif progress is not None:
                progress(*event)
    except BaseException:
        # An interrupted notebook cell (or a failing callback) must not leave the audit running.
        proc.kill()
        proc.wait()
        raise
    reader.join()
    out = "".join(chunks)
    code = proc.wait()
    if code != 0:
        lines = [line for line in tail if line.strip()]
        message = "\n".join(lines[-12:]) or f"exited with status {code}"
        if "cannot open shared object file" in message:
            message += (
                f"\n(the binary loads libtorch from {libtorch_dir()}: torch {TORCH_VERSION} from PyPI, "
                "whose Linux build carries libtorch_cuda; a +cpu build lacks it)"
            )
        raise NeuroDiffError(f"neurodiff {args[0] if args else ''}: {message}", code)
    return out


def _progress_event(line: str) -> tuple[int, int, str] | None:
    if not line.startswith('{"progress"'):
        return None
    try:
        p = json.loads(line)["progress"]
        return int(p["pos"]), int(p["len"]), str(p.get("msg", ""))
    except (ValueError, KeyError, TypeError):
        return None
