"""Training runs in the trackers the field reads: TensorBoard event files and MLflow runs.

Both hang on the progress callback that the command line and the worker already give
`train_gistnet`, so the loop knows nothing of them:

    with Tracking(TrackingSettings(tensorboard="runs/a"), params=run_config) as tracking:
        result = train_gistnet(request, on_progress=tracking.progress)
        tracking.log_artifacts(result.checkpoint_path)

Each step logs the loss, the running loss, the learning rate, examples/s, the objective's
parts (kl, nll, ...) and, where scored, the validation loss; the run config goes in as
parameters (MLflow) or as text (TensorBoard); the checkpoint and an evaluation's report
go to MLflow as artifacts. Off unless a setting names where to write. A run that raises
is ended FAILED in MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gistnet.errors import ConfigError

# MLflow keeps a parameter's value to this many characters.
_PARAM_CHARS = 500


@dataclass(frozen=True)
class TrackingSettings:
    # A folder for TensorBoard's event files (`tensorboard --logdir` reads it).
    tensorboard: str | None = None
    # An MLflow tracking URI (http://..., sqlite:///..., databricks), or a local folder:
    # MLflow's file store there (`mlflow ui --backend-store-uri <folder>` reads it).
    mlflow: str | None = None
    experiment: str = "gistnet"
    run_name: str | None = None
    # MLflow tags of the run (the service tags its job: gistnet.job_id).
    tags: Mapping[str, str] | None = None

    @property
    def enabled(self) -> bool:
        return self.tensorboard is not None or self.mlflow is not None


def mlflow_uri(location: str) -> str:
    if "://" in location or location.startswith("databricks"):
        return location
    folder = Path(location).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    # MLflow keeps its file store working but refuses it unless asked: the user asked, by
    # naming a folder. (A SQLite store would build its tables first: seconds per run.)
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    return folder.as_uri()


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"model": {"hidden_size": 64}} -> {"model.hidden_size": "64"}, as MLflow keeps them."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:_PARAM_CHARS]
    return flat


def _scalars(progress) -> dict[str, float]:
    values = {
        "train/loss": progress.loss,
        "train/running_loss": progress.running_loss,
        "train/lr": progress.lr,
        "train/examples_per_sec": progress.examples_per_sec,
        **{f"train/{k}": v for k, v in (progress.stats or {}).items()},
    }
    if progress.val_loss is not None:
        values["val/loss"] = progress.val_loss
    return {k: float(v) for k, v in values.items() if v is not None}


class Tracking:
    """The trackers `settings` turns on, for one training run."""

    def __init__(self, settings: TrackingSettings, *, params: Mapping[str, Any]):
        self.settings = settings
        self.params = dict(params)
        self._writer = None
        self._mlflow = None
        self.mlflow_run_id: str | None = None

    def __enter__(self) -> Tracking:
        if self.settings.tensorboard is not None:
            self._open_tensorboard()
        if self.settings.mlflow is not None:
            self._open_mlflow()
        return self

    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError(
                f"tracking.tensorboard needs the tensorboard package (pip install tensorboard): "
                f"{err}"
            ) from None
        self._writer = SummaryWriter(log_dir=self.settings.tensorboard)
        text = yaml.safe_dump(self.params, sort_keys=False)
        self._writer.add_text("run_config", "```\n" + text + "```", global_step=0)

    def _open_mlflow(self) -> None:
        try:
            import mlflow
        except ImportError as err:
            raise ConfigError(
                f"tracking.mlflow needs the mlflow package (pip install mlflow-skinny): {err}"
            ) from None
        # A client of its own: the fluent API's global run would be shared across threads.
        client = mlflow.MlflowClient(tracking_uri=mlflow_uri(self.settings.mlflow))
        experiment = client.get_experiment_by_name(self.settings.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(self.settings.experiment)
        )
        run = client.create_run(
            experiment_id, run_name=self.settings.run_name, tags=dict(self.settings.tags or {})
        )
        self._mlflow, self.mlflow_run_id = client, run.info.run_id
        params = flat_params(self.params)
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes 100 parameters per batch
            client.log_batch(self.mlflow_run_id, params=items[start : start + 100])

    def progress(self, progress) -> None:
        """Log one TrainProgress (the callback train_gistnet calls each step)."""
        values = _scalars(progress)
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, global_step=progress.step)
        if self._mlflow is not None:
            from mlflow.entities import Metric

            now = _millis()
            metrics = [
                Metric(name.replace("/", "_"), value, now, progress.step)
                for name, value in values.items()
            ]
            self._mlflow.log_batch(self.mlflow_run_id, metrics=metrics)

    def log_artifacts(self, *paths: str | Path | None) -> None:
        """Files of the run (the checkpoint, an evaluation's report) into MLflow."""
        if self._mlflow is None:
            return
        for path in paths:
            if path is not None and Path(path).exists():
                self._mlflow.log_artifact(self.mlflow_run_id, str(path))

    def __exit__(self, kind, error, traceback) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._mlflow is not None:
            status = "FINISHED" if kind is None else "FAILED"
            self._mlflow.set_terminated(self.mlflow_run_id, status=status)


def evaluation_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """An evaluation report's headline figures as MLflow metrics: each condition's NLL,
    ΔNLL and gap recovered (eval_<condition>_<figure>)."""
    metrics = {}
    for condition, entry in (report.get("conditions") or {}).items():
        for figure in ("nll", "delta_nll", "gap_recovered"):
            value = (entry.get(figure) or {}).get("value")
            if value is not None:
                metrics[f"eval_{condition}_{figure}"] = float(value)
    return metrics


def log_evaluation(
    location: str,
    *,
    report: Mapping[str, Any],
    files: list[str | Path],
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str | None:
    """An evaluation's report into the MLflow run of the model it measured: the run
    `run_id`, else the one run carrying all of `tags`. Its files as artifacts (under
    evaluation/), its headline figures as metrics. -> the run id, None when no run matches."""
    try:
        import mlflow
    except ImportError as err:
        raise ConfigError(f"MLflow logging needs the mlflow package: {err}") from None
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri(location))
    if run_id is None:
        wanted = " and ".join(f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items())
        experiments = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(experiments, filter_string=wanted, max_results=1)
        if not found:
            return None
        run_id = found[0].info.run_id
    from mlflow.entities import Metric

    now = _millis()
    metrics = [Metric(k, v, now, 0) for k, v in evaluation_metrics(report).items()]
    client.log_batch(run_id, metrics=metrics)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="evaluation")
    return run_id


def _millis() -> int:
    import time

    return int(time.time() * 1000)
