"""Bounds on the work one input may cause: how much text a source file may expand to, how
long one document may be, how large a model a checkpoint may ask to be built.

A small file can ask for unbounded work: a 90 KB .jsonl.zst can hold one 1 GiB line, and
a checkpoint's `model_config` can say `num_layers: 100000`. The readers (gistnet/sources.py)
and the checkpoint loader (gistnet/checkpoint.py) check these bounds as they read, before
the memory is taken, and raise `BoundError` naming the bound.

The defaults live here, once: the service's table of bounds (service/limits.py) takes them
from here, and an operator moves them with the same `GISTNET_LIMITS` JSON the service
reads (`from_environment`), so the CLIs, the workers and the API agree. The service passes
the bounds of its own settings where it has them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from gistnet.errors import BoundError, ConfigError

LIMITS_VARIABLE = "GISTNET_LIMITS"


def _environment_limits() -> dict[str, int | float]:
    text = os.environ.get(LIMITS_VARIABLE, "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{LIMITS_VARIABLE} is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{LIMITS_VARIABLE} must be a JSON object of bounds")
    return value


def exceeded(what: str, value: int | float, bound: int | float, name: str) -> BoundError:
    """The error for `what` being `value`, above the bound `name` allows."""
    return BoundError(
        f"{what} is {value}; this server takes at most {bound} (the operator can raise it: "
        f"{LIMITS_VARIABLE}='{{\"{name}\": ...}}')"
    )


@dataclass(frozen=True)
class _Bounds:
    # Each field's name in GISTNET_LIMITS; a subclass fills it in.
    NAMES: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_limits(cls, limits: Mapping[str, int | float], **other):
        """The bounds a table of limits (service/limits.py names) gives, and `other` fields;
        missing ones keep their defaults."""
        given = {field: limits[name] for field, name in cls.NAMES.items() if name in limits}
        return cls(**given, **other)

    @classmethod
    def from_environment(cls, **other):
        """The defaults with the operator's GISTNET_LIMITS, as the service reads them."""
        return cls.from_limits(_environment_limits(), **other)

    def exceeded(self, what: str, value: int | float, field: str) -> BoundError:
        return exceeded(what, value, getattr(self, field), self.NAMES[field])


@dataclass(frozen=True)
class SourceBounds(_Bounds):
    """How much text the files of a split's `source` may hold, checked as they stream."""

    # Bytes one source file may expand to (a .gz or .zst counts what it decompresses to):
    # a file past it is a corpus to cut into several files, or a decompression bomb.
    max_file_bytes: int = 16 << 30
    # Bytes of one document (a JSON line, a .txt file, a Parquet value): it is read and
    # tokenized whole, so this bounds the memory of preparation; the tokenizer takes about
    # 150 MiB a MiB of text (docs/benchmarks.md: tokenize_memory): 16 MiB took 2.4 GiB.
    max_document_bytes: int = 4 << 20

    NAMES: ClassVar[dict[str, str]] = {
        "max_file_bytes": "sources.max_file_bytes",
        "max_document_bytes": "sources.max_document_bytes",
    }


@dataclass(frozen=True)
class ModelBounds(_Bounds):
    """The largest GistNet a checkpoint may ask to be built: the bounds of POST /train."""

    num_layers: int = 64  # memory grows with each layer
    num_heads: int = 256  # must divide the teacher's width
    mlp_ratio: float = 16.0  # MLP width per hidden unit
    block_size: int = 1024  # tokens per gist (a dataset's bound)
    # Memory the model's float32 weights may take: the width is the teacher's and has no
    # bound of its own, so a huge one shows here. None: this host's physical memory.
    memory_bytes: int | None = None

    NAMES: ClassVar[dict[str, str]] = {
        "num_layers": "model.num_layers",
        "num_heads": "model.num_heads",
        "mlp_ratio": "model.mlp_ratio",
        "block_size": "block_size",
    }

    @property
    def memory(self) -> int:
        if self.memory_bytes is not None:
            return self.memory_bytes
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def check(self, model_config: Mapping, *, where: str = "model_config") -> None:
        """Refuse a model config (a checkpoint's plain dict) past a bound, before anything of
        it is built."""
        from gistnet.config import GistNetConfig
        from gistnet.memory import FLOAT, format_bytes, gistnet_parameters

        for field in self.NAMES:
            value = model_config.get(field)
            if isinstance(value, int | float) and value > getattr(self, field):
                raise self.exceeded(f"{where}.{field}", value, field)
        try:
            parameters = gistnet_parameters(GistNetConfig(**model_config))
        except (TypeError, ValueError):
            return  # not a config this version reads: the loader says so
        if FLOAT * parameters > self.memory:
            raise BoundError(
                f"{where} makes a model of {parameters:,} parameters, "
                f"{format_bytes(FLOAT * parameters)} of weights, more than the "
                f"{format_bytes(self.memory)} this host may use (GISTNET_WORKER_MEMORY_BYTES)"
            )
