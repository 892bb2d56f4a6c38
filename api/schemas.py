"""Request and response bodies, named by role: ...Create in, ...Public out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from api.validation import unstorable_text
from gistnet.config import (
    DatasetConfig,
    GistNetConfig,
    SplitConfig,
    TrainingConfig,
    apply_preset,
)
from gistnet.eval.request import EvalSettings
from gistnet.refine import MAX_SAMPLES as REFINE_MAX_SAMPLES
from gistnet.refine import MAX_STEPS as REFINE_MAX_STEPS
from gistnet.refine import MAX_TEMPERATURE as REFINE_MAX_TEMPERATURE
from gistnet.refine import MIN_TEMPERATURE as REFINE_MIN_TEMPERATURE
from gistnet.refine import RefineSettings
from service.db.models import Dataset, Model
from service.limits import INT32_MAX
from service.queue import JobKind, JobStatus, ProductStatus, QueueName

# Ids are Integer columns: anything outside this range names no row, and some databases
# refuse to even compare with it.
RowId = Annotated[int, Field(ge=1, le=INT32_MAX)]


def _length(column) -> int:
    """The length of a String column, so a request is refused before the database does."""
    return column.property.columns[0].type.length


# A split's name is stored with the models and evaluations made from it.
SplitName = Annotated[str, StringConstraints(min_length=1, max_length=_length(Model.split))]


class _Out(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), from_attributes=True)


class _Storable(BaseModel):
    """A request body whose strings a database can store (no NUL, no half surrogate pair): checked
    before any field, so a bad byte is a 422 that names it, never a 500 at the insert."""

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        problem = unstorable_text(data)
        if problem:
            raise ValueError(problem)
        return data


class _In(_Storable):
    model_config = ConfigDict(protected_namespaces=(), extra="forbid", allow_inf_nan=False)


# --------------------------------------------------------------------------- errors


class ErrorItem(_Out):
    # Where the problem is: ["body", "training", "lr"], ["path", "job_id"], ...
    loc: list[str | int]
    msg: str
    type: str


class ErrorPublic(_Out):
    """Every error the API answers, whatever its status."""

    # One sentence per problem, naming the field: what a person reads.
    detail: str
    # For request validation (422): each problem on its own, for a program to read.
    errors: list[ErrorItem] = []


# --------------------------------------------------------------------------- jobs


class JobProgress(_Out):
    step: int | None = None
    max_steps: int | None = None
    loss: float | None = None
    examples_per_sec: float | None = None
    # Kind-specific: documents/tokens/examples while preparing, running_loss/lr/val_loss while training.
    detail: dict[str, Any] | None = None


class JobError(_Out):
    message: str
    type: str | None = None


class JobPartPublic(_Out):
    """One part of a dataset prepared in parts: a job of its own."""

    job_id: int
    # 0-based, in the order of the dataset's parts (split by split).
    index: int
    split: str | None
    shard: str | None
    status: JobStatus
    attempt: int
    worker: str | None
    # documents/tokens/examples so far; once done also bytes, sha256 and `reused` (a
    # redelivered part whose shard was already complete and verified).
    detail: dict[str, Any] | None
    error: JobError | None
    heartbeat_at: datetime | None
    finished_at: datetime | None


class PartsPublic(_Out):
    total: int
    # Counts per status, e.g. {"succeeded": 3, "running": 1}.
    by_status: dict[str, int]
    examples: int
    data: list[JobPartPublic]


class JobPublic(_Out):
    id: int
    kind: JobKind
    status: JobStatus
    queue: QueueName
    dataset_id: int | None
    # A part of a dataset's job: its parent, and its place among the parts.
    parent_id: int | None = None
    part_index: int | None = None
    part_count: int | None = None
    progress: JobProgress
    attempt: int
    worker: str | None
    device: str | None
    cancel_requested: bool
    error: JobError | None
    # Messages sent for the job (more than one: a lost message was replaced, see
    # GISTNET_QUEUED_RESEND_S), and when the last one went.
    sends: int
    sent_at: datetime | None
    # What the job made: {"dataset_id": ...}, {"model_id": ...} or {"evaluation_id": ...}.
    result: dict[str, int | None]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    # A dataset's job prepared in parts (GET /jobs/{id} only): each part's progress.
    parts: PartsPublic | None = None


class JobsPublic(_Out):
    data: list[JobPublic]
    count: int


class JobAccepted(_Out):
    job_id: int
    status_url: str


class MetricPoint(_Out):
    step: int
    loss: float
    running_loss: float | None
    val_loss: float | None
    lr: float | None
    examples_per_sec: float | None
    attempt: int


class JobMetricsPublic(_Out):
    job_id: int
    data: list[MetricPoint]
    count: int


class JobLogLine(_Out):
    id: int
    attempt: int
    logged_at: datetime
    level: str
    logger: str
    worker: str
    message: str


class JobLogsPublic(_Out):
    job_id: int
    # The job's last lines (or those after `after_id`), oldest first.
    data: list[JobLogLine]
    # Every line the job has recorded.
    count: int


# --------------------------------------------------------------------------- datasets


class DatasetCreate(DatasetConfig, _Storable):
    """The dataset config of the library, as JSON. Each split gives inline `documents` or a
    `source` file/glob relative to the server's data root; the service picks output paths."""

    # As long as the columns that keep them.
    dataset_name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=_length(Dataset.name)
    )
    tokenizer: str = Field(min_length=1, max_length=_length(Model.tokenizer))
    teacher_model: str = Field(min_length=1, max_length=_length(Model.teacher))
    splits: dict[SplitName, SplitConfig]


