"""POST /evaluations, GET /evaluations, GET /evaluations/{id}: ΔNLL@H reports."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import FileResponse

from api.deps import CeleryDep, SessionDep, SettingsDep
from api.errors import error_responses
from api.idempotency import IdempotencyKeyHeader
from api.jobs import Accepted, accept_job
from api.schemas import (
    EvaluationAccepted,
    EvaluationCreate,
    EvaluationPublic,
    EvaluationsPublic,
    RowId,
)
from api.validation import RequestProblem
from api.views import evaluation_public
from gistnet.errors import ConfigError, StorageError
from gistnet.eval.long import LongLayout, check_window
from gistnet.eval.request import EvalSettings
from service.db.records import (
    create_evaluation,
    get_dataset,
    get_evaluation,
    get_model,
    list_evaluations,
)
from service.limits import INT32_MAX
from service.queue import ProductStatus

router = APIRouter(prefix="/evaluations", tags=["evaluations"])

ROUTE = "POST /evaluations"


def _settings_of(body: EvaluationCreate) -> EvalSettings:
    try:
        return body.settings()
    except ConfigError as err:
        raise RequestProblem(str(err)) from None


def _check_long_window(model, dataset, settings: EvalSettings) -> None:
    """A long evaluation's context fits the dataset's windows in whole blocks."""
    if settings.mode != "long":
        return
    try:
        layout = LongLayout(
            block_size=model.block_size,
            gists_per_block=1,  # the window checks do not depend on k
            context_tokens=settings.context_tokens,
            recent_tokens=settings.recent_tokens,
            score_tokens=settings.score_tokens,
        )
        check_window(layout, horizon=int((dataset.info or {}).get("horizon", 0)),
                     teacher_positions=None)  # fmt: skip
    except ConfigError as err:
        raise RequestProblem(str(err)) from None


def _check_pairing(model, dataset, split: str) -> None:
    info = dataset.info or {}
    splits = info.get("splits", {})
    if split not in splits:
        raise RequestProblem(
            f"split: dataset {dataset.id} has no split {split!r}; it has {', '.join(sorted(splits))}"
        )
    if info.get("teacher_model") != model.teacher:
        raise RequestProblem(
            f"model {model.id} was trained on teacher {model.teacher!r} but dataset {dataset.id} "
            f"was prepared with {info.get('teacher_model')!r}: evaluate on a dataset of its teacher"
        )
    if int(info.get("block_size", -1)) != model.block_size:
        raise RequestProblem(
            f"model {model.id} compresses blocks of {model.block_size} tokens but dataset "
            f"{dataset.id} has blocks of {info.get('block_size')}"
        )
    if int(info.get("horizon", 0)) <= model.block_size:
        raise RequestProblem(
            f"dataset {dataset.id} has horizon {info.get('horizon')}, no longer than one block: "
            f"there are no following tokens to score; prepare it with a longer horizon"
        )


@router.post(
    "",
    status_code=202,
    response_model=EvaluationAccepted,
    responses=error_responses(400, 404, 409, 413, 422, 503),
)
def create_evaluation_route(
    body: EvaluationCreate,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
):
    """Queue an evaluation of a model on a prepared dataset split."""
    settings_asked = _settings_of(body)

    def record() -> Accepted:
        model = get_model(session, model_id=body.model_id)
        if model is None:
            raise HTTPException(404, f"model {body.model_id} does not exist")
        dataset = get_dataset(session, dataset_id=body.dataset_id)
        if dataset is None:
            raise HTTPException(404, f"dataset {body.dataset_id} does not exist")
        if dataset.status != ProductStatus.READY:
            raise HTTPException(409, f"dataset {dataset.id} is {dataset.status}, not ready")
        _check_pairing(model, dataset, body.split)
        _check_long_window(model, dataset, settings_asked)
        evaluation, job = create_evaluation(
            session,
            model_id=model.id,
            dataset_id=dataset.id,
            split=body.split,
            options=settings_asked.to_dict(),
        )
        accepted = EvaluationAccepted(
            evaluation_id=evaluation.id,
            job_id=job.id,
            status_url=f"/jobs/{job.id}",
            evaluation_url=f"/evaluations/{evaluation.id}",
        )
        return Accepted(job=job, body=accepted, location=f"/evaluations/{evaluation.id}")

    return accept_job(
        route=ROUTE,
        request=body,
        idempotency_key=idempotency_key,
        settings=settings,
        session=session,
        celery=celery,
        record=record,
        response=response,
    )


@router.get("", response_model=EvaluationsPublic, responses=error_responses(422, 503))
def list_evaluations_route(
    session: SessionDep,
    model_id: RowId | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=INT32_MAX),
) -> EvaluationsPublic:
    rows, count = list_evaluations(session, model_id=model_id, limit=limit, offset=offset)
    return EvaluationsPublic(data=[evaluation_public(e) for e in rows], count=count)


@router.get(
    "/{evaluation_id}", response_model=EvaluationPublic, responses=error_responses(404, 422, 503)
)
def get_evaluation_route(evaluation_id: RowId, session: SessionDep) -> EvaluationPublic:
    """Status, and once ready the report: NLL, ΔNLL and gap recovered per condition."""
    evaluation = get_evaluation(session, evaluation_id=evaluation_id)
    if evaluation is None:
        raise HTTPException(404, f"evaluation {evaluation_id} does not exist")
    return evaluation_public(evaluation)


@router.get(
    "/{evaluation_id}/plot",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/png": {}}, "description": "the per-position NLL plot"},
        **error_responses(404, 422, 503),
    },
)
def get_evaluation_plot(
    evaluation_id: RowId, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    """The per-position NLL of every condition as a PNG, once the evaluation is ready."""
    evaluation = get_evaluation(session, evaluation_id=evaluation_id)
    if evaluation is None:
        raise HTTPException(404, f"evaluation {evaluation_id} does not exist")
    plot = ((evaluation.report or {}).get("files") or {}).get("plot")
    if plot is None:
        raise HTTPException(
            404, f"evaluation {evaluation_id} is {evaluation.status}: it has no plot yet"
        )
    try:  # from the artifact root, or through the local cache on an object store
        path = settings.artifact_store().open_local(plot)
    except StorageError:
        raise HTTPException(
            404, f"the plot of evaluation {evaluation_id} is missing from storage"
        ) from None
    return FileResponse(path, media_type="image/png")
