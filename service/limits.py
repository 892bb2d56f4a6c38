"""Upper bounds on the numbers a request may carry, each raisable by the operator.

A request can ask for any amount of work; these bounds keep one request from taking a
worker for years (`training.max_steps`), from allocating until the machine dies
(`model.num_layers`, `training.batch_size`), or from holding a value the database cannot
store. Each bound is named by the field's path in its request body (`*` stands for any
split), and `GISTNET_LIMITS` raises or lowers it, as JSON:

    GISTNET_LIMITS='{"training.max_steps": 5000000, "model.num_layers": 96}'

A bound can never go above its ceiling: the largest value the records can hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from gistnet.bounds import ModelBounds, SourceBounds

INT32_MAX = 2**31 - 1  # an Integer column (ids, steps, block sizes)
INT64_MAX = 2**63 - 1  # a 64-bit integer: numpy and torch take no more (seeds, caps)
FLOAT_MAX = 1e300  # finite, with room to spare; infinities are refused everywhere


@dataclass(frozen=True)
class Limit:
    name: str
    route: str
    default: int | float
    ceiling: int | float
    # Why the default is what it is, for docs/service.md.
    why: str


LIMITS: dict[str, Limit] = {
    limit.name: limit
    for limit in [
        # POST /datasets
        Limit("block_size", "POST /datasets", ModelBounds.block_size, INT32_MAX, "tokens per gist"),
        Limit(
            "horizon", "POST /datasets", 8192, INT32_MAX, "also bounded by the teacher's context"
        ),
        Limit(
            "teacher_batch_size", "POST /datasets", 1024, INT32_MAX, "blocks per teacher forward"
        ),
        Limit("splits.*.max_files", "POST /datasets", 1_000_000, INT64_MAX, "a cap, not work"),
        Limit("splits.*.max_tokens", "POST /datasets", 10**11, INT64_MAX, "a cap, not work"),
        # What the files of a `source` or an upload may hold, checked as they are read.
        Limit(
            "sources.max_file_bytes",
            "POST /datasets",
            SourceBounds.max_file_bytes,
            INT64_MAX,
            "bytes one source file expands to (.gz, .zst decompressed)",
        ),
        Limit(
            "sources.max_document_bytes",
            "POST /datasets",
            SourceBounds.max_document_bytes,
            INT64_MAX,
            "one line, .txt file or Parquet value; read and tokenized whole",
        ),
        Limit(
            "uploads.max_text_bytes",
            "POST /datasets",
            256 * 2**20,
            INT64_MAX,
            "an upload's files together, decompressed",
        ),
        # POST /train
        # A checkpoint's model is held to these too (gistnet/bounds.py: ModelBounds).
        Limit(
            "model.num_heads",
            "POST /train",
            ModelBounds.num_heads,
            INT32_MAX,
            "must divide the teacher's width",
        ),
        Limit(
            "model.mlp_ratio",
            "POST /train",
            ModelBounds.mlp_ratio,
            FLOAT_MAX,
            "MLP width per hidden unit",
        ),
        Limit(
            "model.num_layers",
            "POST /train",
            ModelBounds.num_layers,
            INT32_MAX,
            "memory grows with each layer",
        ),
        Limit("model.rope_base", "POST /train", 1e9, FLOAT_MAX, "rotary frequency base"),
        Limit("model.norm_eps", "POST /train", 1.0, FLOAT_MAX, "LayerNorm epsilon"),
        Limit("training.batch_size", "POST /train", 4096, INT32_MAX, "see the memory check"),
        Limit("training.lr", "POST /train", 10.0, FLOAT_MAX, "larger only diverges"),
        Limit(
            "training.max_steps", "POST /train", 1_000_000, INT32_MAX, "one loss-curve row per step"
        ),
        Limit("training.warmup", "POST /train", 1_000_000, INT32_MAX, "steps, like max_steps"),
        Limit("training.weight_decay", "POST /train", 10.0, FLOAT_MAX, "no useful run needs more"),
        Limit(
            "training.grad_clip",
            "POST /train",
            1e6,
            FLOAT_MAX,
            "a norm; omit it (null) to turn clipping off",
        ),
        Limit("training.nll_weight", "POST /train", 1000.0, FLOAT_MAX, "no useful run needs more"),
        Limit("training.eval_every", "POST /train", 1_000_000, INT32_MAX, "steps, like max_steps"),
        Limit(
            "training.eval_examples",
            "POST /train",
            10_000_000,
            INT64_MAX,
            "examples scored per evaluation",
        ),
        Limit(
            "training.seed",
            "POST /train",
            2**32 - 1,
            INT64_MAX,
            "numpy and torch take up to 64 bits",
        ),
        Limit("training.processes", "POST /train", 64, INT32_MAX, "one GPU or CPU process each"),
        # POST /evaluations
        Limit("max_examples", "POST /evaluations", 10_000_000, INT64_MAX, "examples scored"),
        Limit("bootstrap_samples", "POST /evaluations", 100_000, INT32_MAX, "each resamples all"),
        Limit("seed", "POST /evaluations", 2**32 - 1, INT64_MAX, "numpy takes up to 64 bits"),
    ]
}


def resolve_limits(overrides: dict[str, int | float]) -> dict[str, int | float]:
    """The defaults with the operator's overrides; a ValueError names an unknown or
    impossible one."""
    unknown = sorted(set(overrides) - set(LIMITS))
    if unknown:
        raise ValueError(
            f"unknown limit(s) {', '.join(map(repr, unknown))}; the limits are {', '.join(LIMITS)}"
        )
    resolved: dict[str, int | float] = {}
    for name, limit in LIMITS.items():
        value = overrides.get(name, limit.default)
        if not value > 0 or value > limit.ceiling:
            raise ValueError(
                f"limit {name!r} is {value}; it must be above 0 and at most {limit.ceiling}"
            )
        resolved[name] = int(value) if isinstance(limit.default, int) else float(value)
    return resolved
