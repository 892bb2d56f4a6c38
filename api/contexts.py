"""A request's context as the engine reads it: each part tokenized, compressed or loaded.

POST /score, POST /generate and POST /memories share this: the model a request is served
by (its `model_id`, else the model of the memories it names, else the newest), its texts
tokenized within one token budget (GISTNET_CONTEXT_MAX_TOKENS, 413 past it), token ids
checked against the teacher's vocabulary, parts to compress cut into blocks and gisted
through the batching queue, memories read from their artifacts, and the positions it all
takes checked against the teacher's limit (422).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from api.batching import QueueFull
from api.engine import ContextPart, GistEngine
from api.routes.gist import engine_for
from api.validation import RequestProblem
from gistnet.errors import GistNetError
from service.db.models import Memory
from service.db.records import get_memory
from service.settings import Settings

# Gists and token ids in a memory's artifact.
GISTS, TOKENS = "gists", "tokens"


@dataclass
class TokenBudget:
    """Tokens a request may still hold, all its parts together."""

    left: int
    limit: int

    @classmethod
    def of(cls, settings: Settings) -> TokenBudget:
        return cls(left=settings.context_max_tokens, limit=settings.context_max_tokens)

    def take(self, count: int, where: str) -> None:
        if count > self.left:
            raise RequestProblem(
                f"{where}: the request holds more than {self.limit} tokens, the most this "
                f"server takes in one context, continuation and prompt together "
                f"(GISTNET_CONTEXT_MAX_TOKENS): send a shorter text or store it as a memory "
                f"of fewer tokens",
                status_code=413,
            )
        self.left -= count


# --------------------------------------------------------------------------- the model


def _memory_rows(request: Request, memory_ids: list[int]) -> dict[int, Memory]:
    with request.app.state.sessionmaker() as session:
        return {
            memory_id: memory
            for memory_id in set(memory_ids)
            if (memory := get_memory(session, memory_id=memory_id)) is not None
        }


async def context_engine(
    request: Request, settings: Settings, engines, model_id: int | None, parts: list
) -> tuple[GistEngine, dict[int, Memory]]:
    """The engine that serves a request, and the memories its context names (checked:
    each exists, and was made by that model)."""
    named = [(i, part.memory_id) for i, part in enumerate(parts) if part.memory_id is not None]
    memories = (
        await run_in_threadpool(_memory_rows, request, [m for _, m in named]) if named else {}
    )
    for index, memory_id in named:
        if memory_id not in memories:
            raise HTTPException(
                404, f"context[{index}].memory_id: memory {memory_id} does not exist"
            )
    if model_id is None and memories:
        models = {memory.model_id for memory in memories.values()}
        if len(models) > 1:
            raise RequestProblem(
                f"context: the memories named were made by models {sorted(models)}; one "
                f"context is read by one model: name memories of one model, or give model_id"
            )
        model_id = models.pop()
    engine = await engine_for(request, settings, engines, model_id)
    for index, memory_id in named:
        made_by = memories[memory_id].model_id
        if made_by != engine.model_id:
            raise RequestProblem(
                f"context[{index}].memory_id: memory {memory_id} holds gists of model "
                f"{made_by}, which model {engine.model_id} cannot read: compress the document "
                f"again with model {engine.model_id} (POST /memories)"
            )
    return engine, memories


# --------------------------------------------------------------------------- token ids


def _text_ids(engine: GistEngine, text: str, budget: TokenBudget, where: str) -> np.ndarray:
    # No token spans more than the tokenizer's longest: a text longer than the budget in
    # such tokens cannot fit, and is refused before it is tokenized; any other is
    # tokenized no further than one token past the budget.
    try:
        longest = engine.longest_token
        if len(text) > (budget.left + 1) * max(longest, 1):
            budget.take(budget.left + 1, where)
        ids = engine.tokenize(text, max_tokens=budget.left + 1)
    except GistNetError as err:  # a checkpoint that names no tokenizer
        raise RequestProblem(f"{where}: {err}") from None
    budget.take(len(ids), where)
    return np.asarray(ids, dtype=np.int64)


def _checked_ids(engine: GistEngine, ids: list[int], budget: TokenBudget, where: str) -> np.ndarray:
    budget.take(len(ids), where)
    bad = next((i for i, t in enumerate(ids) if not 0 <= t < engine.vocab_size), None)
    if bad is not None:
        raise RequestProblem(
            f"{where}[{bad}] is {ids[bad]}, outside the teacher's vocabulary "
            f"(0 to {engine.vocab_size - 1})"
        )
    return np.asarray(ids, dtype=np.int64)


async def token_ids(
    engine: GistEngine, value: str | list[int], budget: TokenBudget, where: str
) -> np.ndarray:
    """A text (tokenized on its own) or a list of token ids, as (n,) int64 ids."""
    if isinstance(value, str):
        return await run_in_threadpool(_text_ids, engine, value, budget, where)
    return _checked_ids(engine, value, budget, where)


# --------------------------------------------------------------------------- gists


async def compress(request: Request, engine: GistEngine, ids: np.ndarray) -> np.ndarray:
    """The gists (m, k, D) of the full blocks of `ids` (at least one), through the batching
    queue (at most GISTNET_GIST_MAX_BLOCKS a request, so each fits in the queue)."""
    settings, batcher = request.app.state.settings, request.app.state.batcher
    full = len(ids) // engine.block_size
    blocks = ids[: full * engine.block_size].reshape(full, engine.block_size)  # (m*T,) -> (m, T)
    chunks = []
    try:
        for start in range(0, full, settings.gist_max_blocks):
            chunks.append(
                await batcher.encode(engine, blocks[start : start + settings.gist_max_blocks])
            )
    except QueueFull as err:
        request.app.state.metrics.gist_queue_full.inc()
        raise HTTPException(
            429, f"the gist queue is full: {err}", headers={"Retry-After": "1"}
        ) from None
    gists = np.concatenate(chunks)
    return gists.reshape(full, engine.gists_per_block, engine.dim)  # (m, [k,] D) -> (m, k, D)


def memory_bytes(tokens: np.ndarray, gists: np.ndarray) -> bytes:
    """A memory's artifact: its token ids and gists as .npz (read back without pickles)."""
    out = io.BytesIO()
    np.savez(out, **{TOKENS: tokens, GISTS: gists})
    return out.getvalue()


