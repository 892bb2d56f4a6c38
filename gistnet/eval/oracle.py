"""The `oracle`: free vectors fitted to each example of a seeded subset, the ceiling of
what one (or k) input vector(s) can carry for this teacher, scored beside the gist."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from gistnet.errors import ConfigError
from gistnet.eval.conditions import CancelFn, as_long_tensor, device_of, evaluate_conditions
from gistnet.eval.stats import summarize
from gistnet.refine import fit_vectors
from gistnet.substitution import horizon_log_probs


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
    device = device_of(teacher)
    total = len(context_input_ids)
    if len(init) != total:
        raise ConfigError(f"{len(init)} starting vectors for {total} examples")
    fitted, steps_taken, final_kl = [], [], []
    for start in range(0, total, batch_size):
        context = as_long_tensor(context_input_ids[start : start + batch_size], device)
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


def oracle_subset(total: int, size: int, *, seed: int = 0) -> np.ndarray:
    """The sorted indices, among `total` scored examples, of the oracle's seeded subset."""
    if size >= total:
        return np.arange(total)
    # A different stream from the one that picked max_examples, so the two do not nest.
    return np.sort(np.random.default_rng([seed, 1]).choice(total, size, replace=False))


def oracle_section(
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


