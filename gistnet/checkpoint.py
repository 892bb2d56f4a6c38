"""Checkpoints that stand on their own: weights plus everything needed to rebuild and use them.

A checkpoint is a plain dict of tensors, numbers and strings saved with torch.save and read
back with `weights_only=True`, so loading one never unpickles code; or a folder in Hugging
Face's layout (gistnet.pretrained; `export_pretrained` writes one from a checkpoint). Every
reader here takes either.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from gistnet.bounds import ModelBounds
from gistnet.errors import ConfigError, ShardError
from gistnet.files import atomic_write
from gistnet.model import GistNet, GistNetConfig
from gistnet.pretrained import (
    is_pretrained,
    read_pretrained,
    save_pretrained,
    teacher_weights_sha256,
)

FORMAT = "gistnet-checkpoint/1"


def save_checkpoint(
    path: str | Path,
    *,
    model: GistNet,
    training_config: dict[str, Any],
    metrics: dict[str, Any],
    dataset: dict[str, Any],
    teacher: dict[str, Any],
    tokenizer: str | None,
) -> Path:
    """Write atomically: a crash mid-save never leaves a truncated file under `path`.

    The teacher's model and the tokenizer may be None when the dataset did not name them
    (an mse run on a shard without metadata); the gist engine then asks for them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if teacher.get("model") and "weights_sha256" not in teacher:
        # Gists are tied to the exact teacher: its weights' hash travels with them.
        teacher = {**teacher, "weights_sha256": teacher_weights_sha256(teacher["model"])}
    payload = {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "training_config": training_config,
        "metrics": metrics,
        "dataset": dataset,
        "teacher": teacher,
        "tokenizer": tokenizer,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with atomic_write(path, what=f"the checkpoint {path.name}") as tmp:
        torch.save(payload, tmp)
    return path


def _read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir() and is_pretrained(path):
        return {**read_pretrained(path), "format": FORMAT}
    if not path.is_file():
        raise ShardError(f"checkpoint {str(path)!r} does not exist; train a model first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ShardError(f"{str(path)!r} is not a GistNet checkpoint: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ShardError(f"{str(path)!r} is not a GistNet checkpoint (format {FORMAT} expected)")
    return payload


def _info(payload: dict[str, Any]) -> dict[str, Any]:
    cfg = payload["model_config"]
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return {**info, "block_size": cfg["block_size"], "hidden_size": cfg["hidden_size"]}


def read_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Everything but the weights: configs, metrics, dataset, teacher, tokenizer."""
    return _info(_read(path))


def export_pretrained(
    path: str | Path, folder: str | Path, *, evaluation: dict[str, Any] | None = None
) -> Path:
    """The checkpoint at `path` as a Hugging Face style folder (gistnet.pretrained), its
    model card carrying `evaluation`'s figures when given."""
    payload = _read(path)
    return save_pretrained(
        folder, state_dict=payload["state_dict"], info=_info(payload), evaluation=evaluation
    )


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu", bounds: ModelBounds | None = None
):
    """-> (GistNet in eval mode on `device`, info dict as read_checkpoint_info gives).

    The model its config describes is held to `bounds` (by default the operator's, from
    GISTNET_LIMITS) before any of it is built: the file says how large it is, not what a
    trusted run made."""
    payload = _read(path)
    model_config = payload.get("model_config")
    if not isinstance(model_config, dict):
        raise ShardError(f"{str(path)!r} is not a GistNet checkpoint: it has no model_config")
    bounds = bounds if bounds is not None else ModelBounds.from_environment()
    bounds.check(model_config, where=f"checkpoint {Path(path).name}: model_config")
    try:
        config = GistNetConfig(**payload["model_config"])
    except (TypeError, ConfigError) as err:
        raise ShardError(
            f"{str(path)!r} holds a model config this version cannot read: {err}"
        ) from None
    model = GistNet(config)
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ShardError(
            f"{str(path)!r}: its weights do not fit the model its config describes: {err}"
        ) from None
    model.to(device).eval()
    return model, _info(payload)