class DatasetImport(_In):
    """A dataset another tool already wrote (the seed's `prepare_dataset`, or this
    platform's elsewhere): its shards are copied under the artifact root and described."""

    dataset_name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=_length(Dataset.name)
    )
    # A dataset folder (with metadata.yaml, ours or the seed's) or one shard file (.arrow),
    # relative to the server's data root.
    path: str = Field(min_length=1, max_length=1000)
    # Needed when the dataset's metadata does not name them (a shard with no metadata);
    # when given, they replace what the metadata names.
    tokenizer: str | None = Field(default=None, min_length=1, max_length=_length(Model.tokenizer))
    teacher_model: str | None = Field(default=None, min_length=1, max_length=_length(Model.teacher))


class DatasetAccepted(JobAccepted):
    dataset_id: int
    dataset_url: str


class ShardPublic(_Out):
    # Relative to the artifact root.
    path: str
    documents: int | None = None
    examples: int | None = None
    bytes: int | None = None
    sha256: str | None = None


class SplitPublic(_Out):
    # Relative to the artifact root; a glob when the split has several shards.
    path: str
    # A split written as several shard files: each of them.
    shards: list[ShardPublic] | None = None
    documents: int | None = None
    tokens: int | None = None
    blocks: int | None = None
    examples: int | None = None
    bytes: int | None = None
    seconds: float | None = None


class DatasetPublic(_Out):
    id: int
    name: str
    status: ProductStatus
    error: str | None
    job_id: int | None
    job_status: JobStatus | None
    tokenizer: str
    teacher_model: str
    # cache: the shards hold every block's teacher states; none: token ids only.
    teacher_states: str
    block_size: int
    horizon: int
    # Tokens between successive windows of a document (block_size: one window per block).
    stride: int
    teacher_hidden_size: int | None
    vocab_size: int | None
    fingerprint: str | None
    # Folder of the shards and metadata.yaml, relative to the artifact root.
    path: str | None
    splits: dict[str, SplitPublic]
    # Where each split's text came from: its `source` under the data root (uploads are
    # under uploads/), or "N inline documents".
    sources: dict[str, str] = {}
    created_at: datetime
    updated_at: datetime
    # Prepared in parts (GET /datasets/{id} only): each part's progress.
    parts: PartsPublic | None = None


