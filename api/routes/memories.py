"""POST /memories, GET /memories, GET /memories/{id}, DELETE /memories/{id}: documents
compressed once, read by any number of contexts after (`{"memory_id": N}`).

A memory is its model's gists of the document's full blocks and the document's token ids,
one .npz artifact under the artifact root, and a row that names it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.context_schemas import MemoriesPublic, MemoryCreate, MemoryPublic
from api.contexts import TokenBudget, compress, memory_bytes, token_ids
from api.deps import EnginesDep, SessionDep, SettingsDep
from api.errors import error_responses
from api.routes.gist import engine_for
from api.schemas import RowId
from api.validation import RequestProblem
from api.views import memory_public
from service.artifacts import memory_dir
from service.db.records import create_memory, get_memory, list_memories
from service.limits import INT32_MAX
from service.settings import Settings

router = APIRouter(prefix="/memories", tags=["memories"])


def _store(request: Request, settings: Settings, *, model_id: int, name, tokens, gists):
    """The row and its artifact, written so that a row never names a missing file: the
    file is published before the row is committed, and removed if the commit fails."""
    store = settings.artifact_store()
    with request.app.state.sessionmaker() as session:
        memory = create_memory(
            session, model_id=model_id, name=name, tokens=len(tokens), blocks=len(gists)
        )
        scratch = Path(settings.cache_dir) / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=scratch, suffix=".npz") as local:
            local.write(memory_bytes(tokens, gists))
            local.flush()
            store.publish(local.name, memory.path)
        try:
            session.commit()
        except Exception:
            store.delete_folder(memory_dir(memory.id))
            raise
        return memory_public(memory)


@router.post(
    "",
    status_code=201,
    response_model=MemoryPublic,
    responses=error_responses(400, 404, 409, 413, 422, 429, 503),
)
async def create_memory_route(
    body: MemoryCreate,
    request: Request,
    response: Response,
    settings: SettingsDep,
    engines: EnginesDep,
) -> MemoryPublic:
    """Compress a document once: its full blocks become the model's gists (through the
    gist queue), the tail shorter than a block is kept to be read raw."""
    engine = await engine_for(request, settings, engines, body.model_id)
    where = "text" if body.text is not None else "tokens"
    ids = await token_ids(
        engine, body.text if body.text is not None else body.tokens, TokenBudget.of(settings), where
    )
    if len(ids) < engine.block_size:
        raise RequestProblem(
            f"{where}: {len(ids)} tokens, fewer than one block of {engine.block_size}: a "
            f'memory holds at least one block; read a shorter text raw ({{"text": ...}})'
        )
    gists = await compress(request, engine, ids)
    memory = await run_in_threadpool(
        _store, request, settings, model_id=engine.model_id, name=body.name, tokens=ids, gists=gists
    )
    response.headers["Location"] = f"/memories/{memory.id}"
    return memory


@router.get("", response_model=MemoriesPublic, responses=error_responses(422, 503))
def list_memories_route(
    session: SessionDep,
    model_id: RowId | None = Query(None, description="only this model's memories"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=INT32_MAX),
) -> MemoriesPublic:
    rows, count = list_memories(session, model_id=model_id, limit=limit, offset=offset)
    return MemoriesPublic(data=[memory_public(m) for m in rows], count=count)


def _memory_or_404(session, memory_id: int):
    memory = get_memory(session, memory_id=memory_id)
    if memory is None:
        raise HTTPException(404, f"memory {memory_id} does not exist")
    return memory


@router.get("/{memory_id}", response_model=MemoryPublic, responses=error_responses(404, 422, 503))
def get_memory_route(memory_id: RowId, session: SessionDep) -> MemoryPublic:
    return memory_public(_memory_or_404(session, memory_id))


@router.delete("/{memory_id}", status_code=204, responses=error_responses(404, 422, 503))
def delete_memory_route(memory_id: RowId, session: SessionDep, settings: SettingsDep) -> Response:
    """The row first, then its artifact: a context never finds a row without its file."""
    session.delete(_memory_or_404(session, memory_id))
    session.commit()
    settings.artifact_store().delete_folder(memory_dir(memory_id))
    return Response(status_code=204)
