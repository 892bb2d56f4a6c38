"""Training GistNet on a prepared shard.

`train_gistnet` is the one training loop; it reads one `TrainRequest`
(`gistnet.train_request`). The CLI passes a callback that prints, a Celery task one that
records progress in the database and a cancel check that reads it. With a request's
`resume_path` it writes resume checkpoints (`gistnet.checkpoint.save_resume`) and continues
from one after a crash, and the resumed run gives the same losses as an uninterrupted one
(batches depend only on the seed and the step). Under `gistnet.launch` the same loop runs in each of
`training.processes` DDP processes (`gistnet.distributed.Ranks`) and gives the same losses.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gistnet.checkpoint import load_resume, save_checkpoint, save_resume
from gistnet.config import RunConfig, TrainingConfig
from gistnet.datasets import describe_dataset, missing_teacher_error, split_shard_paths
from gistnet.devices import resolve_device
from gistnet.distributed import Ranks
from gistnet.errors import Cancelled, ConfigError
from gistnet.model import GistNet, GistNetConfig
from gistnet.shards import ShardSet, open_shard_set
from gistnet.train_request import TrainRequest

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "gistnet.pt"
# Beside it, the same model as a Hugging Face style folder (gistnet.pretrained):
# GistNet.from_pretrained and every checkpoint reader open it.
PRETRAINED_NAME = "gistnet"


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
    pretrained_path: Path | None = None  # the folder beside the checkpoint


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
    if run.training.objective == "mse" and data_t % m.gists_per_block != 0:
        raise ConfigError(
            f"objective mse with gists_per_block {m.gists_per_block} regresses each vector onto "
            f"an equal share of the block, but {data_t} tokens do not divide by "
            f"{m.gists_per_block}: pick a divisor of {data_t}"
        )
    if run.training.objective == "multiblock":
        from gistnet.multiblock import check_window_fits

        blocks, horizon = run.training.blocks, int(metadata["horizon"])
        check_window_fits(blocks=blocks, block_size=data_t, horizon=horizon)
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


def lr_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainingConfig, *, start_step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' linear warm-up then cosine decay to `final_lr_ratio` of `cfg.lr`
    (`get_cosine_with_min_lr_schedule_with_warmup`), set for training step `start_step`;
    after each optimizer step, `advance_schedule`. Its position is a function of the step
    alone (`schedule_position`), so a resumed run builds it at the step it resumes from
    (transformers' `last_epoch`).

    The schedule's position 0 is lr 0, a step that would train nothing, and it holds its
    peak for one position. Training step s < warmup takes position s + 1 (the first step
    trains at lr/warmup), and step s >= warmup position s: the warm-up's last step and the
    first of the decay both train at the peak, and the run's lrs are, step for step, those
    of the schedule every shipped run's figures were measured with."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.lr  # the peak the schedule scales, after a resume too
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer,
        num_warmup_steps=cfg.warmup,
        num_training_steps=cfg.max_steps,
        min_lr_rate=cfg.final_lr_ratio,
        last_epoch=schedule_position(start_step, cfg) - 1,
    )


def schedule_position(step: int, cfg: TrainingConfig) -> int:
    """The position of transformers' schedule that training step `step` trains at."""
    return step + 1 if step < cfg.warmup else step


def advance_schedule(scheduler, step: int, cfg: TrainingConfig) -> None:
    """After training step `step`: the scheduler at the next step's position."""
    if schedule_position(step + 1, cfg) != schedule_position(step, cfg):
        scheduler.step()


def teacher_dtype_for(cfg: TrainingConfig, metadata: dict[str, Any], device: torch.device) -> str:
    """The dtype the teacher computes in during training: the run's `teacher_dtype`; for
    auto float32 on the CPU, whatever dtype the states were cached in (half precision is
    slow on a CPU without bfloat16 units), and the dataset's teacher_dtype on a GPU."""
    if cfg.teacher_dtype != "auto":
        return cfg.teacher_dtype
    return "float32" if device.type == "cpu" else metadata["teacher_dtype"]


