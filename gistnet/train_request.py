"""What a training run is asked to do, as one typed request.

`TrainSettings` is what the run trains (the run config and the split: the part a job row
stores, as the JSON object `to_dict` gives); `TrainRequest` adds which data, where the
checkpoint goes and how a crash is recovered. Both are checked when they are built, so
whoever builds one from a CLI or an API body gets the error there, and everything below
(the launcher, each training process, the loop) reads a request that holds. A request
crosses to the training processes as `to_dict` and comes back with `from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gistnet.config import RunConfig, validate_run_config
from gistnet.errors import ConfigError


@dataclass(frozen=True)
class TrainSettings:
    # The model and training sections, validated.
    run: RunConfig = field(default_factory=RunConfig)
    # The split of a dataset folder to train on; None: train.
    split: str | None = None
    # What the run is logged to, as asked: {"tensorboard": bool, "mlflow": bool,
    # "experiment": str, "run_name": str | None} (where to is the trainer's setting).
    tracking: dict[str, Any] | None = None

    def __post_init__(self):
        if not isinstance(self.run, RunConfig):
            raise ConfigError(f"run must be a validated RunConfig; got {type(self.run).__name__}")

    def with_training(self, **changes: Any) -> TrainSettings:
        """These settings with `training:` fields changed (the CLI's --max-steps, the
        worker's device), validated as the run config's own are."""
        run = self.run.model_dump(mode="json")
        run["training"].update(changes)
        return replace(self, run=validate_run_config(run))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data, as a job row stores it."""
        data = {"split": self.split, "run_config": self.run.model_dump(mode="json")}
        if self.tracking is not None:
            data["tracking"] = dict(self.tracking)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSettings:
        """The settings `to_dict` wrote; a key this version does not know is an error."""
        unknown = sorted(set(data) - {"split", "run_config", "tracking"})
        if unknown:
            raise ConfigError(f"unknown training settings: {', '.join(unknown)}")
        return cls(
            run=validate_run_config(data.get("run_config") or {}),
            split=data.get("split"),
            tracking=data.get("tracking"),
        )


@dataclass(frozen=True)
class TrainRequest:
    # A dataset folder (then `settings.split` picks the split), a glob of a split's shard
    # files, or one shard file.
    dataset: Path
    # Where gistnet.pt goes.
    output_dir: Path
    settings: TrainSettings = field(default_factory=TrainSettings)
    # The tokenizer and teacher, in place of the dataset's (a seed shard without metadata
    # names neither); the substitution and multiblock objectives run the teacher.
    tokenizer: str | None = None
    teacher_model: str | None = None
    # The resume checkpoint: continued from when it exists, written every
    # `checkpoint_every` steps; None: a crash starts over.
    resume_path: Path | None = None
    checkpoint_every: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "dataset", Path(self.dataset))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.resume_path is not None:
            object.__setattr__(self, "resume_path", Path(self.resume_path))
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be at least 1; got {self.checkpoint_every}")
        if self.checkpoint_every is not None and self.resume_path is None:
            raise ConfigError("checkpoint_every needs resume_path: where the checkpoint goes")

    @property
    def run(self) -> RunConfig:
        return self.settings.run

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (what the launcher writes for the training processes)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("dataset", "output_dir", "resume_path"):
            out[name] = None if out[name] is None else str(out[name])
        out["settings"] = self.settings.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainRequest:
        """The request `to_dict` wrote; a key this version does not know is an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training request fields: {', '.join(unknown)}")
        return cls(**{**data, "settings": TrainSettings.from_dict(data.get("settings") or {})})
