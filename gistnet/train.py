"""Training GistNet on a prepared shard.

`train_gistnet` is the one training loop: the CLI passes a callback that prints, a Celery
task one that records progress in the database and a cancel check that reads it. With a
`resume_path` it writes resume checkpoints and continues from one after a crash, and the
resumed run gives the same losses as an uninterrupted one (batches depend only on the
seed and the step). With `training.processes` > 1 the same loop runs in that many
processes under DDP (`gistnet.distributed`) and gives the same losses.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gistnet.checkpoint import save_checkpoint
from gistnet.config import RunConfig, TrainingConfig
from gistnet.devices import resolve_device
from gistnet.distributed import Ranks, launch_training
from gistnet.errors import Cancelled, ConfigError
from gistnet.model import GistNet, GistNetConfig
from gistnet.shards import (
    Shard,
    describe_dataset,
    missing_teacher_error,
    open_shard,
    split_path,
)

CHECKPOINT_NAME = "gistnet.pt"


@dataclass
class TrainProgress:
    step: int
    max_steps: int
    loss: float
    running_loss: float  # mean of the last 50 steps' losses
    examples_per_sec: float
    lr: float
    val_loss: float | None = None  # set on the steps where the validation split was scored
    stats: dict[str, float] = field(default_factory=dict)  # objective parts, e.g. kl and nll


@dataclass
class TrainResult:
    checkpoint_path: Path
    steps: int
    final_loss: float
    running_loss: float
    val_loss: float | None
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int | None = None


def model_config_for(run: RunConfig, metadata: dict[str, Any]) -> GistNetConfig:
    """The run's `model:` section with the dataset's width and block size filled in; a
    value the run sets that disagrees with the dataset is an error."""
    m = run.model
    data_d, data_t = int(metadata["teacher_hidden_size"]), int(metadata["block_size"])
    if m.hidden_size is not None and m.hidden_size != data_d:
        raise ConfigError(
            f"model.hidden_size is {m.hidden_size} but the dataset's teacher_hidden_size is "
            f"{data_d}: gists live in the teacher's space, so set hidden_size to {data_d} or omit it"
        )
    if m.block_size is not None and m.block_size != data_t:
        raise ConfigError(
            f"model.block_size is {m.block_size} but the dataset was cut into blocks of {data_t} "
            f"tokens: set block_size to {data_t} or omit it"
        )
    return dataclasses.replace(m, hidden_size=data_d, block_size=data_t)


def batch_indices(step: int, batch_size: int, num_examples: int, seed: int) -> np.ndarray:
    """Examples of one step: a fresh permutation per epoch, a function of (seed, step) alone."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs = positions // num_examples
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
        sel = epochs == epoch
        out[sel] = perm[positions[sel] % num_examples]
    return np.sort(out)  # sorted reads are sequential in the memory-mapped file