class _Objective:
    """The loss of a batch of examples, wherever its teacher states come from.

    mse: GistNet's gist against the mean of the block's states. substitution: the frozen
    teacher reading the gist in place of the block (see `gistnet.substitution`). multiblock:
    a window of many blocks, its oldest read as gists (`gistnet.multiblock`). A dataset
    with cached states hands GistNet their rows; a token-only one gets them from a teacher
    forward inside the step: substitution takes them from the full-context forward it runs
    anyway, mse from one no-gradient forward of the block, multiblock from one of each
    block it compresses (read alone, whatever the dataset caches).
    """

    def __init__(
        self,
        cfg: TrainingConfig,
        metadata: dict[str, Any],
        device: torch.device,
        *,
        cached_states: bool,
        dataset_path: Path,
        model_config: GistNetConfig,
    ):
        self.kind = cfg.objective
        self.device = device
        self.cached_states = cached_states
        # What GistNet reads beyond the block's last-layer states: the block's token
        # embeddings (the teacher's embedding table), the states of more teacher layers.
        self.model_config = model_config
        self.reads_teacher = model_config.token_embeddings or bool(model_config.teacher_layers)
        self.teacher = None
        self.teacher_dtype: str | None = None  # what the teacher computes in, once loaded
        self.substitution = None
        self.multiblock = None
        if self.kind != "mse" or not cached_states or self.reads_teacher:
            from gistnet.loading import load_teacher_for

            what = (
                f"the {self.kind} objective"
                if self.kind != "mse"
                else "model.token_embeddings"
                if model_config.token_embeddings
                else "model.teacher_layers"
                if model_config.teacher_layers
                else "training on a dataset without cached states"
            )
            if metadata.get("teacher_model") is None:
                raise missing_teacher_error(what, dataset_path)
            self.teacher_dtype = teacher_dtype_for(cfg, metadata, device)
            self.teacher = load_teacher_for(
                metadata["teacher_model"],
                dtype=self.teacher_dtype,
                device=device,
                width=int(metadata["teacher_hidden_size"]),
                width_of="the dataset's states",
                remedy="name the teacher the dataset was prepared with (--teacher)",
                teacher_layers=model_config.teacher_layers,
            )
        if self.kind == "substitution":
            from gistnet.substitution import SubstitutionLoss

            self.substitution = SubstitutionLoss(
                self.teacher,
                block_size=int(metadata["block_size"]),
                nll_weight=cfg.nll_weight, rest_weight=cfg.rest_weight,
                reconstruct_weight=cfg.reconstruct_weight, bos_sink=model_config.bos_sink,
                activation_checkpointing=cfg.activation_checkpointing,
            )
        if self.kind == "multiblock":
            from gistnet.multiblock import MultiBlockObjective

            self.multiblock = MultiBlockObjective(self.teacher, cfg, model_config)

    def _rows(self, column, idx: np.ndarray, dtype=None) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(column[idx]))
        return tensor.to(self.device, dtype=dtype, non_blocking=True)

    def _gists(
        self,
        model: GistNet,
        data: ShardSet,
        idx: np.ndarray,
        states: torch.Tensor | None,
        layer_states: torch.Tensor | None = None,
    ):
        """(B, T, D) states [+ what else the model reads] -> (B, D) or (B, k, D); the
        states come from a teacher forward of the block where the caller has none."""
        if not self.reads_teacher and states is not None:
            return model(states)
        from gistnet.teacher import gistnet_inputs

        block = self._rows(data.input_ids, idx, torch.long)
        inputs = gistnet_inputs(
            self.teacher, block, self.model_config, states=states, layer_states=layer_states
        )
        return model(**inputs)

    def __call__(
        self, model: GistNet, data: ShardSet, idx: np.ndarray, step: int | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of examples `idx` and its parts; `step` is the training step's (None
        when validation scores them)."""
        if self.multiblock is not None:
            windows = self._rows(data.context_input_ids, idx, torch.long)
            return self.multiblock(model, windows, rows=idx, step=step)
        layers = self.model_config.teacher_layers
        # Cached states hold the last layer only: a model reading more takes all of them
        # from the teacher's forward.
        cached = self.cached_states and not layers
        if self.substitution is not None:
            context = self._rows(data.context_input_ids, idx, torch.long)
            full, layer_states = None, None
            if cached:
                states = self._rows(data.teacher_hidden, idx)
            else:
                full, states, layer_states = self.substitution.full_and_states(context, layers)
            gists = self._gists(model, data, idx, states, layer_states)  # -> (B, [k,] D)
            return self.substitution(gists, context, full=full)
        if cached:
            states = self._rows(data.teacher_hidden, idx)
            target = self._rows(data.gist_target, idx)
            gists = self._gists(model, data, idx, states)
        else:
            from gistnet.teacher import gistnet_inputs

            block = self._rows(data.input_ids, idx, torch.long)
            inputs = gistnet_inputs(self.teacher, block, self.model_config)
            states = inputs["hidden"]
            target = states.double().mean(dim=1).float()  # as the cached gist_target is made
            gists = model(**inputs)
        if gists.dim() == 3:
            # k vectors: each regresses onto the mean state of its k-th of the block.
            b, t, d = states.shape
            target = states.view(b, gists.shape[1], t // gists.shape[1], d).mean(2)
        return F.mse_loss(gists, target), {}


@torch.no_grad()
def evaluate_loss(
    model: GistNet, objective: _Objective, data: ShardSet, *, batch_size: int, limit: int | None
) -> float:
    model.eval()
    n = data.num_examples if limit is None else min(limit, data.num_examples)
    total = 0.0
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(n, start + batch_size))
        total += objective(model, data, idx)[0].item() * len(idx)
    model.train()
    return total / n


def _validation_set(train_paths: list[Path], metadata: dict[str, Any]) -> ShardSet | None:
    """The dataset's validation split, unless that is what we train on or it is not there."""
    entry = metadata.get("splits", {}).get("validation")
    if entry is None:
        return None
    folder = train_paths[0].parent
    paths = [folder / shard["path"] for shard in entry.get("shards") or [entry]]
    if not all(p.is_file() for p in paths):
        return None
    if {p.resolve() for p in paths} & {p.resolve() for p in train_paths}:
        return None
    return open_shard_set(paths)


