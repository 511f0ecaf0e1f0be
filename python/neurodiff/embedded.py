"""The embedded audit from Python: `neurodiff audit` on this machine, no servers, and the test
organisms (`neurodiff organisms`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from . import _binary
from .results import Results

ModelRef = str | os.PathLike[str] | Any


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _flag_args(flags: dict[str, Any]) -> list[str]:
    """`traces_samples=64` -> `--traces-samples 64`; True -> a bare switch; None is left out."""
    args: list[str] = []
    for name, value in flags.items():
        if value is None or value is False:
            continue
        if value is True:
            args.append(_flag(name))
        elif isinstance(value, (list, tuple)):
            args += [_flag(name), ",".join(str(v) for v in value)]
        else:
            args += [_flag(name), str(value)]
    return args


@contextmanager
def _checkpoint(model: ModelRef, tokenizer: Any = None) -> Iterator[str]:
    """A reference the binary can open: a path or hub id as given, or a transformers model in
    memory written to a temporary safetensors checkpoint (removed afterwards)."""
    if isinstance(model, (str, os.PathLike)):
        yield os.fspath(model)
        return
    save = getattr(model, "save_pretrained", None)
    if save is None:
        raise TypeError(
            f"a model must be a path, a hub id or a transformers model (save_pretrained); got {type(model).__name__}"
        )
    with tempfile.TemporaryDirectory(prefix="neurodiff-model-") as d:
        save(d, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(d)
        yield d


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar: a widget in Jupyter when ipywidgets is installed, else text."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        from tqdm import tqdm as text

        return text(**kwargs)
    from tqdm.auto import tqdm as auto

    return auto(**kwargs)


class _Bar:
    """A tqdm bar fed by the binary's progress lines (nothing when progress is off)."""

    def __init__(self, enabled: bool, desc: str) -> None:
        self.bar: Any = None
        self.enabled = enabled
        self.desc = desc

    def __call__(self, pos: int, total: int, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = progress_bar(total=total, desc=self.desc, unit="step")
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.n = pos
        if msg:
            self.bar.set_postfix_str(msg, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def audit(
    base: ModelRef,
    finetuned: ModelRef | None = None,
    *,
    adapter: str | os.PathLike[str] | None = None,
    analyses: Sequence[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    tokenizer: Any = None,
    **flags: Any,
) -> Results:
    """Audits `finetuned` (or `adapter`) against `base` on this machine; its Results.

    Models are checkpoint directories, hub ids (`org/name[@revision]`) or transformers models in
    memory (written to a temporary checkpoint; pass `tokenizer` for analyses that read text).
    Every other keyword is the CLI flag of the same name (`layers="0-3"`, `max_samples=64`,
    `dtype="bf16"`, `traces_samples=256`); `neurodiff audit --help` lists them.
    """
    if (finetuned is None) == (adapter is None):
        raise ValueError("give a fine-tuned model or an adapter (adapter=PATH), not both")
    target = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="neurodiff-audit-"))
    if out is None:
        target.rmdir()  # the binary refuses a directory that is not an earlier report
    bar = _Bar(progress, "audit")
    with ExitStack() as stack:
        base_ref = stack.enter_context(_checkpoint(base, tokenizer))
        args = ["audit", base_ref]
        if finetuned is not None:
            args.append(stack.enter_context(_checkpoint(finetuned, tokenizer)))
        if adapter is not None:
            args += ["--adapter", os.fspath(adapter)]
        if analyses is not None:
            args += ["--analyses", ",".join(analyses)]
        args += ["--out", str(target), *_flag_args(flags)]
        try:
            _binary.run(args, progress=bar)
        finally:
            bar.close()
    return Results.from_path(target)


def organisms(
    out: str | os.PathLike[str],
    *,
    trained: bool = False,
    seed: int = 0,
    progress: bool = True,
    **flags: Any,
) -> dict[str, Path]:
    """Writes the test organisms under `out` (planted: base, rank-update, attn-scaled, lora;
    trained: base and {domain}-{full,blocks,lora}, trained once and cached); each organism's
    directory by name. Each holds its ground_truth.json, which an audit grades against."""
    root = Path(out)
    bar = _Bar(progress, "organisms")
    args = ["organisms", "--out", str(root), "--seed", str(seed), *_flag_args({"trained": trained, **flags})]
    try:
        _binary.run(args, progress=bar)
    finally:
        bar.close()
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir()}
