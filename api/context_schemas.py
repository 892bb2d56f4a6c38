"""Request and response bodies of the routes that read contexts (POST /score, POST
/generate) and of the memories they name (/memories), named by role like api/schemas.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StrictInt, StrictStr, model_validator

from api.schemas import RowId, _In, _length, _Out
from service.db.models import Memory
from service.limits import INT32_MAX, INT64_MAX

PART_KINDS = ("text", "compress", "tokens", "compress_tokens", "memory_id")
# Token ids as a request gives them: anything else than whole numbers is refused as it
# is parsed, a number outside the vocabulary by the route, naming it.
TokenIds = list[StrictInt]


class ContextPart(_In):
    """One run of a context's text, in the order it is read; give exactly one field.
    `text` / `tokens`: read raw. `compress` / `compress_tokens`: cut into the model's
    blocks, each read as its gists where the block stood; a tail shorter than a block is
    read raw. `memory_id`: a stored memory (POST /memories), read as `compress` would read
    its document. Each text is tokenized on its own; `keep_last` keeps a raw part's last
    tokens only."""

    text: StrictStr | None = None
    compress: StrictStr | None = None
    tokens: TokenIds | None = None
    compress_tokens: TokenIds | None = None
    memory_id: RowId | None = None
    # A raw part only: read its last keep_last tokens alone (truncation, the baseline a
    # compressed context is measured against at the same budget).
    keep_last: int | None = Field(default=None, ge=0, le=INT32_MAX)

    @model_validator(mode="after")
    def _one_kind(self) -> ContextPart:
        given = [kind for kind in PART_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(PART_KINDS)}"
                + (f" (this part gives {', '.join(given)})" if given else "")
            )
        if self.keep_last is not None and given[0] not in ("text", "tokens"):
            raise ValueError(
                f"keep_last truncates a raw part (text or tokens), not a {given[0]} part"
            )
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in PART_KINDS if getattr(self, kind) is not None)

    @property
    def value(self):
        return getattr(self, self.kind)


class _ContextRequest(_In):
    # None: the newest model, or the model of the memories the context names.
    model_id: RowId | None = None
    context: list[ContextPart] = Field(default=[], max_length=1000)


class ScoreCreate(_ContextRequest):
    # The tokens to score after the context: a text (tokenized on its own) or token ids.
    continuation: (
        Annotated[StrictStr, Field(min_length=1)] | Annotated[TokenIds, Field(min_length=1)]
    )


class ContextLength(_Out):
    # Inputs the teacher read for the context (its prefill and its KV cache), and the
    # positions the same text takes read raw; tokens it read as gists, in full blocks.
    context_length: int
    uncompressed_length: int
    compressed_blocks: int


class ScorePublic(ContextLength):
    model_id: int
    # The continuation's token ids and the log-probability of each, after the context
    # and the tokens before it; their sum, and the mean negative log-likelihood in nats.
    tokens: list[int]
    token_logprobs: list[float]
    sum_logprob: float
    mean_nll: float


class GenerateCreate(_ContextRequest):
    # Read raw after the context: a text or token ids. The context and the prompt
    # together must not be empty: the first new token follows something.
    prompt: StrictStr | TokenIds = ""
    # Above GISTNET_GENERATE_MAX_NEW_TOKENS: 422.
    max_new_tokens: int = Field(default=64, ge=1, le=INT32_MAX)
    # 0: the most likely token each time (greedy, deterministic).
    temperature: float = Field(default=0.0, ge=0, le=100)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = Field(default=0, ge=0, le=INT64_MAX)
    # Go on past the end-of-text token instead of stopping there.
    ignore_eos: bool = False
    # Server-Sent Events: one `token` event per new token, then `done` with the answer.
    stream: bool = False


class GenerationPublic(ContextLength):
    model_id: int
    # The new tokens, and their text (None for a model whose checkpoint names no tokenizer).
    token_ids: list[int]
    text: str | None
    # length: max_new_tokens were made; stop: the end-of-text token came (not included).
    finish_reason: Literal["length", "stop"]
    prompt_tokens: int


class GenerationToken(_Out):
    """A `token` event of a streamed generation: the new token and the text it adds."""

    index: int
    token_id: int
    text: str | None


class MemoryCreate(_In):
    """A document compressed once; give `text` or `tokens`. It takes at least one full block."""

    # None: the newest model.
    model_id: RowId | None = None
    text: StrictStr | None = None
    tokens: TokenIds | None = None
    name: str | None = Field(default=None, max_length=_length(Memory.name))

    @model_validator(mode="after")
    def _one_document(self) -> MemoryCreate:
        if (self.text is None) == (self.tokens is None):
            raise ValueError("give exactly one of `text` or `tokens`")
        return self


class MemoryPublic(_Out):
    id: int
    model_id: int
    name: str | None
    # The document's tokens; the full blocks read as gists, and the raw tail after them.
    tokens: int
    blocks: int
    tail_tokens: int
    # Inputs the teacher reads for it in a context (k per block, then the tail).
    context_length: int
    # The artifact (gists and token ids, .npz), relative to the artifact root.
    path: str
    created_at: datetime


class MemoriesPublic(_Out):
    data: list[MemoryPublic]
    count: int