@dataclass
class _Run:
    """What the loop works with, opened from a request: the data, the model with its DDP
    wrapper (`trained`, the model itself in one process), the optimizer with its lr
    schedule (set for step 0) and the objective."""

    cfg: TrainingConfig
    ranks: Ranks
    device: torch.device
    data: ShardSet
    validation: ShardSet | None  # rank 0 alone scores it
    metadata: dict[str, Any]
    model: GistNet
    trained: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    objective: _Objective


def _open_run(request: TrainRequest, ranks: Ranks) -> _Run:
    cfg = request.run.training
    if cfg.processes > 1 and not ranks.active:
        raise ConfigError(
            f"training.processes is {cfg.processes}: train through "
            f"gistnet.launch.launch_training, which starts the processes"
        )
    paths = split_shard_paths(request.dataset, request.settings.split, default_split="train")
    data = open_shard_set(paths)
    metadata = describe_dataset(
        paths[0], tokenizer=request.tokenizer, teacher_model=request.teacher_model
    )
    model_cfg = model_config_for(request.run, metadata)
    width = data.hidden_size if data.has_teacher_states else model_cfg.hidden_size
    if width != model_cfg.hidden_size or data.block_size != model_cfg.block_size:
        raise ConfigError(
            f"shard {str(paths[0])!r} holds ({data.block_size}, {width}) states "
            f"but its metadata says ({model_cfg.block_size}, {model_cfg.hidden_size})"
        )
    device = ranks.setup(resolve_device(cfg.device))
    validation = _validation_set(paths, metadata) if ranks.is_main else None
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = GistNet(model_cfg).to(device)
    trained = ranks.wrap(model, device)
    optimizer = model.optimizer(lr=cfg.lr, weight_decay=cfg.weight_decay)
    objective = _Objective(
        cfg,
        metadata,
        device,
        cached_states=data.has_teacher_states,
        dataset_path=request.dataset,
        model_config=model_cfg,
    )
    if cfg.compile:
        from gistnet.teacher import compile_for_training

        compile_for_training(objective.teacher, model, backend=cfg.compile_backend,
                             mode=cfg.compile_mode)  # fmt: skip
    scheduler = lr_schedule(optimizer, cfg)
    return _Run(
        cfg,
        ranks,
        device,
        data,
        validation,
        metadata,
        model,
        trained,
        optimizer,
        scheduler,
        objective,
    )


