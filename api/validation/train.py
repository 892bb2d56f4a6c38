"""POST /train: the run fits its dataset and a worker's memory; the settings the job stores."""

from __future__ import annotations

from typing import Any

from api.validation.common import RequestProblem
from api.validation.models import check_family, teacher_config
from gistnet.config import RunConfig
from gistnet.errors import ConfigError
from gistnet.train_request import TrainSettings


def train_settings_of(
    body, *, dataset_info: dict[str, Any], worker_memory: int, mlflow_uri: str | None = None
) -> TrainSettings:
    """The body's run as the job will train it (`api.schemas.TrainCreate`: pydantic checked
    each field), once it fits the dataset and a worker's memory and its tracking has
    somewhere to go."""
    tracking = body.tracking
    if tracking is not None and tracking.mlflow and mlflow_uri is None:
        raise RequestProblem(
            "tracking.mlflow: this server logs to no MLflow tracking server: its operator sets "
            "GISTNET_MLFLOW_TRACKING_URI; leave tracking.mlflow out, or use tracking.tensorboard"
        )
    wanted = tracking is not None and (tracking.tensorboard or tracking.mlflow)
    settings = TrainSettings(
        run=RunConfig(model=body.model, training=body.training),
        split=body.split,
        tracking=tracking.model_dump() if wanted else None,
    )
    check_run_request(
        settings.run, dataset_info=dataset_info, split=body.split, worker_memory=worker_memory
    )
    return settings


def check_run_request(
    run: RunConfig, *, dataset_info: dict[str, Any], split: str, worker_memory: int
) -> None:
    """The run must fit the dataset (its split exists, width and block size match), its
    teacher's family must read gists, and the run must fit a worker's memory."""
    from gistnet.train import model_config_for

    splits = dataset_info.get("splits", {})
    if split not in splits:
        raise RequestProblem(
            f"split: the dataset has no split {split!r}; it has {', '.join(sorted(splits))}"
        )
    try:
        model_config = model_config_for(run, dataset_info)
    except ConfigError as err:
        raise RequestProblem(str(err)) from None
    if dataset_info.get("teacher_model"):
        try:  # an imported dataset, or one prepared elsewhere, may name any teacher
            family_config = teacher_config(dataset_info["teacher_model"])
        except RequestProblem:  # a teacher gone since: the job will say so
            family_config = None
        if family_config is not None:
            check_family(family_config, field="the dataset's teacher_model")
    if model_config.teacher_layers and dataset_info.get("teacher_model"):
        from gistnet.teacher import check_teacher_layers

        try:  # the teacher's depth, from its config alone
            check_teacher_layers(
                teacher_config(dataset_info["teacher_model"]), model_config.teacher_layers
            )
        except ConfigError as err:
            raise RequestProblem(f"model.{err}") from None
    check_run_memory(run, model_config, dataset_info=dataset_info, worker_memory=worker_memory)


def check_run_memory(
    run: RunConfig, model_config, *, dataset_info: dict[str, Any], worker_memory: int
) -> None:
    """Refuse, with the estimate, a run whose model or batch would not fit a worker (one
    training process: a GPU, with `training.processes` over several)."""
    from gistnet.memory import TeacherShape, format_bytes, training_memory

    teacher = None
    if run.training.objective != "mse":
        try:
            teacher = TeacherShape.from_hf_config(teacher_config(dataset_info["teacher_model"]))
        except (RequestProblem, KeyError):  # a teacher gone since: the job will say so
            teacher = None
    # Each training process holds the whole model and its part of every batch.
    per_process = -(-run.training.batch_size // run.training.processes)
    estimate = training_memory(
        model_config,
        batch_size=per_process,
        objective=run.training.objective,
        horizon=dataset_info.get("horizon"),
        teacher=teacher,
        blocks=run.training.blocks,
        # auto is float32 on a CPU and the dataset's dtype on a GPU: float32 is the larger
        teacher_bytes_per_value=2 if run.training.teacher_dtype in ("bfloat16", "float16") else 4,
        activation_checkpointing=run.training.activation_checkpointing,
        reconstruct=run.training.reconstruct_weight > 0,
    )
    if estimate.total > worker_memory:
        raise RequestProblem(
            f"this run needs {estimate.describe()}, more than the {format_bytes(worker_memory)} "
            f"a worker has (GISTNET_WORKER_MEMORY_BYTES): lower training.batch_size "
            f"(now {run.training.batch_size}) or model.num_layers (now {model_config.num_layers})"
        )