class DatasetsPublic(_Out):
    data: list[DatasetPublic]
    count: int


# --------------------------------------------------------------------------- training


class TrackingOptions(_In):
    """Where a training run is logged besides the job's loss curve."""

    # TensorBoard event files under the job's artifact folder (jobs/<id>/tensorboard).
    tensorboard: bool = False
    # An MLflow run on the server's GISTNET_MLFLOW_TRACKING_URI: the run config as
    # parameters, each step's losses, the checkpoint as an artifact.
    mlflow: bool = False
    experiment: str = Field(default="gistnet", min_length=1, max_length=200)
    # None: job-<id>.
    run_name: str | None = Field(default=None, min_length=1, max_length=200)


class TrainCreate(_In):
    dataset_id: RowId
    split: SplitName = "train"
    # Off by default: the loss curve is in GET /jobs/{id}/metrics either way.
    tracking: TrackingOptions | None = None
    # A named preset (gistnet.config.PRESETS, e.g. "substitution") filling in the model and
    # training keys the request leaves out.
    preset: str | None = None
    model: GistNetConfig = GistNetConfig()
    training: TrainingConfig = TrainingConfig()

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return apply_preset(data)


class EvaluationSummary(_Out):
    id: int
    status: ProductStatus
    dataset_id: int
    split: str
    created_at: datetime
    finished_at: datetime | None
    report: dict[str, Any] | None


class ModelPublic(_Out):
    id: int
    job_id: int
    dataset_id: int
    split: str
    # Relative to the artifact root.
    checkpoint_path: str
    gistnet_config: dict[str, Any] = Field(serialization_alias="model_config")
    training_config: dict[str, Any]
    teacher: str
    tokenizer: str
    block_size: int
    hidden_size: int
    steps: int
    final_loss: float | None
    val_loss: float | None
    created_at: datetime
    latest_evaluation: EvaluationSummary | None = None


class ModelsPublic(_Out):
    data: list[ModelPublic]
    count: int


# --------------------------------------------------------------------------- gists


class RefineOptions(_In):
    """Gists refined from their blocks alone (gistnet.refine): the teacher samples
    `samples` continuations of each block and Adam moves the gist `steps` times so the
    teacher predicts them after the gist as after the block. Costs about samples x steps
    teacher passes per block."""

    samples: int = Field(default=8, ge=1, le=REFINE_MAX_SAMPLES)
    steps: int = Field(default=50, ge=1, le=REFINE_MAX_STEPS)
    lr: float = Field(default=0.05, gt=0, le=10.0)
    temperature: float = Field(default=0.8, ge=REFINE_MIN_TEMPERATURE, le=REFINE_MAX_TEMPERATURE)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)

    def settings(self) -> RefineSettings:
        return RefineSettings(**self.model_dump())


class GistRequest(_In):
    # None: the newest model.
    model_id: RowId | None = None
    # Token ids, each block exactly the model's block_size long...
    blocks: list[list[int]] | None = None
    # ...or text, tokenized with the model's tokenizer and cut into full blocks.
    text: str | None = None
    # float: lists of numbers; base64: little-endian float32 bytes, as embedding servers offer.
    encoding: Literal["float", "base64"] = "float"
    # Refine each gist at gist time (slower: see RefineOptions); None returns GistNet's own.
    refine: RefineOptions | None = None