def _resumed(request: TrainRequest, run: _Run) -> tuple[int, list[dict[str, Any]]]:
    """(the step to start from, the history so far): where the request's resume checkpoint
    left off, with the model and optimizer as they were there and the lr schedule at that
    step; (0, []) without one."""
    if request.resume_path is None or not request.resume_path.is_file():
        return 0, []
    step, history = load_resume(
        request.resume_path, model=run.model, optimizer=run.optimizer, device=run.device
    )
    run.scheduler = lr_schedule(run.optimizer, run.cfg, start_step=step)
    log.info("resuming at step %d from %s", step, request.resume_path)
    return step, history


def _log_start(run: _Run, start_step: int) -> None:
    """What this process trains: each rank of a launch says it (gistnet.launch forwards
    the ranks' lines to the launcher's logging, so a job's log shows every rank)."""
    cfg, ranks = run.cfg, run.ranks
    here = ""
    if ranks.active:
        part, _ = ranks.part(np.arange(cfg.batch_size))
        here = f" ({len(part)} of each in this process)"
    log.info(
        "training steps %d to %d in batches of %d%s on %s, from %d examples",
        start_step + 1,
        cfg.max_steps,
        cfg.batch_size,
        here,
        run.device,
        run.data.num_examples,
    )


def _train_step(run: _Run, step: int) -> tuple[float, dict[str, float], float]:
    """One optimizer step on the step's batch, this rank's part of it -> (the whole batch's
    mean loss, the objective's parts, the learning rate the step trained at)."""
    cfg, ranks = run.cfg, run.ranks
    lr = run.optimizer.param_groups[0]["lr"]  # the schedule's, set for this step
    idx = batch_indices(step, cfg.batch_size, run.data.num_examples, cfg.seed)
    idx, weight = ranks.part(idx)  # all of it in one process
    loss, stats = run.objective(run.trained, run.data, idx, step)  # GistNet through DDP
    run.optimizer.zero_grad(set_to_none=True)
    (loss * weight if ranks.active else loss).backward()
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    advance_schedule(run.scheduler, step, cfg)  # the next step's lr
    loss_value, stats = ranks.batch_mean(loss.item(), stats, len(idx), cfg.batch_size)
    if not math.isfinite(loss_value):
        raise ConfigError(
            f"the loss became {loss_value} at step {step + 1}: lower training.lr "
            f"(now {cfg.lr}) or set training.grad_clip"
        )
    return loss_value, stats, lr


def _validation_due(run: _Run, done: int) -> float | None:
    """The validation split's loss every `eval_every` steps and after the last one."""
    cfg = run.cfg
    if run.validation is None or (done % cfg.eval_every != 0 and done != cfg.max_steps):
        return None
    # compiled runs validate eagerly: rank 0 alone validates, and compiling there stalls the rest
    evaluate = torch.compiler.disable(evaluate_loss) if cfg.compile else evaluate_loss
    return evaluate(
        run.model, run.objective, run.validation, batch_size=cfg.batch_size, limit=cfg.eval_examples
    )


def _resume_due(request: TrainRequest, run: _Run, done: int) -> bool:
    """Rank 0 writes a resume checkpoint every `checkpoint_every` steps, but not after the
    last: the finished checkpoint follows at once."""
    every = request.checkpoint_every
    return bool(run.ranks.is_main and every and done % every == 0 and done < run.cfg.max_steps)


def _save_resume(
    request: TrainRequest,
    run: _Run,
    done: int,
    history: list[dict[str, Any]],
    on_checkpoint: Callable[[Path], None] | None,
) -> None:
    save_resume(
        request.resume_path, model=run.model, optimizer=run.optimizer, step=done, history=history
    )
    log.info("step %d of %d: resume checkpoint written", done, run.cfg.max_steps)
    if on_checkpoint is not None:
        on_checkpoint(request.resume_path)


def _smoothed(speed: float, latest: float) -> float:
    return latest if speed == 0.0 else 0.9 * speed + 0.1 * latest


