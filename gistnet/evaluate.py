"""ΔNLL@H: how well the frozen teacher predicts the tokens after a block when it reads a
gist (or a baseline vector) in place of the block.

For each example the teacher scores the same L = horizon - block_size tokens h under
five conditions (see `gistnet.substitution` for how a vector replaces the block):

    full      the block's tokens, then h              the reference
    gist      GistNet's vector for this block          what we measure
    drop      the embedding of BOS (else EOS)          no content: the gap's other end
    mean      the mean of the block's input embeddings the simple baseline
    swapped   the gist of an example from another document: content, but the wrong one

and on request the `oracle` (free vectors fitted to each example of a seeded subset) and
`refined` / `swapped_refined` (the gists refined from their blocks, gistnet.refine).

Per condition: mean NLL (nats per token), ΔNLL = NLL - NLL_full, the gap recovered
GR = (NLL_drop - NLL) / (NLL_drop - NLL_full), ΔNLL over the first `early_tokens`
horizon tokens and over the rest, and 95% bootstrap intervals (examples resampled).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gistnet.errors import Cancelled, ConfigError, ShardError
from gistnet.refine import RefineSettings, fit_vectors, refine_gists
from gistnet.substitution import (
    EARLY_TOKENS,
    drop_token_id,
    drop_vector,
    horizon_log_probs,
    horizon_nll,
    mean_block_embedding,
)

CONDITIONS = ("full", "gist", "drop", "mean", "swapped")
# The vectors a report compares and bars, each with its other-document twin: GistNet's gist,
# and where the evaluation refined it (gistnet.refine) the refined gist.
VECTORS = (("gist", "swapped"), ("refined", "swapped_refined"))

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


# --- scoring ---------------------------------------------------------------------------


def _device_of(teacher: torch.nn.Module) -> torch.device:
    return teacher.get_input_embeddings().weight.device


def _as_long_tensor(rows: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(rows, torch.Tensor):
        return rows.to(device=device, dtype=torch.long)
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(device)


@torch.inference_mode()
def evaluate_conditions(
    teacher: torch.nn.Module,
    context_input_ids: np.ndarray | torch.Tensor,
    *,
    block_size: int,
    gist_vectors: np.ndarray | torch.Tensor | None = None,
    swap_partner: np.ndarray | None = None,
    extra_vectors: Mapping[str, np.ndarray | torch.Tensor] | None = None,
    drop_token: int | None = None,
    tokenizer: Any = None,
    batch_size: int = 64,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    bos_sink: bool = False,
) -> dict[str, np.ndarray]:
    """Per-token NLL of the horizon under each condition: {condition: (N, L) float32}.

    `full`, `drop` and `mean` are always scored; `gist` when `gist_vectors` (N, D) or
    (N, k, D) is given, `swapped` when `swap_partner` (N,) is given too: example i then
    reads the gist of example `swap_partner[i]`. `extra_vectors` {name: (N, [k,] D)} scores
    further conditions the same way (the `oracle`). The drop token is `drop_token`, else the tokenizer's (or
    teacher's) BOS, else EOS. Every condition of a batch runs on the same rows, so two
    conditions fed the same vector give bit-identical numbers. With `bos_sink` (a GistNet
    trained so) every vector condition but `drop` reads its vectors after the drop token's
    embedding (`gistnet.substitution.substituted_inputs`); `drop` is that embedding alone.
    """
    device = _device_of(teacher)
    total = len(context_input_ids)
    if gist_vectors is not None and len(gist_vectors) != total:
        raise ConfigError(f"{len(gist_vectors)} gist vectors for {total} examples")
    if swap_partner is not None:
        if gist_vectors is None:
            raise ConfigError("the swapped condition needs gist_vectors")
        if len(swap_partner) != total:
            raise ConfigError(f"{len(swap_partner)} swap partners for {total} examples")
    if drop_token is None:
        drop_token = drop_token_id(tokenizer, teacher)
    dropped = drop_vector(teacher, drop_token)
    sink = dropped.to(device) if bos_sink else None  # before every vector but drop's
    gists = None if gist_vectors is None else torch.as_tensor(gist_vectors).float().cpu()
    extra = {
        name: torch.as_tensor(vectors).float().cpu()
        for name, vectors in (extra_vectors or {}).items()
    }
    for name, vectors in extra.items():
        if name in CONDITIONS or len(vectors) != total:
            raise ConfigError(
                f"extra condition {name!r} needs a new name and one vector set per example "
                f"({total}); got {len(vectors)}"
            )

    scores: dict[str, list[np.ndarray]] = {"full": [], "drop": [], "mean": []}
    if gists is not None:
        scores["gist"] = []
        if swap_partner is not None:
            scores["swapped"] = []
    for name in extra:
        scores[name] = []

    done = 0
    for start in range(0, total, batch_size):
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"evaluation cancelled after {done} of {total} examples")
        stop = min(start + batch_size, total)
        context = _as_long_tensor(context_input_ids[start:stop], device)  # (B, H)
        rows = stop - start
        vectors = {
            "drop": dropped.to(device).expand(rows, -1),
            "mean": mean_block_embedding(teacher, context[:, :block_size]),
        }
        if gists is not None:
            vectors["gist"] = gists[start:stop].to(device)
            if swap_partner is not None:
                vectors["swapped"] = gists[torch.as_tensor(swap_partner[start:stop])].to(device)
        for name, given in extra.items():
            vectors[name] = given[start:stop].to(device)
        scores["full"].append(horizon_nll(teacher, context, block_size=block_size).cpu().numpy())
        for name, vector in vectors.items():
            nll = horizon_nll(
                teacher,
                context,
                block_size=block_size,
                vectors=vector,
                sink=None if name == "drop" else sink,
            )
            scores[name].append(nll.cpu().numpy())
        done = stop
        if on_progress is not None:
            on_progress(done, total)
    return {name: np.concatenate(parts).astype(np.float32) for name, parts in scores.items()}


def swap_partners(doc_ids: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """For each example, a random other example from a different document, (N,) int64.

    Raises ConfigError when every example comes from one document: `swapped` then has no
    meaning.
    """
    doc_ids = np.asarray(doc_ids)
    total = len(doc_ids)
    if total == 0 or np.all(doc_ids == doc_ids[0]):
        raise ConfigError(
            "all examples come from one document, so `swapped` has no example from another "
            "document to borrow a gist from: evaluate on a split with at least two documents"
        )
    rng = np.random.default_rng(seed)
    partner = rng.integers(0, total, size=total)
    for _ in range(64):
        clash = np.flatnonzero(doc_ids[partner] == doc_ids)
        if clash.size == 0:
            return partner
        partner[clash] = rng.integers(0, total, size=clash.size)
    # A document holding most of the split: draw the rest from the examples outside it.
    for i in np.flatnonzero(doc_ids[partner] == doc_ids):
        partner[i] = rng.choice(np.flatnonzero(doc_ids != doc_ids[i]))
    return partner


def fit_oracle_vectors(
    teacher: torch.nn.Module,
    context_input_ids: np.ndarray | torch.Tensor,
    *,
    block_size: int,
    init: torch.Tensor,
    max_steps: int = 400,
    patience: int = 30,
    min_improvement: float = 1e-3,
    lr: float = 0.05,
    batch_size: int = 64,
    should_cancel: CancelFn | None = None,
    sink: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The `oracle`: free vectors, one set per example, fitted by Adam to the same KL the
    substitution objective uses: what one (or k) input vector(s) can carry for this teacher.

    `init` (N, D) or (N, k, D) is where the search starts (the evaluation starts from the
    trained gist, so the oracle is at least as good as the gist). A batch stops when its
    summed KL has not improved by `min_improvement` (relative) for `patience` steps, or
    after `max_steps`; each example keeps the vector with its lowest KL seen. Returns the
    vectors (float32, CPU) and what the search did: steps per batch and the final KL.
    A `sink` (D,) is read before the vectors, as the gists of a `bos_sink` GistNet are.
    """
    device = _device_of(teacher)
    total = len(context_input_ids)
    if len(init) != total:
        raise ConfigError(f"{len(init)} starting vectors for {total} examples")
    fitted, steps_taken, final_kl = [], [], []
    for start in range(0, total, batch_size):
        context = _as_long_tensor(context_input_ids[start : start + batch_size], device)
        with torch.no_grad():
            full = horizon_log_probs(teacher, context, block_size=block_size)
        best, best_kl, steps = fit_vectors(
            teacher, context, full, init[start : start + batch_size], block_size=block_size,
            lr=lr, max_steps=max_steps, sink=sink, patience=patience,
            min_improvement=min_improvement, should_cancel=should_cancel,
            cancelled="evaluation cancelled while fitting the oracle",
        )  # fmt: skip
        fitted.append(best.cpu())
        steps_taken.append(steps)
        final_kl.append(best_kl.cpu())
    return torch.cat(fitted), {
        "steps_per_batch": steps_taken,
        "max_steps": max_steps,
        "patience": patience,
        "min_improvement": min_improvement,
        "lr": lr,
        "init": "the trained gist",
        "mean_kl": float(torch.cat(final_kl).mean()),
    }