def lr_at(step: int, cfg: TrainingConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.max_steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class _Objective:
    """Loss of a batch of gists: mse against gist_target, or substitution through the teacher."""

    def __init__(
        self,
        cfg: TrainingConfig,
        metadata: dict[str, Any],
        device: torch.device,
        dataset_path: Path,
    ):
        self.kind = cfg.objective
        self.device = device
        self.substitution = None
        if self.kind == "substitution":
            from gistnet.substitution import SubstitutionLoss
            from gistnet.teacher import hidden_size_of, load_teacher

            if metadata.get("teacher_model") is None:
                raise missing_teacher_error("the substitution objective", dataset_path)
            # float32 for the gradient's sake, whatever dtype the states were cached in
            dtype = "float32" if device.type == "cpu" else metadata["teacher_dtype"]
            teacher = load_teacher(metadata["teacher_model"], dtype=dtype, device=device)
            width = int(metadata["teacher_hidden_size"])
            if hidden_size_of(teacher) != width:
                raise ConfigError(
                    f"teacher {metadata['teacher_model']!r} reads inputs of width "
                    f"{hidden_size_of(teacher)} but the dataset's states are {width} wide: "
                    f"name the teacher the dataset was prepared with (--teacher)"
                )
            self.substitution = SubstitutionLoss(
                teacher, block_size=int(metadata["block_size"]), nll_weight=cfg.nll_weight
            )

    def __call__(
        self, gists: torch.Tensor, shard: Shard, idx: np.ndarray
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.substitution is None:
            target = torch.from_numpy(shard.gist_target[idx]).to(self.device)
            return F.mse_loss(gists, target), {}
        context = torch.from_numpy(shard.context_input_ids[idx]).long().to(self.device)
        return self.substitution(gists, context)


def _states(shard: Shard, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(shard.teacher_hidden[idx]).to(device, non_blocking=True)


@torch.no_grad()
def evaluate_loss(
    model: GistNet, objective: _Objective, shard: Shard, *, batch_size: int, limit: int | None
) -> float:
    model.eval()
    n = shard.num_examples if limit is None else min(limit, shard.num_examples)
    total = 0.0
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(n, start + batch_size))
        gists = model(_states(shard, idx, objective.device))
        total += objective(gists, shard, idx)[0].item() * len(idx)
    model.train()
    return total / n


def _validation_shard(dataset_path: Path, metadata: dict[str, Any]) -> Shard | None:
    if "validation" not in metadata.get("splits", {}):
        return None
    path = split_path(metadata, dataset_path.parent, "validation")
    if path.resolve() == dataset_path.resolve() or not path.is_file():
        return None
    return open_shard(path)


def _save_resume(path: Path, *, model, optimizer, step: int, history: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": history,
        },
        tmp,
    )
    os.replace(tmp, path)


def train_gistnet(
    *,
    dataset_path: str | Path,
    run_config: RunConfig,
    output_dir: str | Path,
    max_steps: int | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resume_path: str | Path | None = None,
    checkpoint_every: int | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    tokenizer: str | None = None,
    teacher_model: str | None = None,
) -> TrainResult:
    """Train GistNet on the shard at `dataset_path`; save `<output_dir>/gistnet.pt`.

    The shard may come from our preparation, from the seed's tool (with its metadata or
    none): see `describe_dataset`. `tokenizer` and `teacher_model` supply or override the
    dataset's; the substitution objective needs the teacher, mse training only records
    both in the checkpoint (the gist engine needs them later).

    The resume checkpoint is left in place: the caller deletes it once it has recorded the
    result, so a crash between the two resumes instead of starting over. `on_checkpoint`
    gets its path each time one is written (the service publishes it to the artifact store).
    """
    started = time.perf_counter()
    if max_steps is not None:
        run_config = run_config.model_copy(
            update={"training": run_config.training.model_copy(update={"max_steps": max_steps})}
        )
    cfg = run_config.training
    ranks = Ranks.from_env()
    if cfg.processes > 1 and not ranks.active:
        return launch_training(
            processes=cfg.processes,
            dataset_path=dataset_path,
            run_config=run_config,
            output_dir=output_dir,
            on_progress=on_progress,
            should_cancel=should_cancel,
            resume_path=resume_path,
            checkpoint_every=checkpoint_every,
            on_checkpoint=on_checkpoint,
            tokenizer=tokenizer,
            teacher_model=teacher_model,
        )
    dataset_path = Path(dataset_path)
    shard = open_shard(dataset_path)
    metadata = describe_dataset(dataset_path, tokenizer=tokenizer, teacher_model=teacher_model)
    model_cfg = model_config_for(run_config, metadata)
    if shard.hidden_size != model_cfg.hidden_size or shard.block_size != model_cfg.block_size:
        raise ConfigError(
            f"shard {str(dataset_path)!r} holds ({shard.block_size}, {shard.hidden_size}) states "
            f"but its metadata says ({model_cfg.block_size}, {model_cfg.hidden_size})"
        )
    device = ranks.setup(resolve_device(cfg.device))
    # Only rank 0 scores the validation split.
    validation = _validation_shard(dataset_path, metadata) if ranks.is_main else None

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = GistNet(model_cfg).to(device)
    trained = ranks.wrap(model, device)
    optimizer = model.optimizer(lr=cfg.lr, weight_decay=cfg.weight_decay)
    objective = _Objective(cfg, metadata, device, dataset_path)

    history: list[dict[str, Any]] = []
    start_step, resumed_from = 0, None
    resume_path = Path(resume_path) if resume_path is not None else None
    if resume_path is not None and resume_path.is_file():
        state = torch.load(resume_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = resumed_from = int(state["step"])
        history = list(state["history"])

    recent: deque[float] = deque((h["loss"] for h in history[-50:]), maxlen=50)
    loss_value, val_loss, speed = float("nan"), None, 0.0
    model.train()
    for step in range(start_step, cfg.max_steps):
        if ranks.agree(should_cancel is not None and should_cancel()):
            raise Cancelled(f"training cancelled at step {step} of {cfg.max_steps}")
        tick = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = batch_indices(step, cfg.batch_size, shard.num_examples, cfg.seed)
        idx, weight = ranks.part(idx)  # all of it in one process
        gists = trained(_states(shard, idx, device))  # (B, T, D) -> (B, D)
        loss, stats = objective(gists, shard, idx)
        optimizer.zero_grad(set_to_none=True)
        (loss * weight if ranks.active else loss).backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()

        loss_value, stats = ranks.batch_mean(loss.item(), stats, len(idx), cfg.batch_size)
        if not math.isfinite(loss_value):
            raise ConfigError(
                f"the loss became {loss_value} at step {step + 1}: lower training.lr "
                f"(now {cfg.lr}) or set training.grad_clip"
            )
        recent.append(loss_value)
        elapsed = time.perf_counter() - tick
        speed = (
            cfg.batch_size / elapsed
            if speed == 0.0
            else 0.9 * speed + 0.1 * cfg.batch_size / elapsed
        )
        done = step + 1
        val_loss = None
        if validation is not None and (done % cfg.eval_every == 0 or done == cfg.max_steps):
            val_loss = evaluate_loss(
                model, objective, validation, batch_size=cfg.batch_size, limit=cfg.eval_examples
            )
        record = {"step": done, "loss": loss_value, "lr": lr, **stats}
        if val_loss is not None:
            record["val_loss"] = val_loss
        history.append(record)
        if on_progress is not None:
            on_progress(
                TrainProgress(
                    done,
                    cfg.max_steps,
                    loss_value,
                    sum(recent) / len(recent),
                    speed,
                    lr,
                    val_loss,
                    stats,
                )
            )
        if (
            ranks.is_main
            and resume_path is not None
            and checkpoint_every
            and done % checkpoint_every == 0
            and done < cfg.max_steps
        ):
            _save_resume(resume_path, model=model, optimizer=optimizer, step=done, history=history)
            if on_checkpoint is not None:
                on_checkpoint(resume_path)

    final_val = next((h["val_loss"] for h in reversed(history) if "val_loss" in h), None)
    running = sum(recent) / len(recent) if recent else float("nan")
    metrics = {
        "steps": cfg.max_steps,
        "final_loss": loss_value if history else float("nan"),
        "running_loss": running,
        "val_loss": final_val,
        "objective": cfg.objective,
    }
    checkpoint = Path(output_dir) / CHECKPOINT_NAME
    if not ranks.is_main:  # rank 0 writes the checkpoint; the others wait for it and leave
        ranks.finish()
        return TrainResult(
            checkpoint,
            cfg.max_steps,
            metrics["final_loss"],
            running,
            final_val,
            time.perf_counter() - started,
            history,
            resumed_from,
        )
    save_checkpoint(
        checkpoint,
        model=model,
        training_config=cfg.model_dump(),
        metrics=metrics,
        dataset={
            "name": metadata["dataset_name"],
            "fingerprint": metadata["fingerprint"],
            "path": str(dataset_path.resolve()),
            "block_size": metadata["block_size"],
            "horizon": metadata["horizon"],
        },
        teacher={"model": metadata["teacher_model"], "dtype": metadata["teacher_dtype"]},
        tokenizer=metadata["tokenizer"],
    )
    ranks.finish()
    return TrainResult(
        checkpoint_path=checkpoint,
        steps=cfg.max_steps,
        final_loss=metrics["final_loss"],
        running_loss=running,
        val_loss=final_val,
        seconds=time.perf_counter() - started,
        history=history,
        resumed_from_step=resumed_from,
    )
