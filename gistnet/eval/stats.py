"""The report's statistics: per condition mean NLL (nats per token), ΔNLL = NLL - NLL_full,
the gap recovered GR = (NLL_drop - NLL) / (NLL_drop - NLL_full), ΔNLL over the first
`early_tokens` horizon tokens and over the rest, 95% bootstrap intervals (examples or
whole documents resampled), the comparisons between conditions and the quality bars."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gistnet.errors import ConfigError
from gistnet.eval.conditions import CONDITIONS, VECTORS
from gistnet.substitution import EARLY_TOKENS


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


StatFn = Callable[[Callable[[Mapping], Any]], dict[str, Any]]


def paired_statistic(
    columns: Mapping[Any, np.ndarray],
    *,
    bootstrap_samples: int,
    seed: int,
    groups: np.ndarray | None = None,
) -> StatFn:
    """`stat(fn)` -> {"value", "ci95"}: `fn` of the columns' means, and its 95% interval
    over `bootstrap_samples` resamples of the rows (of whole `groups` where given).

    `columns` {key: (N,)} hold one number per example; `fn` reads a mapping of the same
    keys to means (a float each at the point, a (S,) array on the resamples). Every
    statistic is recomputed on the same resamples, so a difference's interval accounts
    for the pairing of the columns. A ratio with no denominator is None, not a warning.
    """
    keys = list(columns)
    per_example = np.stack([columns[key] for key in keys], axis=1)  # (N, K)
    point = dict(zip(keys, per_example.mean(axis=0), strict=True))
    boot = (
        _bootstrap_means(per_example, samples=bootstrap_samples, seed=seed, groups=groups)
        if bootstrap_samples > 0
        else np.empty((0, len(keys)))
    )
    resampled = {key: boot[:, i] for i, key in enumerate(keys)}

    def stat(fn: Callable[[Mapping], Any]) -> dict[str, Any]:
        with np.errstate(divide="ignore", invalid="ignore"):
            value = {"value": _json_float(fn(point))}
            value["ci95"] = _interval(np.asarray(fn(resampled))) if bootstrap_samples else None
        return value

    return stat


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
    columns = _per_example_columns(nll, names, early=early)
    if doc_ids is not None and len(doc_ids) != total:
        raise ConfigError(f"{len(doc_ids)} document ids for {total} examples")
    stat = paired_statistic(columns, bootstrap_samples=bootstrap_samples, seed=seed, groups=doc_ids)
    conditions = {
        name: _condition_entry(stat, name, nll[name], early=early, horizon_tokens=horizon_tokens)
        for name in names
    }
    comparisons = _comparisons(stat, nll)
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



def _per_example_columns(
    nll: Mapping[str, np.ndarray], names: list[str], *, early: int
) -> dict[tuple[str, str], np.ndarray]:
    """For each condition, each example's mean NLL over all / early / from-2 / late tokens."""
    total, horizon_tokens = nll["full"].shape
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
    return columns


def _condition_entry(
    stat: StatFn, name: str, nll: np.ndarray, *, early: int, horizon_tokens: int
) -> dict[str, Any]:
    """One condition's row of the report: `stat` gives a statistic's value and interval."""

    def gap(m, part):
        return _gap_recovered(m["drop", part], m[name, part], m["full", part])

    has_rest = early < horizon_tokens
    return {
        "nll": stat(lambda m: m[name, "all"]),
        "delta_nll": stat(lambda m: m[name, "all"] - m["full", "all"]),
        "gap_recovered": stat(lambda m: gap(m, "all")),
        "gap_recovered_from_2": stat(lambda m: gap(m, "from2")) if horizon_tokens > 1 else None,
        "gap_recovered_rest": stat(lambda m: gap(m, "late")) if has_rest else None,
        "delta_nll_early": stat(lambda m: m[name, "early"] - m["full", "early"]),
        "delta_nll_late": (
            stat(lambda m: m[name, "late"] - m["full", "late"]) if has_rest else None
        ),
        "nll_per_position": [float(v) for v in np.asarray(nll, dtype=np.float64).mean(axis=0)],
    }


def _comparisons(stat: StatFn, nll: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Each vector's GR against the mean's, the oracle's and its swapped twin's."""

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
    return comparisons


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
        # The stricter targets docs/quality.md sets ("Quality bars").
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
