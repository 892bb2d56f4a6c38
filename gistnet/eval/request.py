"""What an evaluation is asked to do, as one typed request.

`EvalSettings` is what the evaluation scores and how (the part a job row stores, as the
JSON object `to_dict` gives); `EvalRequest` adds which checkpoint, which data and where
to run. Both are checked when they are built, so whoever builds one from a CLI or an API
body gets the error there, and everything below reads a request that holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from gistnet.errors import ConfigError
from gistnet.refine import RefineSettings


@dataclass(frozen=True)
class EvalSettings:
    # A seeded random subset of the split; None scores every example.
    max_examples: int | None = None
    # Resamples for the 95% intervals; 0 leaves the intervals out.
    bootstrap_samples: int = 1000
    # Seeds the subsets, the swap partners and the bootstrap.
    seed: int = 0
    # Adds the `oracle` on a seeded subset of this many scored examples; None leaves it out.
    oracle_examples: int | None = None
    # Adds the `refined` condition, each gist refined from its block alone; None leaves it out.
    refine: RefineSettings | None = None
    # "blocks": each example's block read as its gist, the horizon after it scored (ΔNLL@H);
    # "long": the tokens after a long context, read whole, truncated or with its oldest
    # blocks as gists (gistnet.eval.long).
    mode: Literal["blocks", "long"] = "blocks"
    # Long mode only: C, the context's tokens (required); R, its latest tokens kept raw
    # (default 64); S, the tokens scored after it (default 64). C - R is whole blocks.
    context_tokens: int | None = None
    recent_tokens: int | None = None
    score_tokens: int | None = None

    def __post_init__(self):
        self._check_mode()
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(f"max_examples must be at least 1; got {self.max_examples}")
        if self.bootstrap_samples < 0:
            raise ConfigError(f"bootstrap_samples must be 0 or more; got {self.bootstrap_samples}")
        if self.oracle_examples is not None and self.oracle_examples < 1:
            raise ConfigError(f"oracle_examples must be at least 1; got {self.oracle_examples}")

    def _check_mode(self) -> None:
        long_fields = {
            "context_tokens": self.context_tokens,
            "recent_tokens": self.recent_tokens,
            "score_tokens": self.score_tokens,
        }
        if self.mode not in ("blocks", "long"):
            raise ConfigError(f"mode must be 'blocks' or 'long'; got {self.mode!r}")
        if self.mode == "blocks":
            given = [name for name, value in long_fields.items() if value is not None]
            if given:
                raise ConfigError(f"{', '.join(given)}: settings of mode 'long'; add mode: long")
            return
        if self.context_tokens is None:
            raise ConfigError("context_tokens: mode 'long' needs the context's length in tokens")
        for name, default in (("recent_tokens", 64), ("score_tokens", 64)):
            if long_fields[name] is None:
                object.__setattr__(self, name, default)
        for name in long_fields:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.recent_tokens >= self.context_tokens:
            raise ConfigError(
                f"recent_tokens ({self.recent_tokens}) must be below context_tokens "
                f"({self.context_tokens}): the tokens before the recent ones are compressed"
            )
        if self.oracle_examples is not None or self.refine is not None:
            raise ConfigError(
                "oracle_examples and refine are settings of mode 'blocks': leave them out"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data, as a job row stores it (`refine` as its own object)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalSettings:
        """The settings `to_dict` wrote; a key this version does not know is an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown evaluation settings: {', '.join(unknown)}")
        refine = data.get("refine")
        if refine is not None and not isinstance(refine, RefineSettings):
            data = {**data, "refine": RefineSettings(**refine)}
        return cls(**data)


@dataclass(frozen=True)
class EvalRequest:
    # A GistNet checkpoint file.
    checkpoint: Path
    # A shard (.arrow), a glob of a split's shards, or a prepared dataset folder.
    dataset: Path
    # The split of a dataset folder; None: validation.
    split: str | None = None
    settings: EvalSettings = field(default_factory=EvalSettings)
    # "auto", "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    # Examples per teacher pass.
    batch_size: int = 64
    # The tokenizer and teacher, in place of the dataset's (a seed shard without metadata
    # names neither) or, failing that, the checkpoint's.
    tokenizer: str | None = None
    teacher_model: str | None = None
    # The dtype the teacher computes in ("float32", "bfloat16", "float16"); None: the
    # dataset's (the dtype its states were cached in, float32 for token ids).
    teacher_dtype: str | None = None

    def __post_init__(self):
        if self.teacher_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ConfigError(
                f"teacher_dtype must be float32, bfloat16 or float16; got {self.teacher_dtype!r}"
            )
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        object.__setattr__(self, "dataset", Path(self.dataset))
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1; got {self.batch_size}")
