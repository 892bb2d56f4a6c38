"""Checkpoints that stand on their own: weights plus everything needed to rebuild and use them.

A checkpoint is a plain dict of tensors, numbers and strings saved with torch.save and read
back with `weights_only=True`, so loading one never unpickles code; or a folder in Hugging
Face's layout (gistnet.pretrained; training writes one beside its gistnet.pt,
`export_pretrained` one from a checkpoint). Every reader of a trained model here takes
either. Two kinds:

    gistnet.pt   the trained model: weights, its config, the run's configs and metrics,
                 the dataset, teacher and tokenizer it was trained with
    resume file  a run in progress (`save_resume` / `load_resume`): the step reached, the
                 model's and optimizer's state and the history so far; a run continued
                 from one draws the same batches (they depend only on the seed and step)

Both are written to a temporary name and renamed, so a crash mid-save never leaves a
truncated file that could be taken for a finished one.
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
RESUME_FORMAT = "gistnet-resume/1"


def save_checkpoint(
    path: str | Path,
    *,
    model: GistNet,
    training_config: dict[str, Any],
    metrics: dict[str, Any],
    dataset: dict[str, Any],
    teacher: dict[str, Any],
    tokenizer: str | None,
    folder: str | Path | None = None,
) -> Path:
    """Write atomically: a crash mid-save never leaves a truncated file under `path`.

    With `folder`, the same model is also written there as a Hugging Face style folder
    (gistnet.pretrained, whole or not at all), from the same record: the teacher's
    weights are hashed once for both. The teacher's model and the tokenizer may be None
    when the dataset did not name them (an mse run on a shard without metadata); the gist
    engine then asks for them.
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
    if folder is not None:
        save_pretrained(folder, state_dict=payload["state_dict"], info=_info(payload))
    return path


def _read(path: str | Path, *, expected: str = FORMAT, map_location="cpu") -> dict[str, Any]:
    path = Path(path)
    if expected == FORMAT and path.is_dir() and is_pretrained(path):
        return {**read_pretrained(path), "format": FORMAT}
    what = "GistNet checkpoint" if expected == FORMAT else "GistNet resume checkpoint"
    if not path.is_file():
        raise ShardError(f"checkpoint {str(path)!r} does not exist; train a model first")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ShardError(f"{str(path)!r} is not a {what}: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != expected:
        raise ShardError(f"{str(path)!r} is not a {what} (format {expected} expected)")
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


# --------------------------------------------------------------------------- resume


def save_resume(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    history: list[dict[str, Any]],
) -> Path:
    """The run after `step` steps, to continue from with `load_resume`."""
    payload = {
        "format": RESUME_FORMAT,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": history,
    }
    path = Path(path)
    with atomic_write(path, what=f"the resume checkpoint {path.name}") as tmp:
        torch.save(payload, tmp)
    return path


def load_resume(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: str | torch.device = "cpu",
) -> tuple[int, list[dict[str, Any]]]:
    """Put the state `save_resume` wrote back into `model` and `optimizer` (built as the run
    built them); -> (the step to continue from, the history up to it). A file of another
    model refuses, naming what to do: a run must not continue from weights it never had."""
    payload = _read(path, expected=RESUME_FORMAT, map_location=device)
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        step, history = int(payload["step"]), list(payload["history"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise ShardError(
            f"resume checkpoint {str(path)!r} does not fit this run's model: {err}; delete it "
            f"to train from the start"
        ) from None
    return step, history
