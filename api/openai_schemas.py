"""Request and response bodies of the OpenAI-compatible routes (/v1/embeddings,
/v1/models) and OpenAI's error shape, as OpenAI's clients send and read them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, StrictStr, ValidationError, field_validator

from api.schemas import _In, _Out

# As many inputs as OpenAI's embeddings route takes in one request.
EMBEDDING_MAX_INPUTS = 2048


class EmbeddingsCreate(_In):
    """OpenAI's embeddings request. `model`: `gistnet` (the newest model) or `gistnet-<id>`
    (GET /v1/models lists them). `input`: a text, a list of texts, a list of token ids, or
    a list of such lists; each is cut into blocks of the model's block size (a tail
    shorter than a block is not embedded), and each block gives one embedding, in order,
    unless `pooling` is `mean` (one embedding per input, the mean of its blocks'). An
    embedding is the block's gist (its k gists one after the other, for a model with k
    per block)."""

    model: str = Field(min_length=1, max_length=100)
    input: (
        StrictStr
        | Annotated[list[StrictStr], Field(min_length=1, max_length=EMBEDDING_MAX_INPUTS)]
        | Annotated[list[StrictInt], Field(min_length=1)]
        | Annotated[
            list[Annotated[list[StrictInt], Field(min_length=1)]],
            Field(min_length=1, max_length=EMBEDDING_MAX_INPUTS),
        ]
    )
    encoding_format: Literal["float", "base64"] = "float"
    # OpenAI's option to shorten embeddings: a gist has the teacher's width, so it is refused.
    dimensions: int | None = None
    # Accepted as OpenAI's clients send it; not stored.
    user: str | None = Field(default=None, max_length=256)
    # Not OpenAI's: `none` (one embedding per block) or `mean` (one per input); OpenAI's
    # clients send it with `extra_body={"pooling": "mean"}`.
    pooling: Literal["none", "mean"] = "none"

    @field_validator("input", mode="wrap")
    @classmethod
    def _one_problem(cls, value: Any, handler):
        # One sentence instead of one per member of the union.
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(
                f"give a text, a list of texts, a list of token ids or a list of token-id "
                f"lists, none empty, at most {EMBEDDING_MAX_INPUTS} of them"
            ) from None

    @field_validator("dimensions")
    @classmethod
    def _no_dimensions(cls, value: int | None) -> None:
        if value is not None:
            raise ValueError(
                "a gist has its model's width and cannot be shortened: leave `dimensions` out"
            )


class EmbeddingPublic(_Out):
    object: Literal["embedding"] = "embedding"
    index: int
    # float: the numbers; base64: little-endian float32 bytes, as OpenAI sends them.
    embedding: list[float] | str
    # Not OpenAI's: the input this embedding is of, and its block there (None for a mean).
    input_index: int
    block: int | None


class EmbeddingsUsage(_Out):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsPublic(_Out):
    object: Literal["list"] = "list"
    data: list[EmbeddingPublic]
    model: str
    usage: EmbeddingsUsage


class OpenAIModelPublic(_Out):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelsPublic(_Out):
    object: Literal["list"] = "list"
    data: list[OpenAIModelPublic]


class OpenAIError(_Out):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorPublic(_Out):
    """The errors of the /v1/ routes, in OpenAI's shape."""

    error: OpenAIError
