"""Validated configs for dataset preparation and training runs.

YAML files and JSON request bodies go through the same pydantic models, so an unknown
key or a bad value gets the same message whether it came from the CLI or the service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gistnet.errors import ConfigError
from gistnet.paths import check_split_name

TeacherDType = Literal["float32", "float16", "bfloat16"]
TeacherStates = Literal["cache", "none"]


class _Strict(BaseModel):
    # An infinite or NaN number is never a meaningful setting (YAML's .inf, JSON's 1e999).
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class HoldOut(_Strict):
    """Whole files of a split's source kept apart by a hash of each file's path: every file
    lands on one side, the same on every machine, whatever else the glob matches. Two
    splits that read the same source with the same `share` and `seed`, one taking
    `held_out` and the other `rest`, divide its files (pages) between them."""

    # The share of the files held out, e.g. 0.1.
    share: float = Field(gt=0, lt=1)
    # Which side this split reads: the held-out files or the rest.
    take: Literal["held_out", "rest"]
    # Another seed holds out another set of files.
    seed: int = Field(default=0, ge=0)


class SplitConfig(_Strict):
    # Accepted for configs written for the seed's tool; must equal the split's key.
    name: str | None = None
    # A file or glob of .txt or .html (one document per file), .jsonl (one {"text": ...}
    # per line) or .parquet, relative to the config file. Either this or `documents`.
    source: str | None = None
    # Inline documents (the service's POST /datasets); used instead of `source`.
    documents: list[str] | None = None
    # Where the Arrow shard goes, relative to the config file. Optional when the caller
    # passes an output directory (the service does).
    output_path: str | None = None
    # Caps for quick runs: stop after this many files / tokens.
    max_files: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    # The JSON key (.jsonl, .jsonl.gz, .jsonl.zst) or Parquet column holding each document.
    text_column: str = Field(default="text", min_length=1)
    # Shard files the split is written as, each from a contiguous range of documents
    # (`train-00000-of-00008.arrow`, ...). The service prepares each shard as a task of its
    # own, so N workers prepare one split together. The rows do not depend on this number.
    shards: int = Field(default=1, ge=1, le=100_000)
    # Read only one side of the source's files, held out whole by a hash of their paths
    # (HoldOut): a validation split of pages the training split never saw.
    holdout: HoldOut | None = None
    # Tokens between window starts in this split, instead of the dataset's `stride`: a
    # densely cut training split beside a validation split of one window per block.
    stride: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_text_source(self) -> SplitConfig:
        if (self.source is None) == (self.documents is None):
            raise ValueError("give exactly one of `source` (a file or glob) or `documents`")
        if self.holdout is not None and self.source is None:
            raise ValueError("holdout divides the files of a `source`: inline documents have none")
        if self.shards > 1 and self.max_tokens is not None:
            raise ValueError(
                f"max_tokens caps one pass over the split in order, so it cannot be combined "
                f"with shards ({self.shards}): use max_files, or shards: 1"
            )
        return self


class DatasetConfig(_Strict):
    dataset_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # Hugging Face tokenizer id or local folder.
    tokenizer: str
    # Tokens compressed into one gist.
    block_size: int = Field(default=32, ge=1)
    # Tokens of the window that starts at the block (the block included) kept as context.
    horizon: int = Field(default=64, ge=1)
    # Tokens between the starts of successive windows of a document (None: block_size, one
    # example per block). A smaller stride gives block_size / stride times the examples
    # from the same text, blocks cut at other offsets: more training data from a small
    # corpus. Keep the default for evaluation splits, whose examples should not overlap more.
    stride: int | None = Field(default=None, ge=1)
    # Hugging Face causal-LM id or local folder: the frozen teacher.
    teacher_model: str
    teacher_batch_size: int = Field(default=64, ge=1)
    teacher_dtype: TeacherDType = "float32"
    teacher_device: str = "auto"
    # cache: run the teacher at preparation and store every block's states (float32,
    # block_size x width per example). none: store token ids only (a few hundred bytes
    # per example whatever the width) and let training run the teacher inside each step.
    teacher_states: TeacherStates = "cache"
    # Each name is its shard's file name: SPLIT_NAME_PATTERN (gistnet/paths.py).
    splits: dict[str, SplitConfig]

    @field_validator("splits")
    @classmethod
    def _split_names(cls, splits: dict[str, SplitConfig]) -> dict[str, SplitConfig]:
        for name in splits:
            check_split_name(name)
        return splits

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        if self.horizon % self.block_size != 0:
            raise ValueError(
                f"horizon ({self.horizon}) must be a multiple of block_size ({self.block_size}), "
                f"for example {max(1, self.horizon // self.block_size) * self.block_size}"
            )
        if self.horizon < self.block_size:
            raise ValueError(
                f"horizon ({self.horizon}) must be at least one block ({self.block_size})"
            )
        self._check_stride("stride", self.stride)
        if not self.splits:
            raise ValueError("`splits` is empty: name at least one split, e.g. train")
        for key, split in self.splits.items():
            if split.name is not None and split.name != key:
                raise ValueError(f"split {key!r} carries name {split.name!r}; they must match")
            self._check_stride(f"splits.{key}.stride", split.stride)
        parse_device(self.teacher_device)
        return self

    def _check_stride(self, name: str, stride: int | None) -> None:
        """Windows start every block or closer, or every few whole blocks while they still
        overlap (long windows read side by side, as the long-document evaluation does):
        never so far apart that text between windows goes unread, and always chained, so
        that a document's windows are known to be one document's."""
        if stride is None or stride <= self.block_size:
            return
        if stride % self.block_size or stride >= self.horizon:
            raise ValueError(
                f"{name} ({stride}) must be at most block_size ({self.block_size}), or a "
                f"multiple of it below the horizon ({self.horizon}) so that windows still "
                f"overlap: a longer stride would skip text between blocks"
            )

    def split_stride(self, name: str) -> int:
        """Tokens between window starts in split `name`: its own stride, else the dataset's,
        else one block."""
        return self.splits[name].stride or self.stride or self.block_size


# Options that measured no help and were taken out: a config naming one is told why and
# where the figures are, not that the key is unknown. docs/quality.md keeps the results;
# the code is in the commit named here. (key, value) with value None: any value.
REMOVED_IN_COMMIT = "68f32a7"
REMOVED_OPTIONS: dict[tuple[str, str | None], str] = {
    ("reconstruction_weight", None): "a reconstruction NLL added to the loss lowered GR "
    '(docs/quality.md, "Nor does reconstruction")',
    ("reconstruction_steps", None): "a reconstruction stage before the continuation lowered GR "
    '(docs/quality.md, "Nor does reconstruction")',
    ("horizon_weighting", "block_dependence"): "weighing each token's KL by its dependence on "
    "the block lowered GR to 0.504 (docs/quality.md); uniform is the one weighting",
}


def _refuse_removed_options(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    if "log_every" in data:
        raise ValueError(
            "log_every is how often the command line prints a line, not a setting of the run: "
            "the service records every step (GET /jobs/{id}/metrics); remove it"
        )
    for (key, value), why in REMOVED_OPTIONS.items():
        if key in data and (value is None or data[key] == value):
            named = key if value is None else f"{key}: {value}"
            raise ValueError(
                f"{named} was removed: {why}; the code is in commit {REMOVED_IN_COMMIT}. "
                f"Delete it from the config"
            )
    return data


class TrainingConfig(_Strict):
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    max_steps: int = Field(default=1000, ge=1)
    device: str = "auto"
    # numpy's generators take no negative seed.
    seed: int = Field(default=0, ge=0)
    # Linear warm-up steps before the cosine decay.
    warmup: int = Field(default=0, ge=0)
    # Where the cosine decay ends, as a fraction of lr (0: decay to zero).
    final_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    # AdamW decay of the weight matrices only (not norms, biases or the pooling query).
    weight_decay: float = Field(default=0.0, ge=0)
    # Clip the gradient's global norm to this; None turns clipping off.
    grad_clip: float | None = Field(default=1.0, gt=0)
    # mse: match the mean teacher state. substitution: the teacher reading the gist
    # predicts the following tokens as it does reading the block. multiblock: the same
    # after a window of `blocks` blocks whose oldest ones are gists (gistnet.multiblock),
    # the long context the gists are for.
    objective: Literal["mse", "substitution", "multiblock"] = "mse"
    # multiblock only: blocks of each window, read before the horizon (the window's
    # tokens after them); the dataset's horizon must exceed blocks x block_size.
    blocks: int = Field(default=1, ge=1)
    # multiblock only: how many of the oldest blocks are read as gists. None: a number in
    # 1 ... blocks drawn per batch from the seed and the step, so GistNet learns gists that
    # read well after any number of others and before any number of raw blocks.
    compressed_blocks: int | None = Field(default=None, ge=1)
    # substitution only: weight of the NLL of the horizon tokens added to the KL.
    nll_weight: float = Field(default=0.0, ge=0)
    # substitution only: how the KL weighs horizon tokens: all alike, the one weighting
    # that measured well (see REMOVED_OPTIONS).
    horizon_weighting: Literal["uniform"] = "uniform"
    # substitution only: weight of the KL at horizon tokens 9 onward (the report's "rest",
    # past the sentence the block broke off) against 1 for the first 8, so the loss asks
    # more for the facts that recur later than its share of the gap would.
    rest_weight: float = Field(default=1.0, gt=0)
    # substitution only: weight of an autoencoding term (as ICAE's pretraining), the
    # teacher's NLL of the block's own tokens read after the gist: [BOS] gist b_0 ... b_T-2
    # predicting b_0 ... b_T-1. No gist of another block helps there, so the term asks the
    # gist for its block's content where the horizon's KL is mostly satisfied by a generic
    # vector. One more teacher forward and backward over T + 1 positions a step. The
    # training and validation losses include the term; `kl` and `nll` are reported apart.
    reconstruct_weight: float = Field(default=0.0, ge=0)
    # Evaluate on the validation split every this many steps (and at the end).
    eval_every: int = Field(default=200, ge=1)
    # Examples of the validation split used per evaluation (None: all).
    eval_examples: int | None = Field(default=2048, ge=1)
    # Training processes (DDP, one GPU each, or gloo on the CPU). Each takes its part of
    # every batch of batch_size, so the results do not depend on this number.
    processes: int = Field(default=1, ge=1)
    # substitution only: the teacher's layers on the gist side keep only their inputs and
    # run their forward again in the backward pass, so a long context's activations cost
    # one layer's at a time instead of every layer's, for about a third more compute per
    # step. Off: where the activations fit, it only costs time. Same losses and gradients.
    activation_checkpointing: bool = False
    # The dtype the teacher computes in while GistNet trains. auto: float32 on the CPU
    # (half precision is slow on CPUs without bfloat16 units), the dataset's teacher_dtype
    # on a GPU. bfloat16 pays on a GPU and on a CPU with avx512_bf16 or AMX; GistNet's own
    # weights and the losses stay float32 whatever is chosen.
    teacher_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # torch.compile the teacher's decoder layers and GistNet, as transformers' Trainer does
    # with torch_compile: it pays where kernel launches dominate (a small teacher on a GPU).
    # The first step of each batch shape compiles (a minute or more; the log says how
    # long). compile_mode "reduce-overhead" adds CUDA graphs on a GPU. The same losses.
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        return _refuse_removed_options(data)

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        parse_device(self.device)
        if self.processes > self.batch_size:
            raise ValueError(
                f"processes ({self.processes}) must not exceed batch_size ({self.batch_size}): "
                f"every process takes part of each batch"
            )
        if self.objective != "substitution" and self.reconstruct_weight:
            raise ValueError(
                "reconstruct_weight reads the block after its gist: it needs objective: "
                "substitution"
            )
        if self.objective != "substitution" and self.rest_weight != 1.0:
            raise ValueError(
                "rest_weight weighs the KL of the horizon tokens: it needs objective: substitution"
            )
        self._check_multiblock()
        if self.compile:
            import torch._dynamo

            backends = torch._dynamo.list_backends(exclude_tags=())
            if self.compile_backend not in backends:
                raise ValueError(
                    f"compile_backend {self.compile_backend!r} is not one of torch.compile's "
                    f"backends here: {', '.join(sorted(backends))}"
                )
            if self.compile_mode is not None and self.compile_backend != "inductor":
                raise ValueError(
                    f"compile_mode is inductor's; compile_backend {self.compile_backend!r} "
                    f"takes none: remove compile_mode"
                )
        if self.objective != "substitution" and self.activation_checkpointing:
            raise ValueError(
                "activation_checkpointing saves the teacher's activations on the gradient "
                "side of the substitution objective: it needs objective: substitution"
            )
        return self

    def _check_multiblock(self) -> None:
        if self.objective != "multiblock":
            if self.blocks != 1 or self.compressed_blocks is not None:
                raise ValueError(
                    "blocks and compressed_blocks shape the windows of objective: multiblock; "
                    f"objective {self.objective} reads one block: remove them"
                )
            return
        if self.compressed_blocks is not None and self.compressed_blocks > self.blocks:
            raise ValueError(
                f"compressed_blocks ({self.compressed_blocks}) exceeds blocks ({self.blocks}): "
                f"a window compresses at most all of its blocks"
            )
        if self.nll_weight:
            raise ValueError(
                "the multiblock objective is the KL alone: nll_weight needs objective: substitution"
            )


# Named starting points, each the measured best for what it names (docs/quality.md). A run
# config's `preset:` (and POST /train's) fills in these keys; a key the config sets itself
# wins. With no preset every key keeps its default, which is what configs written for the
# seed's tool (mse on cached states) mean.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # For the substitution objective: the block's token embeddings and the teacher's
    # embedding output (hidden state 0) beside its last-layer states, 4 queries per gist,
    # the gist MLP, the gists read after BOS; lr 3e-3 (1e-3 and 6e-3 measured worse).
    "substitution": {
        "model": {
            "token_embeddings": True,
            "teacher_layers": [0],
            "pool_queries": 4,
            "gist_mlp": True,
            "bos_sink": True,
        },
        "training": {"objective": "substitution", "lr": 3e-3},
    },
}


def _preset(name: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}: the presets are {', '.join(sorted(PRESETS))}; name "
            "one of them or leave preset out"
        )
    return PRESETS[name]


def apply_preset(data: Any) -> Any:
    """A run config's mapping with its `preset`'s keys filled in under the keys it sets."""
    if not isinstance(data, dict) or data.get("preset") is None:
        return data
    merged = dict(data)
    for section, keys in _preset(data["preset"]).items():
        given = data.get(section)
        if given is None or isinstance(given, dict):
            merged[section] = {**keys, **(given or {})}
    return merged


@dataclass
class GistNetConfig:
    """GistNet's shape: the run config's `model:` section and the model's own config.

    A run config may leave hidden_size and block_size out: `gistnet.train.model_config_for`
    takes them from the dataset. The model itself needs both. Checkpoints store this as a
    plain dict (`to_dict`) and rebuild it with `GistNetConfig(**d)`.
    """

    # A misspelt key in a YAML or JSON `model:` section is an error, not silently ignored.
    # An infinite or NaN number is never a meaningful setting (YAML's .inf, JSON's 1e999).
    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)

    hidden_size: int | None = None  # the teacher's width, where gists live (None: the dataset's)
    block_size: int | None = None  # tokens per block; fixes the rotary table (None: the dataset's)
    num_heads: int = 4  # attention heads in every layer and in the pooling head
    mlp_ratio: float = 4.0  # MLP width as a multiple of hidden_size
    num_layers: int = 1  # transformer blocks before pooling; one already beats the mean
    rope_base: float = 10000.0  # rotary frequency base, as in most decoder LMs
    norm_eps: float = 1e-5  # LayerNorm epsilon
    # Vectors per block: k pooling queries, substituted at the block's last k positions.
    # More vectors carry more of the block at a lower compression (block_size / k : 1).
    gists_per_block: int = 1
    # Also read the block's input token embeddings (the teacher's, given by the caller)
    # beside its last-layer states: the gist is read at the input, where tokens live.
    token_embeddings: bool = False
    # Queries per gist: each of the k gists mixes what its pool_queries queries read from
    # the block (one linear map of their concatenation), so one vector can gather several
    # parts of the block (a name, a place) that one softmax would average together.
    pool_queries: int = 1
    # A residual MLP on each gist after the pooling: lets the vector be a non-linear
    # function of what the queries read, not only a sum of linear maps of it.
    gist_mlp: bool = False
    # How the teacher reads the gists: after its BOS embedding (one more position before
    # them), as at the start of any sequence, rather than as the sequence's first input.
    # The teacher's heads park attention on a sequence's first position; with BOS there
    # the gists need not serve as that sink and carry content alone. Trained, evaluated
    # and served this way (the checkpoint records it); needs gists_per_block < block_size.
    bos_sink: bool = False
    # States of more teacher layers to read beside the last one: indices into the
    # teacher's hidden states as Hugging Face numbers them (`output_hidden_states`: 0 is
    # the embedding output, i the output of block i). Each enters through a norm and a
    # projection of its own. Taken from the teacher's forward in every step, whatever
    # states a dataset caches. On the sample only 0 helped (docs/quality.md).
    teacher_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # A checkpoint's JSON-able config or a YAML list gives a list; keep one spelling.
        self.teacher_layers = tuple(int(i) for i in self.teacher_layers)
        if any(i < 0 for i in self.teacher_layers):
            raise ConfigError(
                f"teacher_layers {list(self.teacher_layers)}: give hidden-state indices >= 0 "
                "(0 is the embedding output, i the output of the teacher's block i)"
            )
        if len(set(self.teacher_layers)) != len(self.teacher_layers):
            raise ConfigError(f"teacher_layers {list(self.teacher_layers)} names a layer twice")
        # One check serves the model's constructor and the YAML/JSON validation (pydantic
        # runs __post_init__ too and reports the ConfigError, a ValueError, under `model`).
        for name in (
            "hidden_size",
            "block_size",
            "num_heads",
            "num_layers",
            "gists_per_block",
            "pool_queries",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1; got {value}")
        for name in ("mlp_ratio", "rope_base", "norm_eps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive; got {getattr(self, name)}")
        if (
            self.block_size is not None
            and self.bos_sink
            and self.gists_per_block + 1 > self.block_size
        ):
            raise ConfigError(
                f"bos_sink puts BOS before the {self.gists_per_block} gists, "
                f"{self.gists_per_block + 1} positions in a block of {self.block_size}: "
                "use fewer gists_per_block or bos_sink: false"
            )
        if self.block_size is not None and self.gists_per_block > self.block_size:
            raise ConfigError(
                f"gists_per_block ({self.gists_per_block}) exceeds block_size "
                f"({self.block_size}): a block cannot be compressed into more vectors than tokens"
            )
        if self.hidden_size is None:
            return
        if self.hidden_size % self.num_heads != 0:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) is not divisible by num_heads "
                f"({self.num_heads}); pick num_heads that divides {self.hidden_size}"
            )
        if (self.hidden_size // self.num_heads) % 2 != 0:
            raise ConfigError(
                f"head size hidden_size/num_heads = {self.hidden_size // self.num_heads} must be "
                f"even for rotary embeddings"
            )

    @property
    def head_dim(self) -> int:
        if self.hidden_size is None:
            raise ConfigError("hidden_size is not set: take it from the dataset first")
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "teacher_layers": list(self.teacher_layers)}

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GistNetConfig:
        """The model of a named preset (PRESETS), `overrides` winning over its keys."""
        return cls(**{**_preset(name)["model"], **overrides})


class RunConfig(_Strict):
    # A named preset (PRESETS) whose keys fill in what `model` and `training` leave out.
    preset: str | None = None
    model: GistNetConfig = Field(default_factory=GistNetConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return apply_preset(data)


def parse_device(spec: str) -> str:
    """Check a device spelling: cpu | cuda | cuda:N | auto. Existence is checked later."""
    if spec in ("cpu", "cuda", "auto"):
        return spec
    if spec.startswith("cuda:") and spec[5:].isdigit():
        return spec
    raise ValueError(f"device {spec!r} is not one of cpu, cuda, cuda:N, auto")


def describe_validation_errors(
    errors: list[dict[str, Any]], *, name_of: Callable[[tuple], str] | None = None
) -> list[str]:
    """pydantic's errors as sentences a person can act on, one per problem.

    `name_of` turns an error's location into the name the person typed (a dotted key by
    default; the service names an environment variable, the API drops the `body` prefix).
    """
    name_of = name_of or (lambda loc: ".".join(str(p) for p in loc))
    lines = []
    for e in errors:
        where = name_of(tuple(e.get("loc", ())))
        # A dataclass section (`model:`) reports an unknown key as an unexpected argument.
        if e.get("type") in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(f"unknown key {where!r}: remove it or check its spelling")
        elif e.get("type") == "missing":
            lines.append(f"missing required key {where!r}")
        else:
            msg = str(e.get("msg", "")).removeprefix("Value error, ")
            lines.append(f"{where}: {msg}" if where else msg)
    return lines


def _format_validation_error(err: ValidationError, what: str) -> str:
    return f"invalid {what}: " + "; ".join(describe_validation_errors(err.errors()))


def validate_dataset_config(data: dict[str, Any]) -> DatasetConfig:
    try:
        return DatasetConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, "dataset config")) from None


def validate_run_config(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, "run config")) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return data


def load_dataset_config(path: str | Path) -> DatasetConfig:
    return validate_dataset_config(read_yaml(path))


# How often the command line prints a training line: a setting of the terminal, not of
# the run, so a run (and POST /train) takes none. A run config file may name it as
# training.log_every, where the seed's tool reads it.
DEFAULT_LOG_EVERY = 20


def read_run_yaml(path: str | Path) -> tuple[dict[str, Any], int]:
    """A run config file's keys without training.log_every, and that log cadence."""
    data = read_yaml(path)
    training = data.get("training")
    if not isinstance(training, dict) or "log_every" not in training:
        return data, DEFAULT_LOG_EVERY
    log_every = training.pop("log_every")
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ConfigError(
            f"invalid run config: training.log_every must be a whole number of steps >= 1; "
            f"got {log_every!r}"
        )
    return data, log_every


def load_run_file(path: str | Path) -> tuple[RunConfig, int]:
    """A run config file: the run, and how often the command line prints a line."""
    data, log_every = read_run_yaml(path)
    return validate_run_config(data), log_every


def load_run_config(path: str | Path) -> RunConfig:
    return load_run_file(path)[0]