def _read_memory(settings: Settings, memory: Memory) -> ContextPart:
    path = settings.artifact_store().open_local(memory.path)
    with np.load(path, allow_pickle=False) as stored:
        return ContextPart(tokens=stored[TOKENS], gists=stored[GISTS])


# --------------------------------------------------------------------------- contexts


async def context_parts(
    request: Request,
    engine: GistEngine,
    parts: list,
    memories: dict[int, Memory],
    budget: TokenBudget,
) -> list[ContextPart]:
    """The request's parts as the engine reads them, in order."""
    settings = request.app.state.settings
    out = []
    for index, part in enumerate(parts):
        where = f"context[{index}].{part.kind}"
        if part.memory_id is not None:
            memory = memories[part.memory_id]
            budget.take(memory.tokens, where)
            try:
                out.append(await run_in_threadpool(_read_memory, settings, memory))
            except (GistNetError, OSError, ValueError, zipfile.BadZipFile) as err:
                # Its artifact is gone or damaged: the request is right, the store is not.
                raise HTTPException(
                    503, f"{where}: memory {memory.id} cannot be read: {err}"
                ) from None
            continue
        ids = await token_ids(engine, part.value, budget, where)
        if part.kind in ("compress", "compress_tokens") and len(ids) >= engine.block_size:
            out.append(ContextPart(tokens=ids, gists=await compress(request, engine, ids)))
        else:
            kept = (
                ids if part.keep_last is None else ids[len(ids) - min(part.keep_last, len(ids)) :]
            )
            out.append(ContextPart(tokens=kept))
    return out


def context_length(engine: GistEngine, parts: list[ContextPart]) -> dict[str, int]:
    """What a context costs read compressed, against its text read raw (the sink of a
    bos_sink model counted in both)."""
    start = engine.context_start
    return {
        "context_length": start + sum(part.fed(engine.block_size) for part in parts),
        "uncompressed_length": start + sum(len(part.tokens) for part in parts),
        "compressed_blocks": sum(part.blocks for part in parts),
    }


def check_positions(engine: GistEngine, parts: list[ContextPart], after: int, what: str) -> None:
    """The context's text and the `after` positions that follow it (`what`) fit in the
    teacher's positions: compressed or not, the text keeps its positions."""
    needed = context_length(engine, parts)["uncompressed_length"] + after
    limit = engine.position_limit
    if limit is not None and needed > limit:
        raise RequestProblem(
            f"context: the context's text and {what} take {needed} positions, past the "
            f"teacher's position limit of {limit} (max_position_embeddings): a compressed "
            f"block keeps its text's positions, so shorten the context or {what}"
        )


def lane_place(request: Request):
    """A place in the scoring and generating lane, or 429 when it is full."""
    try:
        return request.app.state.context_lane.place()
    except QueueFull as err:
        request.app.state.metrics.context_lane_full.inc()
        raise HTTPException(429, str(err), headers={"Retry-After": "1"}) from None


def check_reads_something(engine: GistEngine, parts: list[ContextPart], what: str) -> None:
    if context_length(engine, parts)["context_length"] == 0:
        raise RequestProblem(
            f"context: it holds no token, so nothing comes before {what}'s first token: "
            f"give a part with at least one token"
        )
