"""A trained GistNet with the frozen teacher it reads and the tokenizer it was trained
with: the one loader behind the gist engine, the evaluation and training's teacher.

A checkpoint names its teacher and tokenizer; a caller may name others in their place (a
checkpoint trained on a dataset without metadata names none). Whatever the names, the
teacher must read inputs as wide as the gists and have the layers the GistNet reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gistnet.bounds import ModelBounds
from gistnet.checkpoint import load_checkpoint
from gistnet.errors import ConfigError
from gistnet.model import GistNet
from gistnet.pretrained import check_teacher_weights
from gistnet.teacher import check_teacher_layers, hidden_size_of, load_teacher, load_tokenizer


@dataclass
class LoadedGistNet:
    model: GistNet  # in eval mode, on the device asked for
    info: dict[str, Any]  # the checkpoint's info (gistnet.checkpoint.read_checkpoint_info)
    teacher: torch.nn.Module
    teacher_name: str
    # None when neither the checkpoint nor the caller names one: token ids need none.
    tokenizer: Any | None
    tokenizer_name: str | None


def load_teacher_for(
    name: str,
    *,
    dtype: str,
    device: str | torch.device,
    width: int,
    width_of: str,
    remedy: str,
    teacher_layers=None,
) -> torch.nn.Module:
    """The teacher `name`, refused unless it reads inputs `width` wide (the width of
    `width_of`, e.g. "the checkpoint's gists") and has the `teacher_layers` a GistNet reads.
    `remedy` ends the width error: what a person should do instead."""
    teacher = load_teacher(name, dtype=dtype, device=device)
    if hidden_size_of(teacher) != width:
        raise ConfigError(
            f"teacher {name!r} reads inputs of width {hidden_size_of(teacher)} but "
            f"{width_of} have width {width}: {remedy}"
        )
    check_teacher_layers(teacher.config, teacher_layers)
    return teacher


def load_gistnet(
    path: str | Path,
    *,
    device: torch.device,
    teacher_model: str | None = None,
    tokenizer: str | None = None,
    teacher_dtype: str | None = None,
    missing_teacher: Callable[[], Exception],
    remedy: str,
    check: Callable[[GistNet, dict[str, Any]], None] | None = None,
    bounds: ModelBounds | None = None,
) -> LoadedGistNet:
    """The checkpoint at `path` with its teacher and tokenizer, each the one named here,
    else the one the checkpoint names; the teacher in `teacher_dtype`, else the checkpoint's.
    `missing_teacher()` is the error raised when neither names a teacher; `remedy` ends the
    error for a teacher of another width; `check(model, info)` runs before the teacher
    loads, for what the caller needs of the checkpoint itself; `bounds`: the largest model
    the checkpoint may ask for (load_checkpoint)."""
    model, info = load_checkpoint(path, device=device, bounds=bounds)
    if check is not None:
        check(model, info)
    trained_teacher = info.get("teacher") or {}
    teacher_name = teacher_model or trained_teacher.get("model")
    if teacher_name is None:
        raise missing_teacher()
    check_teacher_weights(info, teacher_name)
    teacher = load_teacher_for(
        teacher_name,
        dtype=teacher_dtype or trained_teacher.get("dtype", "float32"),
        device=device,
        width=model.config.hidden_size,
        width_of="the checkpoint's gists",
        remedy=remedy,
        teacher_layers=model.config.teacher_layers,
    )
    tokenizer_name = tokenizer or info.get("tokenizer")
    return LoadedGistNet(
        model=model,
        info=info,
        teacher=teacher,
        teacher_name=teacher_name,
        tokenizer=load_tokenizer(tokenizer_name) if tokenizer_name is not None else None,
        tokenizer_name=tokenizer_name,
    )
