"""An evaluation from a checkpoint and a prepared split: load both, compute the gists,
score the conditions (and the refined gists and the oracle on request), summarize."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gistnet.errors import Cancelled, ConfigError, ShardError
from gistnet.eval.conditions import (
    VECTORS,
    CancelFn,
    ProgressFn,
    evaluate_conditions,
    swap_partners,
)
from gistnet.eval.oracle import oracle_section
from gistnet.eval.request import EvalRequest
from gistnet.eval.stats import summarize
from gistnet.loading import LoadedGistNet
from gistnet.refine import refine_gists
from gistnet.substitution import drop_token_id, drop_vector


def _plain(value: Any) -> Any:
    """Checkpoint info as JSON-able data (tensors and paths become strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def resolve_shard_path(dataset_path: str | Path, split: str | None = None) -> Path:
    """A shard file as given, or the first shard of `split` (default validation) in a
    dataset folder. `gistnet.datasets.split_shard_paths` gives all of a split's shards."""
    from gistnet.datasets import split_shard_paths

    path = Path(dataset_path)
    if not path.exists() and not any(c in str(path) for c in "*?["):
        raise ShardError(f"dataset {str(path)!r} is neither a shard file nor a dataset folder")
    return split_shard_paths(path, split, default_split="validation")[0]


@torch.inference_mode()
def _compute_gists(
    model: torch.nn.Module,
    data: Any,
    rows: np.ndarray,
    *,
    teacher: torch.nn.Module,
    device: torch.device,
    batch_size: int,
    should_cancel: CancelFn | None,
) -> torch.Tensor:
    """GistNet's vectors for the given rows: from the cached states, or for a token-only
    dataset (or a GistNet that reads more teacher layers than the last) from the teacher's
    states of the block (what the cached ones are); a GistNet that reads token embeddings
    gets the teacher's embeddings of the block too."""
    from gistnet.teacher import gistnet_inputs

    cached = data.teacher_hidden is not None and not model.config.teacher_layers
    gists = []
    for start in range(0, len(rows), batch_size):
        if should_cancel is not None and should_cancel():
            raise Cancelled("evaluation cancelled while computing gists")
        index = rows[start : start + batch_size]
        block = torch.from_numpy(np.ascontiguousarray(data.input_ids[index], dtype=np.int64))
        states = None
        if cached:
            states = torch.from_numpy(
                np.ascontiguousarray(data.teacher_hidden[index], dtype=np.float32)
            ).to(device)
        inputs = gistnet_inputs(teacher, block.to(device), model.config, states=states)
        # (B, T, D) -> (B, D), or (B, k, D) for k gists per block
        gists.append(model(**inputs).float().cpu())
    return torch.cat(gists)


@dataclass
class _Scoring:
    """What the scoring reads: the loaded checkpoint, its teacher, the dataset's rows."""

    loaded: LoadedGistNet
    info: dict[str, Any]  # the checkpoint's info as JSON-able data
    metadata: dict[str, Any]
    shard_paths: list[Path]
    shard: Any  # gistnet.shards.ShardSet
    block_size: int
    drop_token: int
    device: torch.device


def evaluate_gistnet(
    request: EvalRequest,
    *,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """Score a checkpoint's gists on a prepared shard; returns the JSON-able report.

    `request.dataset` is a shard (.arrow), a glob of a split's shards, or a prepared
    dataset directory (then `request.split`, default validation, picks the split; all of
    its shards are read); datasets with cached states and token-only ones alike; shards of
    the seed's tool, with or without its metadata, are read too. The teacher is
    `request.teacher_model` if given, else the dataset's, else the one the checkpoint was
    trained with; likewise the tokenizer, which only picks the drop token (the teacher's
    config has it too). Of `request.settings`: `max_examples` evaluates a seeded random
    subset; `oracle_examples` adds the `oracle` on a seeded subset of that many of the
    scored examples (free vectors fitted to each, `gistnet.eval.oracle`): the report then
    has an `oracle` section with its own table and GR(gist) / GR(oracle); `refine`
    (`gistnet.refine.RefineSettings`) adds the `refined` condition, every gist refined at
    gist time from the block alone, and `swapped_refined` (the refined gist of the same
    other-document example `swapped` reads), with the same comparisons and bars as the
    gist's, in the oracle section too.
    Intervals resample documents (the shard's `doc_id`, else `ShardSet.document_ids()`).
    `on_progress(done, total)` counts scored examples; `should_cancel()` is polled between
    batches and stops the work with `Cancelled`.
    """
    started = time.perf_counter()
    scoring = _open(request)
    settings = request.settings
    block_size, shard = scoring.block_size, scoring.shard
    total = len(shard.context_input_ids)
    if total == 0:
        raise ShardError(f"shard {str(scoring.shard_paths[0])!r} holds no examples")
    rows = np.arange(total)
    if settings.max_examples is not None and settings.max_examples < total:
        rows = np.sort(
            np.random.default_rng(settings.seed).choice(total, settings.max_examples, replace=False)
        )
    if settings.mode == "long":
        report = _evaluate_long(
            scoring, rows, request=request, on_progress=on_progress, should_cancel=should_cancel
        )
        report.update(_provenance(scoring, request, total=total, refine_report=None))
        del report["swapped_rule"]  # no condition swaps gists in a long evaluation
        report["elapsed_s"] = round(time.perf_counter() - started, 3)
        return report
    context = np.asarray(shard.context_input_ids[rows])
    doc_ids = shard.document_ids()[rows]
    partner = swap_partners(doc_ids, seed=settings.seed)

    model, teacher = scoring.loaded.model, scoring.loaded.teacher
    gists = _compute_gists(
        model,
        shard,
        rows,
        teacher=teacher,
        device=scoring.device,
        batch_size=request.batch_size,
        should_cancel=should_cancel,
    )
    sink = None
    if model.config.bos_sink:
        sink = drop_vector(teacher, scoring.drop_token).to(scoring.device)
    extra, refine_report = _refined(
        scoring, context, gists, partner, request=request, sink=sink, should_cancel=should_cancel
    )
    nll = evaluate_conditions(
        teacher,
        context,
        block_size=block_size,
        gist_vectors=gists,
        swap_partner=partner,
        extra_vectors=extra,
        drop_token=scoring.drop_token,
        batch_size=request.batch_size,
        on_progress=on_progress,
        should_cancel=should_cancel,
        bos_sink=model.config.bos_sink,
    )
    report = _summary(nll, doc_ids, request=request)
    if settings.oracle_examples is not None:
        _add_oracle(
            report, scoring, context, nll, gists, doc_ids,
            request=request, sink=sink, should_cancel=should_cancel,
        )  # fmt: skip
    report.update(_provenance(scoring, request, total=total, refine_report=refine_report))
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    return report


def _evaluate_long(
    scoring: _Scoring,
    rows: np.ndarray,
    *,
    request: EvalRequest,
    on_progress: ProgressFn | None,
    should_cancel: CancelFn | None,
) -> dict[str, Any]:
    """The long-document report (`gistnet.eval.long`) on the rows' windows: their first
    context_tokens + score_tokens tokens, the oldest blocks compressed by GistNet."""
    from gistnet.eval.long import (
        LongLayout,
        check_window,
        prefill_cost,
        score_long_windows,
        summarize_long,
        teacher_positions,
    )
    from gistnet.teacher import gistnet_inputs

    settings = request.settings
    model, teacher = scoring.loaded.model, scoring.loaded.teacher
    layout = LongLayout(
        block_size=scoring.block_size,
        gists_per_block=model.config.gists_per_block,
        context_tokens=settings.context_tokens,
        recent_tokens=settings.recent_tokens,
        score_tokens=settings.score_tokens,
        sink=model.config.bos_sink,
    )
    check_window(layout, horizon=scoring.shard.horizon, teacher_positions=teacher_positions(teacher))
    sink = drop_vector(teacher, scoring.drop_token).to(scoring.device) if layout.sink else None

    @torch.inference_mode()
    def gists_of(blocks: torch.Tensor) -> torch.Tensor:
        gists = model(**gistnet_inputs(teacher, blocks, model.config)).float()
        return gists if gists.dim() == 3 else gists[:, None]  # (n, D) -> (n, 1, D)

    nll = score_long_windows(
        teacher,
        np.asarray(scoring.shard.context_input_ids[rows]),
        layout=layout,
        gists_of=gists_of,
        sink=sink,
        batch_size=request.batch_size,
        on_progress=on_progress,
        should_cancel=should_cancel,
    )
    costs = {name: prefill_cost(teacher, n) for name, n in layout.context_positions().items()}
    return summarize_long(
        nll,
        layout=layout,
        costs=costs,
        doc_ids=scoring.shard.document_ids()[rows],
        bootstrap_samples=settings.bootstrap_samples,
        seed=settings.seed,
    )


def _open(request: EvalRequest) -> _Scoring:
    """The dataset's description and shards, the checkpoint with its teacher and tokenizer,
    and the drop token, each refused with an error that says what to do instead."""
    from gistnet.datasets import describe_dataset, missing_teacher_error, split_shard_paths
    from gistnet.devices import resolve_device
    from gistnet.loading import load_gistnet
    from gistnet.shards import open_shard_set

    if not request.checkpoint.is_file():
        raise ConfigError(f"checkpoint {str(request.checkpoint)!r} does not exist")
    resolve_shard_path(request.dataset, request.split)  # the clear error for a missing path
    shard_paths = split_shard_paths(request.dataset, request.split, default_split="validation")
    shard_path = shard_paths[0]
    device = resolve_device(request.device)

    metadata = describe_dataset(
        shard_path, tokenizer=request.tokenizer, teacher_model=request.teacher_model
    )
    shard = open_shard_set(shard_paths)
    block_size = int(metadata["block_size"])

    def same_blocks(model, info) -> None:
        if int(info["block_size"]) != block_size:
            raise ConfigError(
                f"checkpoint was trained on blocks of {info['block_size']} tokens but the "
                f"dataset's blocks have {block_size}: evaluate on a dataset prepared with its "
                f"block_size"
            )

    loaded = load_gistnet(
        request.checkpoint,
        device=device,
        teacher_model=metadata.get("teacher_model"),
        tokenizer=metadata.get("tokenizer"),
        teacher_dtype=request.teacher_dtype or metadata.get("teacher_dtype", "float32"),
        missing_teacher=lambda: missing_teacher_error("evaluation", shard_path),
        remedy="evaluate on a dataset prepared with the teacher the checkpoint was trained for",
        check=same_blocks,
    )
    try:
        drop_token = drop_token_id(loaded.tokenizer, loaded.teacher)
    except ConfigError as err:
        if loaded.tokenizer is not None:
            raise
        raise ConfigError(f"{err}; or name the tokenizer with --tokenizer") from None
    return _Scoring(
        loaded=loaded,
        info=_plain(loaded.info),
        metadata=metadata,
        shard_paths=shard_paths,
        shard=shard,
        block_size=block_size,
        drop_token=drop_token,
        device=device,
    )


def _refined(
    scoring: _Scoring,
    context: np.ndarray,
    gists: torch.Tensor,
    partner: np.ndarray,
    *,
    request: EvalRequest,
    sink: torch.Tensor | None,
    should_cancel: CancelFn | None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The `refined` and `swapped_refined` vectors and how they were made, where the
    request asks for them; else nothing."""
    refine = request.settings.refine
    if refine is None:
        return {}, None
    block_size = scoring.block_size
    started = time.perf_counter()
    refined = refine_gists(
        scoring.loaded.teacher,
        torch.from_numpy(np.ascontiguousarray(context[:, :block_size], dtype=np.int64)),
        gists,
        settings=refine,
        tokens=context.shape[1] - block_size,
        sink=sink,
        should_cancel=should_cancel,
    )
    extra = {"refined": refined, "swapped_refined": refined[torch.as_tensor(partner)]}
    report = {
        **refine.to_dict(),
        "tokens": refine.tokens or context.shape[1] - block_size,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return extra, report


def _summary(nll: dict[str, np.ndarray], doc_ids: np.ndarray, *, request: EvalRequest) -> dict:
    settings = request.settings
    samples, seed = settings.bootstrap_samples, settings.seed
    report = summarize(nll, bootstrap_samples=samples, seed=seed, doc_ids=doc_ids)
    if samples:
        # The intervals a bootstrap over examples would give, beside the document ones, so
        # a reader sees how much the overlap of a document's windows narrows them.
        by_example = summarize(nll, bootstrap_samples=samples, seed=seed)
        report["example_bootstrap_gap_recovered_ci95"] = {
            name: entry["gap_recovered"]["ci95"] for name, entry in by_example["conditions"].items()
        }
    return report


def _add_oracle(
    report: dict[str, Any],
    scoring: _Scoring,
    context: np.ndarray,
    nll: dict[str, np.ndarray],
    gists: torch.Tensor,
    doc_ids: np.ndarray,
    *,
    request: EvalRequest,
    sink: torch.Tensor | None,
    should_cancel: CancelFn | None,
) -> None:
    """The report's `oracle` section, and the bars of each vector against the oracle."""
    settings = request.settings
    report["oracle"] = oracle_section(
        scoring.loaded.teacher,
        context,
        nll,
        gists,
        doc_ids,
        block_size=scoring.block_size,
        drop_token=scoring.drop_token,
        size=settings.oracle_examples,
        seed=settings.seed,
        batch_size=request.batch_size,
        bootstrap_samples=settings.bootstrap_samples,
        should_cancel=should_cancel,
        sink=sink,
    )
    for vector, _ in VECTORS:
        share = report["oracle"]["comparisons"].get(f"{vector}_over_oracle_gap_recovered")
        if share is not None:
            report["quality_bars"][f"{vector}_at_least_90pct_of_oracle"] = (
                None if share["value"] is None else share["value"] >= 0.9
            )


def _provenance(
    scoring: _Scoring, request: EvalRequest, *, total: int, refine_report: dict | None
) -> dict[str, Any]:
    """What was scored, with what, and how: the report's fields after the numbers."""
    from gistnet.files import file_sha256

    metadata, block_size = scoring.metadata, scoring.block_size
    config = scoring.loaded.model.config
    trained_teacher = scoring.info.get("teacher") or {}
    teacher_name = scoring.loaded.teacher_name
    return {
        "checkpoint": {
            "path": str(request.checkpoint),
            "sha256": file_sha256(request.checkpoint),
            "info": scoring.info,
        },
        "dataset": {
            "path": str(request.dataset),
            "shard": str(scoring.shard_paths[0]),
            "shards": [str(p) for p in scoring.shard_paths],
            "teacher_states": metadata.get("teacher_states", "cache"),
            "split": request.split,
            "fingerprint": metadata["fingerprint"],
            "metadata_form": metadata["metadata_form"],
            "examples_in_shard": int(total),
        },
        "teacher": teacher_name,
        # False when the checkpoint names another teacher than the one used (same width).
        "teacher_matches_checkpoint": trained_teacher.get("model") in (None, teacher_name),
        "tokenizer": scoring.loaded.tokenizer_name,
        "block_size": block_size,
        "gists_per_block": int(config.gists_per_block),
        "compression": f"{block_size // config.gists_per_block}:1"
        if block_size % config.gists_per_block == 0
        else f"{block_size / config.gists_per_block:.1f}:1",
        "horizon": int(metadata["horizon"]),
        "drop_token_id": scoring.drop_token,
        # Whether the vector conditions read their vectors after the drop token (BOS).
        "bos_sink": bool(config.bos_sink),
        "swapped_rule": (
            "gist of a random example from another document"
            if scoring.shard.horizon >= 2 * block_size
            else "gist of a random other example (a one-block horizon cannot tell documents "
            "apart)"
        ),
        # How the `refined` condition's gists were refined (gistnet.refine), or None.
        "refine": refine_report,
        "device": str(scoring.device),
    }