def train_gistnet(
    request: TrainRequest,
    *,
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train GistNet as `request` asks; save `<request.output_dir>/gistnet.pt` and the same
    model as the folder `<request.output_dir>/gistnet/` (config.json, model.safetensors,
    run.yaml, README.md: gistnet.pretrained).

    `request.dataset` is a dataset folder (then the settings' split, default train, picks
    the split), a glob of a split's shard files, or one shard file. A split of many shards
    is read as one (`gistnet.shards.ShardSet`): batches draw across all of them. A
    token-only dataset (`teacher_states: none`) runs the teacher inside each step.

    The shard may come from our preparation, from the seed's tool (with its metadata or
    none): see `describe_dataset`. The request's `tokenizer` and `teacher_model` supply or
    override the dataset's; the substitution objective needs the teacher, mse training only
    records both in the checkpoint (the gist engine needs them later).

    The resume checkpoint is left in place: the caller deletes it once it has recorded the
    result, so a crash between the two resumes instead of starting over. `on_checkpoint`
    gets its path each time one is written (the service publishes it to the artifact store).
    """
    started = time.perf_counter()
    cfg = request.run.training
    ranks = Ranks.from_env()
    run = _open_run(request, ranks)
    start_step, history = _resumed(request, run)
    _log_start(run, start_step)
    recent: deque[float] = deque((h["loss"] for h in history[-50:]), maxlen=50)
    speed = 0.0
    run.model.train()
    for step in range(start_step, cfg.max_steps):
        if ranks.agree(should_cancel is not None and should_cancel()):
            raise Cancelled(f"training cancelled at step {step} of {cfg.max_steps}")
        tick = time.perf_counter()
        loss, stats, lr = _train_step(run, step)
        if cfg.compile and step == start_step:
            log.info("step %d took %.1f s, compiling", step + 1, time.perf_counter() - tick)
        recent.append(loss)
        speed = _smoothed(speed, cfg.batch_size / (time.perf_counter() - tick))
        done = step + 1
        val_loss = _validation_due(run, done)
        record = {"step": done, "loss": loss, "lr": lr, **stats}
        if val_loss is not None:
            record["val_loss"] = val_loss
            log.info("step %d of %d: validation loss %.5f", done, cfg.max_steps, val_loss)
        history.append(record)
        if on_progress is not None:
            running = sum(recent) / len(recent)
            on_progress(
                TrainProgress(done, cfg.max_steps, loss, running, speed, lr, val_loss, stats)
            )
        if _resume_due(request, run, done):
            _save_resume(request, run, done, history, on_checkpoint)
    result = TrainResult(
        checkpoint_path=request.output_dir / CHECKPOINT_NAME,
        pretrained_path=request.output_dir / PRETRAINED_NAME,
        steps=cfg.max_steps,
        final_loss=history[-1]["loss"] if history else float("nan"),
        running_loss=sum(recent) / len(recent) if recent else float("nan"),
        val_loss=next((h["val_loss"] for h in reversed(history) if "val_loss" in h), None),
        seconds=0.0,
        history=history,
        # A resume checkpoint is written after step 1 at the earliest: 0 is a fresh start.
        resumed_from_step=start_step or None,
    )
    log.info("trained to step %d: final loss %.5f", cfg.max_steps, result.final_loss)
    if ranks.is_main:  # rank 0 writes the checkpoint; the others wait for it and leave
        _save_trained(request, run, result)
    ranks.finish()
    result.seconds = time.perf_counter() - started
    return result


def _save_trained(request: TrainRequest, run: _Run, result: TrainResult) -> None:
    metadata = run.metadata
    save_checkpoint(
        result.checkpoint_path,
        model=run.model,
        training_config=run.cfg.model_dump(),
        metrics={
            "steps": result.steps,
            "final_loss": result.final_loss,
            "running_loss": result.running_loss,
            "val_loss": result.val_loss,
            "objective": run.cfg.objective,
        },
        dataset={
            "name": metadata["dataset_name"],
            "fingerprint": metadata["fingerprint"],
            "path": str(request.dataset.resolve()),
            "block_size": metadata["block_size"],
            "horizon": metadata["horizon"],
        },
        teacher=_teacher_record(metadata, run.objective.teacher_dtype),
        tokenizer=metadata["tokenizer"],
        folder=result.pretrained_path,
    )


def _teacher_record(metadata: dict[str, Any], trained_dtype: str | None) -> dict[str, Any]:
    """The checkpoint's teacher: its name and the dataset's dtype (the one the gist engine
    loads it in), and where the run ran the teacher, the dtype it computed in then."""
    record = {"model": metadata["teacher_model"], "dtype": metadata["teacher_dtype"]}
    if trained_dtype is not None:
        record["trained_dtype"] = trained_dtype
    return record
