"""One settings object, read from GISTNET_* environment variables, for the API, the workers
and the migrations. Every field has a default that runs the embedded stack (SQLite records,
a SQLite-backed Celery broker) on one machine with nothing else installed."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from gistnet.bounds import ModelBounds, SourceBounds
from gistnet.cache import DEFAULT_CACHE_MAX_BYTES
from gistnet.config import describe_validation_errors, parse_device
from gistnet.storage import ArtifactStore, is_url
from service.limits import resolve_limits

ENV_PREFIX = "GISTNET_"
# The sample teacher and corpus shipped with the code (tools/make_sample_teacher.py).
SAMPLES_FOLDER = Path(__file__).resolve().parents[1] / "samples"


class SettingsError(ValueError):
    """A GISTNET_* variable holds a value the platform cannot start with."""


def _location(value: Any) -> str | Path:
    """A folder stays a Path; an fsspec URL (s3://bucket/prefix) stays a string, since a
    Path would fold its `//`."""
    if isinstance(value, str) and is_url(value):
        scheme, _, rest = value.partition("://")
        if not rest.split("/", 1)[0]:
            raise ValueError(f"{value!r} names no bucket: write {scheme}://BUCKET/PREFIX")
        try:
            from fsspec import get_filesystem_class

            get_filesystem_class(scheme)
        except (ImportError, ValueError) as err:
            raise ValueError(f"{value!r}: {err}") from None
        return value.rstrip("/")
    return Path(value)


# A local folder or an object-store URL.
Location = Annotated[str | Path, BeforeValidator(_location)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Job, dataset and model records. SQLite needs no server; postgresql+psycopg://... for many hosts.
    database_url: str = "sqlite:///var/gistnet.sqlite"
    # Celery's message broker: a SQLite file by default (kombu's SQLAlchemy transport), or redis://.
    broker_url: str = "sqla+sqlite:///var/broker.sqlite"
    # Redis only: a prefix for every broker key, so that several platforms share a database.
    broker_key_prefix: str = ""
    # Shards, checkpoints, resume checkpoints and evaluation reports: a folder every process
    # shares, or an object-store URL (s3://bucket/prefix) for machines that share no disk.
    artifact_root: Location = Path("artifacts")
    # The only folder (or object-store prefix) a dataset's `source` may read from.
    data_root: Location = Path("data")
    # The only folders a `teacher_model` or `tokenizer` that is a path may name (a Hugging
    # Face id is always allowed), as JSON: ["/models"]. None: the data root, the artifact
    # root, the shipped samples folder and the Hugging Face cache (see `model_folders`).
    model_roots: list[Path] | None = None
    # fsspec options for object-store roots, as JSON: {"endpoint_url": "http://minio:9000"}
    # for MinIO; credentials come from the usual AWS_* variables or "key"/"secret" here.
    storage_options: dict[str, Any] = Field(default_factory=dict)
    # Local copies of object-store artifacts that are memory-mapped (shards, checkpoints).
    cache_dir: Path = Path("var/cache")
    # The cache's bound; the least recently used copies are removed beyond it.
    cache_max_bytes: int = Field(default=DEFAULT_CACHE_MAX_BYTES, ge=0)
    # When set, every endpoint but /health wants `Authorization: Bearer <key>`.
    api_key: SecretStr | None = None
    # Where workers train and the API computes gists: auto | cpu | cuda | cuda:N.
    device: str = "auto"

    # Tasks a worker runs at once. One per GPU: a second job would fight for its memory.
    worker_concurrency: int = Field(default=1, ge=1)
    # CPU threads torch uses in each worker task process and in the API process; None leaves
    # torch's default (all cores). On a shared or busy machine fewer threads than cores
    # avoid spinning threads that slow every step many times over.
    torch_threads: int | None = Field(default=None, ge=1)
    # A running job stamps its row this often...
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    # ...and a job silent for this long has lost its worker and is queued again.
    heartbeat_timeout_s: float = Field(default=120.0, gt=0)
    # Runs a job gets (the first one included) before a lost worker fails it for good.
    max_attempts: int = Field(default=3, ge=1)
    # Training writes a resume checkpoint every this many steps; a redelivered job continues there.
    resume_every: int = Field(default=100, ge=1)
    # Progress and loss-curve rows are written at most this often, not on every step.
    progress_interval_s: float = Field(default=1.0, ge=0)
    # How often a running job looks at its row for a cancel request.
    cancel_poll_s: float = Field(default=1.0, ge=0)
    # The commit that ends a run (its result and status) is tried again for this long while
    # the database is unreachable (a restart, a failover), with a doubling wait: the work is
    # done, and giving up would leave it to the heartbeat timeout and a rerun.
    final_commit_retry_s: float = Field(default=60.0, ge=0)
    # Redis (and SQS) hand an unacknowledged message to another worker after this long; it must
    # outlast the longest job, or a healthy job would run twice.
    visibility_timeout_s: int = Field(default=7 * 24 * 3600, ge=60)
    # A queued job nobody has claimed for this long may have lost its message (a broker that
    # restarted without saving, an API stopped between commit and send): it is sent again...
    queued_resend_s: float = Field(default=300.0, gt=0)
    # ...and then after twice the wait each time, up to this, so a job that only waits its
    # turn behind a long run collects a few harmless duplicates, not one per sweep.
    queued_resend_max_s: float = Field(default=3600.0, gt=0)

    # Idempotency-Key answers are kept this long; a retry after that makes a new job.
    idempotency_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    # Request bodies: POST /datasets (inline documents), POST /gist, and every other route.
    # Larger ones get 413 before they are read in full.
    dataset_max_body_bytes: int = Field(default=4 * 2**20, ge=1024)
    gist_max_body_bytes: int = Field(default=2**20, ge=1024)
    max_body_bytes: int = Field(default=64 * 2**10, ge=1024)
    # Overrides of the bounds on request numbers (service/limits.py), as JSON:
    # {"training.max_steps": 5000000}. Read the resolved bounds from `request_limits`.
    limits: dict[str, int | float] = Field(default_factory=dict)
    # Memory one run may use on a worker (a GPU's memory for a GPU worker); a training
    # request whose estimate is larger is refused. None: this host's physical memory.
    worker_memory_bytes: int | None = Field(default=None, ge=2**20)
    # Where training runs asked to (POST /train's tracking.mlflow) are logged: an MLflow
    # tracking URI (http://..., sqlite:///...) or a folder the workers share. None: refused.
    mlflow_tracking_uri: str | None = None

    # POST /gist: most blocks one request may carry (413 above it).
    gist_max_blocks: int = Field(default=256, ge=1)
    # Most blocks run through the teacher and GistNet in one forward.
    gist_max_batch: int = Field(default=64, ge=1)
    # How long the first request of a batch waits for others to join it.
    gist_batch_wait_ms: float = Field(default=5.0, ge=0)
    # Blocks waiting for a forward, all requests together; beyond it requests get 429.
    gist_queue_size: int = Field(default=4096, ge=1)
    # POST /gist with `refine`: most blocks x samples x steps one request may ask for (413
    # above it; about 17 s of the sample teacher on 2 cores at the default), and most
    # refining requests waiting or running at once (429 above it).
    gist_refine_max_work: int = Field(default=6400, ge=1)
    gist_refine_queue: int = Field(default=4, ge=1)
    # Models whose teacher + GistNet stay loaded in the API process.
    gist_model_cache: int = Field(default=2, ge=1)

    # POST /score, /generate and /memories: the largest body (a long document's text)...
    context_max_body_bytes: int = Field(default=2**20, ge=1024)
    # ...the most tokens one request's context may hold, raw and compressed parts together
    # with the continuation or prompt (413 above it; the teacher's position limit, 422,
    # is the other bound), and the most tokens one memory may hold...
    context_max_tokens: int = Field(default=16384, ge=1)
    # ...the most new tokens one POST /generate may ask for (422 above it)...
    generate_max_new_tokens: int = Field(default=512, ge=1)
    # ...and the scoring and generating requests waiting or running at once (429 above
    # it): they take turns on one thread of their own, a generation one token at a time.
    context_queue: int = Field(default=8, ge=1)

    # POST /datasets with files: most bytes one upload may carry, all files together (413
    # above it). Files are streamed to <data root>/uploads/, never held in memory.
    upload_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    # Log lines one run of a job records for GET /jobs/{id}/logs; past them, one line says
    # how many more there were, so a job that logs without end cannot fill the database.
    job_log_max_lines: int = Field(default=10_000, ge=1)
    # GET /jobs/{id}/events: how often the stream looks at the job's row for news.
    events_poll_s: float = Field(default=0.5, gt=0)
    # A worker serves its Prometheus metrics on this port (its main process, for every pool
    # process); None or 0 serves none. Two workers on one host need two ports.
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value):
        return None if value is None or (isinstance(value, str) and not value.strip()) else value

    @field_validator("device")
    @classmethod
    def _device_spelling(cls, value: str) -> str:
        return parse_device(value)

    @field_validator("limits")
    @classmethod
    def _known_limits(cls, value: dict[str, int | float]) -> dict[str, int | float]:
        resolve_limits(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.heartbeat_timeout_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"GISTNET_HEARTBEAT_TIMEOUT_S ({self.heartbeat_timeout_s}) must be at least twice "
                f"GISTNET_HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s}), or a live job "
                f"that misses one beat would be taken for dead"
            )
        if self.gist_queue_size < self.gist_max_blocks:
            raise ValueError(
                f"GISTNET_GIST_QUEUE_SIZE ({self.gist_queue_size}) must be at least "
                f"GISTNET_GIST_MAX_BLOCKS ({self.gist_max_blocks}), or a full-size request "
                f"could never be accepted"
            )
        if self.queued_resend_max_s < self.queued_resend_s:
            raise ValueError(
                f"GISTNET_QUEUED_RESEND_MAX_S ({self.queued_resend_max_s}) must be at least "
                f"GISTNET_QUEUED_RESEND_S ({self.queued_resend_s})"
            )
        return self

    @property
    def request_limits(self) -> dict[str, int | float]:
        return resolve_limits(self.limits)

    @property
    def source_bounds(self) -> SourceBounds:
        """What a source file, one of its documents and an upload may hold."""
        return SourceBounds.from_limits(self.request_limits)

    @property
    def model_bounds(self) -> ModelBounds:
        """The largest model a checkpoint may ask to be built: POST /train's bounds."""
        return ModelBounds.from_limits(self.request_limits, memory_bytes=self.worker_memory)

    @property
    def worker_memory(self) -> int:
        """Bytes a run may use on a worker: the setting, else this host's physical memory."""
        if self.worker_memory_bytes is not None:
            return self.worker_memory_bytes
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    @property
    def model_folders(self) -> list[Path]:
        """The folders local teachers and tokenizers may lie in (GISTNET_MODEL_ROOTS)."""
        if self.model_roots is not None:
            return list(self.model_roots)
        from huggingface_hub import constants

        roots = [r for r in (self.data_root, self.artifact_root) if isinstance(r, Path)]
        return [*roots, SAMPLES_FOLDER, Path(constants.HF_HUB_CACHE)]

    def artifact_path(self, relative: str | Path) -> Path:
        """Artifact paths are stored relative to the root, so the volume can move. Local
        roots only: code that must also work on an object store uses `artifact_store()`."""
        if isinstance(self.artifact_root, str):
            raise SettingsError(
                f"GISTNET_ARTIFACT_ROOT is {self.artifact_root}, not a folder: read "
                f"{relative} through artifact_store()"
            )
        return self.artifact_root.resolve() / relative

    def artifact_store(self) -> ArtifactStore:
        return self._store(self.artifact_root, "GISTNET_ARTIFACT_ROOT")

    def data_store(self) -> ArtifactStore:
        return self._store(self.data_root, "GISTNET_DATA_ROOT")

    def _store(self, root: str | Path, setting: str) -> ArtifactStore:
        return ArtifactStore(
            root,
            storage_options=self.storage_options,
            cache_dir=self.cache_dir,
            cache_max_bytes=self.cache_max_bytes,
            setting=setting,
        )


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(**overrides) -> Settings:
    """Read the environment; a bad value stops start-up with a message naming its variable."""
    try:
        return Settings(**overrides)
    except PydanticSettingsError as err:
        # A value of a structured setting (GISTNET_LIMITS) that is not JSON at all.
        field = re.search(r'field "(\w+)"', str(err))
        name = env_name(field.group(1)) if field else "a GISTNET_* variable"
        raise SettingsError(
            f"invalid settings: {name} must be JSON, e.g. {name}='{{\"training.max_steps\": 5000000}}'"
            if field and field.group(1) == "limits"
            else f"invalid settings: {name} must be JSON"
        ) from None
    except ValidationError as err:
        problems = describe_validation_errors(
            err.errors(), name_of=lambda loc: env_name(str(loc[0])) if loc else ""
        )
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