# --- statistics ------------------------------------------------------------------------


def _gap_recovered(nll_drop, nll_cond, nll_full):
    return (nll_drop - nll_cond) / (nll_drop - nll_full)


def _json_float(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _interval(samples: np.ndarray) -> list[float | None]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return [None, None]
    low, high = np.percentile(finite, [2.5, 97.5])
    return [float(low), float(high)]


def _bootstrap_means(
    per_example: np.ndarray,
    *,
    samples: int,
    seed: int,
    groups: np.ndarray | None = None,
    chunk: int = 64,
) -> np.ndarray:
    """Means of `samples` resamples of the rows: (N, K) -> (S, K).

    Without `groups` rows are resampled with replacement. With `groups` (N,) (a document
    id per row) whole groups are: a cluster bootstrap, whose mean is the sum over the drawn
    groups' rows over their count. Windows of one document overlap and share its facts,
    so their errors are correlated and resampling rows would make the intervals too narrow.
    """
    rng = np.random.default_rng(seed)
    total = per_example.shape[0]
    out = np.empty((samples, per_example.shape[1]), dtype=np.float64)
    if groups is None:
        for start in range(0, samples, chunk):
            stop = min(start + chunk, samples)
            index = rng.integers(0, total, size=(stop - start, total))  # (S_chunk, N)
            out[start:stop] = per_example[index].mean(axis=1)
        return out
    _, group_of = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(group_of.max()) + 1
    sums = np.zeros((n_groups, per_example.shape[1]))
    np.add.at(sums, group_of, per_example)  # (G, K) per-group sums
    counts = np.bincount(group_of, minlength=n_groups).astype(np.float64)  # (G,)
    for start in range(0, samples, chunk):
        stop = min(start + chunk, samples)
        drawn = rng.integers(0, n_groups, size=(stop - start, n_groups))  # (S_chunk, G)
        # How often each group was drawn: (S_chunk, G) multiplicities.
        times = np.zeros((stop - start, n_groups))
        np.add.at(times, (np.arange(stop - start)[:, None], drawn), 1.0)
        out[start:stop] = (times @ sums) / (times @ counts)[:, None]
    return out


def summarize(
    nll: Mapping[str, np.ndarray],
    *,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    early_tokens: int = EARLY_TOKENS,
    doc_ids: np.ndarray | None = None,
) -> dict[str, Any]:
    """The report's numbers from per-token NLLs {condition: (N, L)}; `full` and `drop` required.

    Intervals resample documents when `doc_ids` (N,) is given (a cluster bootstrap: each
    drawn document brings all its examples), else examples; each example keeps all its
    horizon tokens, and every statistic is recomputed on the same resample, so a
    difference's interval accounts for the pairing of conditions.

    Beside GR over all horizon tokens the report gives GR from the second token on (the
    first token after BOS pays for a teacher that reads BOS as "a document starts here",
    which flatters every GR) and over the rest (tokens early_tokens+1 onward, where the
    facts that recur later are what counts).
    """
    for needed in ("full", "drop"):
        if needed not in nll:
            raise ConfigError(f"summarize needs the {needed!r} condition")
    names = [name for name in CONDITIONS if name in nll] + [
        name for name in nll if name not in CONDITIONS
    ]
    total, horizon_tokens = nll["full"].shape
    if total == 0:
        raise ConfigError("no examples to summarize")
    early = min(early_tokens, horizon_tokens)

    # Per-example columns: for each condition, the mean over all / early / late tokens.
    columns: dict[tuple[str, str], np.ndarray] = {}
    for name in names:
        values = np.asarray(nll[name], dtype=np.float64)
        if values.shape != (total, horizon_tokens):
            raise ConfigError(
                f"condition {name!r} has shape {values.shape}; expected {(total, horizon_tokens)}"
            )
        columns[name, "all"] = values.mean(axis=1)
        columns[name, "early"] = values[:, :early].mean(axis=1)
        if horizon_tokens > 1:
            columns[name, "from2"] = values[:, 1:].mean(axis=1)
        if early < horizon_tokens:
            columns[name, "late"] = values[:, early:].mean(axis=1)
    keys = list(columns)
    per_example = np.stack([columns[key] for key in keys], axis=1)  # (N, K)
    point = dict(zip(keys, per_example.mean(axis=0), strict=True))
    if doc_ids is not None and len(doc_ids) != total:
        raise ConfigError(f"{len(doc_ids)} document ids for {total} examples")
    boot = (
        _bootstrap_means(per_example, samples=bootstrap_samples, seed=seed, groups=doc_ids)
        if bootstrap_samples > 0
        else np.empty((0, len(keys)))
    )
    resampled = {key: boot[:, i] for i, key in enumerate(keys)}

    def stat(fn: Callable[[Mapping], Any]) -> dict[str, Any]:
        # An undefined ratio (no gap to recover) becomes None, not a warning.
        with np.errstate(divide="ignore", invalid="ignore"):
            value = {"value": _json_float(fn(point))}
            value["ci95"] = _interval(np.asarray(fn(resampled))) if bootstrap_samples else None
        return value

    conditions: dict[str, Any] = {}
    for name in names:
        entry = {
            "nll": stat(lambda m, n=name: m[n, "all"]),
            "delta_nll": stat(lambda m, n=name: m[n, "all"] - m["full", "all"]),
            "gap_recovered": stat(
                lambda m, n=name: _gap_recovered(m["drop", "all"], m[n, "all"], m["full", "all"])
            ),
            "gap_recovered_from_2": (
                stat(
                    lambda m, n=name: _gap_recovered(
                        m["drop", "from2"], m[n, "from2"], m["full", "from2"]
                    )
                )
                if horizon_tokens > 1
                else None
            ),
            "gap_recovered_rest": (
                stat(
                    lambda m, n=name: _gap_recovered(
                        m["drop", "late"], m[n, "late"], m["full", "late"]
                    )
                )
                if early < horizon_tokens
                else None
            ),
            "delta_nll_early": stat(lambda m, n=name: m[n, "early"] - m["full", "early"]),
            "delta_nll_late": (
                stat(lambda m, n=name: m[n, "late"] - m["full", "late"])
                if early < horizon_tokens
                else None
            ),
            "nll_per_position": [
                float(v) for v in np.asarray(nll[name], dtype=np.float64).mean(axis=0)
            ],
        }
        conditions[name] = entry

    def gap(m, n):
        return _gap_recovered(m["drop", "all"], m[n, "all"], m["full", "all"])

    comparisons: dict[str, Any] = {}
    for vector, swapped in VECTORS:
        if vector not in nll:
            continue
        if "mean" in nll:
            comparisons[f"{vector}_minus_mean_gap_recovered"] = stat(
                lambda m, v=vector: gap(m, v) - gap(m, "mean")
            )
        if "oracle" in nll:
            # How much of what one (or k) free vector(s) can carry the vector reaches.
            comparisons[f"{vector}_over_oracle_gap_recovered"] = stat(
                lambda m, v=vector: gap(m, v) / gap(m, "oracle")
            )
        if swapped in nll:
            comparisons[f"{swapped}_over_{vector}_gap_recovered"] = stat(
                lambda m, v=vector, w=swapped: gap(m, w) / gap(m, v)
            )

    return {
        "n_examples": int(total),
        "horizon_tokens": int(horizon_tokens),
        "early_tokens": int(early),
        "bootstrap_samples": int(bootstrap_samples),
        "resampling": "documents" if doc_ids is not None else "examples",
        "n_documents": None if doc_ids is None else int(len(np.unique(doc_ids))),
        "seed": int(seed),
        "conditions": conditions,
        "comparisons": comparisons,
        "quality_bars": _quality_bars(conditions, comparisons),
    }


def _quality_bars(conditions: Mapping, comparisons: Mapping) -> dict[str, bool | None]:
    """The bars of docs/quality.md, each True / False, or None when a number is missing."""

    def value(entry):
        return None if entry is None else entry["value"]

    bars: dict[str, bool | None] = {}
    drop_gap = value(conditions["drop"]["delta_nll"])
    bars["drop_delta_nll_at_least_0.1"] = None if drop_gap is None else drop_gap >= 0.1
    for vector, swapped in VECTORS:  # the same bars for each
        if vector not in conditions:
            continue
        gr = value(conditions[vector]["gap_recovered"])
        bars[f"{vector}_gap_recovered_at_least_0.5"] = None if gr is None else gr >= 0.5
        # The targets of issue 12 (docs/quality.md, "Quality bars").
        bars[f"{vector}_gap_recovered_at_least_0.7"] = None if gr is None else gr >= 0.7
        rest = value(conditions[vector].get("gap_recovered_rest"))
        bars[f"{vector}_gap_recovered_rest_at_least_0.4"] = None if rest is None else rest >= 0.4
        difference = comparisons.get(f"{vector}_minus_mean_gap_recovered")
        if difference is not None:
            low = (difference.get("ci95") or [None])[0]
            bars[f"{vector}_above_mean_ci_excludes_0"] = None if low is None else low > 0
        if f"{swapped}_over_{vector}_gap_recovered" in comparisons:
            ratio = value(comparisons[f"{swapped}_over_{vector}_gap_recovered"])
            bars[f"{swapped}_below_half_of_{vector}"] = None if ratio is None else ratio < 0.5
            bars[f"{swapped}_below_third_of_{vector}"] = None if ratio is None else ratio < 1 / 3
    return bars


# --- from a checkpoint and a shard -----------------------------------------------------


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


def evaluate_gistnet(
    *,
    checkpoint_path: str | Path,
    dataset_path: str | Path,
    split: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    max_examples: int | None = None,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    oracle_examples: int | None = None,
    refine: RefineSettings | None = None,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    tokenizer: str | None = None,
    teacher_model: str | None = None,
) -> dict[str, Any]:
    """Score a checkpoint's gists on a prepared shard; returns the JSON-able report.

    `dataset_path` is a shard (.arrow), a glob of a split's shards, or a prepared dataset
    directory (then `split`, default validation, picks the split; all of its shards are
    read); datasets with cached states and token-only ones alike; shards of the seed's
    tool, with or without its metadata, are read too. The teacher is `teacher_model` if given, else the dataset's,
    else the one the checkpoint was trained with; likewise the tokenizer, which only picks
    the drop token (the teacher's config has it too). `max_examples` evaluates a seeded
    random subset. `oracle_examples` adds the `oracle` on a seeded subset of that many of
    the scored examples (free vectors fitted to each, see `fit_oracle_vectors`): the report
    then has an `oracle` section with its own table and GR(gist) / GR(oracle).
    `refine` (`gistnet.refine.RefineSettings`) adds the `refined` condition, every gist
    refined at gist time from the block alone, and `swapped_refined` (the refined gist of
    the same other-document example `swapped` reads), with the same comparisons and bars
    as the gist's, in the oracle section too.
    Intervals resample documents (the shard's `doc_id`, else `ShardSet.document_ids()`).
    `on_progress(done, total)` counts scored examples; `should_cancel()` is polled between
    batches and stops the work with `Cancelled`.
    """
    from gistnet.checkpoint import load_checkpoint
    from gistnet.datasets import describe_dataset, missing_teacher_error, split_shard_paths
    from gistnet.devices import resolve_device
    from gistnet.shards import open_shard_set
    from gistnet.storage import file_sha256
    from gistnet.teacher import (
        check_teacher_layers,
        hidden_size_of,
        load_teacher,
        load_tokenizer,
    )

    started = time.perf_counter()
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise ConfigError(f"checkpoint {str(checkpoint_path)!r} does not exist")
    resolve_shard_path(dataset_path, split)  # the clear error for a path that is not there
    shard_paths = split_shard_paths(dataset_path, split, default_split="validation")
    shard_path = shard_paths[0]
    torch_device = resolve_device(device)

    metadata = describe_dataset(shard_path, tokenizer=tokenizer, teacher_model=teacher_model)
    shard = open_shard_set(shard_paths)
    block_size = int(metadata["block_size"])
    model, info = load_checkpoint(checkpoint_path, device=torch_device)
    model.eval()
    info_plain = _plain(info)
    if int(info_plain["block_size"]) != block_size:
        raise ConfigError(
            f"checkpoint was trained on blocks of {info_plain['block_size']} tokens but the "
            f"dataset's blocks have {block_size}: evaluate on a dataset prepared with its block_size"
        )

    trained_teacher = info_plain.get("teacher") or {}
    teacher_name = metadata.get("teacher_model") or trained_teacher.get("model")
    if teacher_name is None:
        raise missing_teacher_error("evaluation", shard_path)
    tokenizer_name = metadata.get("tokenizer") or info_plain.get("tokenizer")
    teacher = load_teacher(
        teacher_name, dtype=metadata.get("teacher_dtype", "float32"), device=torch_device
    )
    loaded_tokenizer = load_tokenizer(tokenizer_name) if tokenizer_name is not None else None
    teacher_width = hidden_size_of(teacher)
    if model.config.hidden_size != teacher_width:
        raise ConfigError(
            f"checkpoint's gists have width {model.config.hidden_size} but the dataset's teacher "
            f"{teacher_name!r} reads inputs of width {teacher_width}: evaluate on a dataset "
            f"prepared with the teacher the checkpoint was trained for"
        )
    check_teacher_layers(teacher.config, model.config.teacher_layers)

    try:
        drop_token = drop_token_id(loaded_tokenizer, teacher)
    except ConfigError as err:
        if loaded_tokenizer is not None:
            raise
        raise ConfigError(f"{err}; or name the tokenizer with --tokenizer") from None

    total = len(shard.context_input_ids)
    if total == 0:
        raise ShardError(f"shard {str(shard_path)!r} holds no examples")
    rows = np.arange(total)
    if max_examples is not None and max_examples < total:
        rows = np.sort(np.random.default_rng(seed).choice(total, max_examples, replace=False))
    context = np.asarray(shard.context_input_ids[rows])

    if oracle_examples is not None and oracle_examples < 1:
        raise ConfigError(f"oracle_examples must be at least 1; got {oracle_examples}")
    doc_ids = shard.document_ids()[rows]
    partner = swap_partners(doc_ids, seed=seed)
    swap_rule = (
        "gist of a random example from another document"
        if shard.horizon >= 2 * block_size
        else "gist of a random other example (a one-block horizon cannot tell documents apart)"
    )

    gists = _compute_gists(
        model,
        shard,
        rows,
        teacher=teacher,
        device=torch_device,
        batch_size=batch_size,
        should_cancel=should_cancel,
    )
    sink = drop_vector(teacher, drop_token).to(torch_device) if model.config.bos_sink else None
    extra, refine_report = {}, None
    if refine is not None:
        refine_started = time.perf_counter()
        refined = refine_gists(
            teacher,
            torch.from_numpy(np.ascontiguousarray(context[:, :block_size], dtype=np.int64)),
            gists,
            settings=refine,
            tokens=context.shape[1] - block_size,
            sink=sink,
            should_cancel=should_cancel,
        )
        extra = {"refined": refined, "swapped_refined": refined[torch.as_tensor(partner)]}
        refine_report = {
            **refine.to_dict(),
            "tokens": refine.tokens or context.shape[1] - block_size,
            "seconds": round(time.perf_counter() - refine_started, 1),
        }
    nll = evaluate_conditions(
        teacher,
        context,
        block_size=block_size,
        gist_vectors=gists,
        swap_partner=partner,
        extra_vectors=extra,
        drop_token=drop_token,
        batch_size=batch_size,
        on_progress=on_progress,
        should_cancel=should_cancel,
        bos_sink=model.config.bos_sink,
    )
    report = summarize(nll, bootstrap_samples=bootstrap_samples, seed=seed, doc_ids=doc_ids)
    if bootstrap_samples:
        # The intervals a bootstrap over examples would give, beside the document ones, so
        # a reader sees how much the overlap of a document's windows narrows them.
        by_example = summarize(nll, bootstrap_samples=bootstrap_samples, seed=seed)
        report["example_bootstrap_gap_recovered_ci95"] = {
            name: entry["gap_recovered"]["ci95"] for name, entry in by_example["conditions"].items()
        }
    if oracle_examples is not None:
        report["oracle"] = _oracle_section(
            teacher,
            context,
            nll,
            gists,
            doc_ids,
            block_size=block_size,
            drop_token=drop_token,
            size=oracle_examples,
            seed=seed,
            batch_size=batch_size,
            bootstrap_samples=bootstrap_samples,
            should_cancel=should_cancel,
            sink=sink,
        )
        for vector, _ in VECTORS:
            share = report["oracle"]["comparisons"].get(f"{vector}_over_oracle_gap_recovered")
            if share is not None:
                report["quality_bars"][f"{vector}_at_least_90pct_of_oracle"] = (
                    None if share["value"] is None else share["value"] >= 0.9
                )
    report.update(
        {
            "checkpoint": {
                "path": str(checkpoint_path),
                "sha256": file_sha256(checkpoint_path),
                "info": info_plain,
            },
            "dataset": {
                "path": str(dataset_path),
                "shard": str(shard_path),
                "shards": [str(p) for p in shard_paths],
                "teacher_states": metadata.get("teacher_states", "cache"),
                "split": split,
                "fingerprint": metadata["fingerprint"],
                "metadata_form": metadata["metadata_form"],
                "examples_in_shard": int(total),
            },
            "teacher": teacher_name,
            # False when the checkpoint names another teacher than the one used (same width).
            "teacher_matches_checkpoint": trained_teacher.get("model") in (None, teacher_name),
            "tokenizer": tokenizer_name,
            "block_size": block_size,
            "gists_per_block": int(model.config.gists_per_block),
            "compression": f"{block_size // model.config.gists_per_block}:1"
            if block_size % model.config.gists_per_block == 0
            else f"{block_size / model.config.gists_per_block:.1f}:1",
            "horizon": int(metadata["horizon"]),
            "drop_token_id": drop_token,
            # Whether the vector conditions read their vectors after the drop token (BOS).
            "bos_sink": bool(model.config.bos_sink),
            "swapped_rule": swap_rule,
            # How the `refined` condition's gists were refined (gistnet.refine), or None.
            "refine": refine_report,
            "device": str(torch_device),
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
    )
    return report


def oracle_subset(total: int, size: int, *, seed: int = 0) -> np.ndarray:
    """The sorted indices, among `total` scored examples, of the oracle's seeded subset."""
    if size >= total:
        return np.arange(total)
    # A different stream from the one that picked max_examples, so the two do not nest.
    return np.sort(np.random.default_rng([seed, 1]).choice(total, size, replace=False))


def _oracle_section(
    teacher: torch.nn.Module,
    context: np.ndarray,
    nll: Mapping[str, np.ndarray],
    gists: torch.Tensor,
    doc_ids: np.ndarray,
    *,
    block_size: int,
    drop_token: int,
    size: int,
    seed: int,
    batch_size: int,
    bootstrap_samples: int,
    should_cancel: CancelFn | None,
    sink: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The oracle on a seeded subset: its conditions beside full, drop, mean and gist (and
    refined, where scored) on the same examples, and GR(gist) / GR(oracle) with its
    interval. `sink` (D,) is read before every vector (a `bos_sink` model)."""
    subset = oracle_subset(len(context), size, seed=seed)
    started = time.perf_counter()
    vectors, search = fit_oracle_vectors(
        teacher,
        context[subset],
        block_size=block_size,
        init=gists[subset],
        batch_size=batch_size,
        should_cancel=should_cancel,
        sink=sink,
    )
    oracle_nll = evaluate_conditions(
        teacher,
        context[subset],
        block_size=block_size,
        extra_vectors={"oracle": vectors},
        drop_token=drop_token,
        batch_size=batch_size,
        should_cancel=should_cancel,
        bos_sink=sink is not None,
    )["oracle"]
    on_subset = {
        name: nll[name][subset] for name in ("full", "gist", "drop", "mean", "refined") if name in nll
    }
    on_subset["oracle"] = oracle_nll
    section = summarize(
        on_subset, bootstrap_samples=bootstrap_samples, seed=seed, doc_ids=doc_ids[subset]
    )
    section.pop("quality_bars", None)
    section["search"] = {**search, "seconds": round(time.perf_counter() - started, 1)}
    return section


# --- output ----------------------------------------------------------------------------


def _fmt(entry: Mapping | None, digits: int = 3) -> str:
    if entry is None or entry["value"] is None:
        return "n/a"
    text = f"{entry['value']:.{digits}f}"
    if entry.get("ci95") and entry["ci95"][0] is not None:
        low, high = entry["ci95"]
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def _condition_table(report: Mapping[str, Any]) -> list[str]:
    early = report["early_tokens"]
    header = [
        "condition",
        "NLL",
        "ΔNLL [95% CI]",
        "GR [95% CI]",
        "GR from token 2",
        f"GR tokens {early + 1}+",
        f"ΔNLL first {early}",
        "ΔNLL rest",
    ]
    rows = [header]
    for name, entry in report["conditions"].items():
        rows.append(
            [
                name,
                _fmt(entry["nll"]),
                _fmt(entry["delta_nll"]),
                _fmt(entry["gap_recovered"]),
                _fmt(entry.get("gap_recovered_from_2")),
                _fmt(entry.get("gap_recovered_rest")),
                _fmt(entry["delta_nll_early"]),
                _fmt(entry["delta_nll_late"]),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def _resampling_note(report: Mapping[str, Any]) -> str:
    if report.get("resampling") == "documents":
        return (
            f"{report['bootstrap_samples']} bootstrap resamples of the "
            f"{report['n_documents']} documents (cluster bootstrap over doc_id)"
        )
    return f"{report['bootstrap_samples']} bootstrap resamples of the examples"


def format_table(report: Mapping[str, Any]) -> str:
    """A plain-text table of the report: one row per condition, then the comparisons."""
    lines = _condition_table(report)
    lines.append("")
    lines.append(
        f"{report['n_examples']} examples, {report['horizon_tokens']} horizon tokens each; "
        f"{_resampling_note(report)}"
    )
    refine = report.get("refine")
    if refine is not None:
        lines.append(
            f"refined: each gist refined from the block alone, {refine['samples']} continuations "
            f"of {refine['tokens']} tokens sampled by the teacher (temperature "
            f"{refine['temperature']}, seed {refine['seed']}), {refine['steps']} Adam steps "
            f"(lr {refine['lr']}); {refine['seconds']} s"
        )
    comparisons = report.get("comparisons", {})
    for key, label in (
        ("gist_minus_mean_gap_recovered", "GR(gist) - GR(mean)"),
        ("swapped_over_gist_gap_recovered", "GR(swapped) / GR(gist)"),
        ("refined_minus_mean_gap_recovered", "GR(refined) - GR(mean)"),
        ("swapped_refined_over_refined_gap_recovered", "GR(swapped_refined) / GR(refined)"),
    ):
        if key in comparisons:
            lines.append(f"{label}: {_fmt(comparisons[key])}")
    oracle = report.get("oracle")
    if oracle is not None:
        search = oracle["search"]
        lines += [
            "",
            f"oracle: free vectors fitted per example on {oracle['n_examples']} examples "
            f"(Adam lr {search['lr']}, from the gist, at most {search['max_steps']} steps, "
            f"stopped on a KL plateau; {search['seconds']} s)",
            *_condition_table(oracle),
        ]
        for vector, _ in VECTORS:
            share = oracle["comparisons"].get(f"{vector}_over_oracle_gap_recovered")
            if share is not None:
                lines.append(f"GR({vector}) / GR(oracle): {_fmt(share)}")
    bars = report.get("quality_bars") or {}
    if bars:
        lines.append(
            "quality bars: "
            + ", ".join(
                f"{name} {'yes' if ok else 'NO' if ok is False else 'n/a'}"
                for name, ok in bars.items()
            )
        )
    return "\n".join(lines)


def plot_per_position(report: Mapping[str, Any], path: str | Path, *, title: str | None = None):
    """Mean NLL at each horizon position, one line per condition, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for name, entry in report["conditions"].items():
        curve = entry["nll_per_position"]
        gr = entry["gap_recovered"]["value"]
        label = name if gr is None or name in ("full", "drop") else f"{name} (GR {gr:.2f})"
        ax.plot(range(1, len(curve) + 1), curve, label=label, linewidth=1.5)
    early = report["early_tokens"]
    if early < report["horizon_tokens"]:
        ax.axvline(early + 0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("horizon position (tokens after the block)")
    # Log scale: the first tokens after the block cost ten times the later ones.
    ax.set_yscale("log")
    ax.set_ylabel("mean NLL (nats, log scale)")
    ax.set_title(title or f"per-position NLL, {report['n_examples']} examples")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_report(
    report: Mapping[str, Any], out_dir: str | Path, *, stem: str = "evaluation"
) -> dict[str, Path]:
    """Write `<stem>.json` and `<stem>_nll_per_position.png` under out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    plot_path = plot_per_position(report, out_dir / f"{stem}_nll_per_position.png")
    return {"json": json_path, "plot": plot_path}
