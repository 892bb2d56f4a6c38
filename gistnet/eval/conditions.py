"""ΔNLL@H's conditions: how well the frozen teacher predicts the tokens after a block when
it reads a gist (or a baseline vector) in place of the block.

For each example the teacher scores the same L = horizon - block_size tokens h under
five conditions (see `gistnet.substitution` for how a vector replaces the block):

    full      the block's tokens, then h              the reference
    gist      GistNet's vector for this block          what we measure
    drop      the embedding of BOS (else EOS)          no content: the gap's other end
    mean      the mean of the block's input embeddings the simple baseline
    swapped   the gist of an example from another document: content, but the wrong one

and on request the `oracle` (free vectors fitted to each example of a seeded subset,
`gistnet.eval.oracle`) and `refined` / `swapped_refined` (the gists refined from their
blocks, gistnet.refine).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from gistnet.errors import Cancelled, ConfigError
from gistnet.substitution import drop_token_id, drop_vector, horizon_nll, mean_block_embedding

CONDITIONS = ("full", "gist", "drop", "mean", "swapped")
# The vectors a report compares and bars, each with its other-document twin: GistNet's gist,
# and where the evaluation refined it (gistnet.refine) the refined gist.
VECTORS = (("gist", "swapped"), ("refined", "swapped_refined"))

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


def device_of(teacher: torch.nn.Module) -> torch.device:
    return teacher.get_input_embeddings().weight.device


def as_long_tensor(rows: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
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
    device = device_of(teacher)
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
        context = as_long_tensor(context_input_ids[start:stop], device)  # (B, H)
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