class GistResponse(_Out):
    model_id: int
    dim: int
    block_size: int
    # k, the vectors the model emits per block (its `gists_per_block`).
    gists_per_block: int = 1
    # True for a model trained with bos_sink: the teacher reads its gists after the
    # embedding of sink_token_id (its BOS), one position before them; put it there too.
    bos_sink: bool = False
    sink_token_id: int | None = None
    encoding: Literal["float", "base64"]
    # float: shape (N, D) when gists_per_block is 1, else (N, k, D): block i's vector j
    # stands at the block's position T-k+j. base64: one string per block holding its
    # k x D little-endian float32 values, row-major.
    gists: list[list[float]] | list[list[list[float]]] | list[str]
    # Text requests only: tokens the text had, and the tail too short for a full block.
    tokens: int | None = None
    unused_tokens: int | None = None
    # Text requests only: each block's tokens written back as text, in order.
    block_texts: list[str] | None = None
    # How the gists were refined, when the request asked for it.
    refine: RefineOptions | None = None


# --------------------------------------------------------------------------- evaluations


class EvaluationCreate(_In):
    model_id: RowId
    dataset_id: RowId
    split: SplitName = "validation"
    # A seeded random subset of the split; None scores every example.
    max_examples: int | None = Field(default=None, ge=1)
    bootstrap_samples: int = Field(default=1000, ge=10)
    seed: int = Field(default=0, ge=0)
    # Adds the `oracle` condition on a seeded subset of this many examples: free vectors
    # fitted to each example, the ceiling of what the gist's vectors could carry. Costs
    # about one training step per example batch and Adam step; None leaves it out.
    oracle_examples: int | None = Field(default=None, ge=1, le=4096)
    # Adds the `refined` condition: every gist refined from its block alone (gistnet.refine)
    # and scored beside the gist, in the oracle section too. None leaves it out.
    refine: RefineOptions | None = None
    # "blocks": each example's block read as its gist (ΔNLL@H). "long": the score_tokens
    # after a context of context_tokens, read whole, truncated to the compressed length,
    # or with all but its recent_tokens as gists (gistnet.eval.long); the dataset's
    # horizon must hold context_tokens + score_tokens.
    mode: Literal["blocks", "long"] = "blocks"
    context_tokens: int | None = Field(default=None, ge=2, le=INT32_MAX)
    recent_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    score_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)

    def settings(self) -> EvalSettings:
        """What the job scores, as the job row stores it and the worker reads it back.
        Raises ConfigError naming the field for settings that do not go together."""
        return EvalSettings(
            max_examples=self.max_examples,
            bootstrap_samples=self.bootstrap_samples,
            seed=self.seed,
            oracle_examples=self.oracle_examples,
            refine=None if self.refine is None else self.refine.settings(),
            mode=self.mode,
            context_tokens=self.context_tokens,
            recent_tokens=self.recent_tokens,
            score_tokens=self.score_tokens,
        )


class EvaluationAccepted(JobAccepted):
    evaluation_id: int
    evaluation_url: str


class EvaluationPublic(_Out):
    id: int
    job_id: int
    model_id: int
    dataset_id: int
    split: str
    status: ProductStatus
    job_status: JobStatus | None
    error: str | None
    report: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None


class EvaluationsPublic(_Out):
    data: list[EvaluationPublic]
    count: int


# --------------------------------------------------------------------------- health


class HealthPublic(_Out):
    status: Literal["ok"]
    models_loaded: list[int]
    # Blocks waiting for a forward now; forwards run and blocks encoded since start-up.
    gist_queue_blocks: int
    gist_forwards: int
    gist_blocks: int


class VersionsPublic(_Out):
    gistnet: str
    torch: str
    transformers: str
    python: str


class InfoPublic(_Out):
    versions: VersionsPublic
    # Where this process computes gists (the `device` setting resolved: cpu, cuda:0, ...).
    device: str
    models_loaded: list[int]
    # The bounds on request numbers in force (service/limits.py with GISTNET_LIMITS applied).
    limits: dict[str, int | float]
    # Request bodies larger than these get 413, by route.
    max_body_bytes: dict[str, int]
    # A training request whose memory estimate is larger is refused.
    worker_memory_bytes: int


class ReadyPublic(_Out):
    ready: bool
    checks: dict[str, str]
