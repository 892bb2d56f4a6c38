"""The long-document evaluation: the S tokens after a context of C tokens, scored with the
context whole, truncated, or its oldest part compressed into gists.

Each example is a window of at least C + S tokens, w_0 ... w_{C+S-1}; every condition
scores w_C ... w_{C+S-1}. With T tokens a block, k gists a block, R recent tokens kept raw
and m = (C - R) / T blocks compressed, the compressed context feeds B = m k + R inputs
(one more with a `bos_sink` model's sink):

    full        w_0 ... w_{C-1}                          C positions
    truncated   w_{C-B} ... w_{C-1}                      the last B tokens
    compressed  gists of w_0 ... w_{C-R-1}, w_{C-R} ...  B positions
    mean        the same, each block's mean embedding in place of its gists
    recent      w_{C-R} ... w_{C-1}                      the R raw tokens alone

The compressed and mean contexts stand at their text's positions (`gistnet.context`), so
the raw tokens after the gists are where they are in the full context. The truncated and
recent ones are plain truncation: the last tokens read as a sequence of their own, from
position 0, as a user feeds a text too long for the budget (for a rotary teacher the same
numbers as at their true positions; with B = C truncated is full). The report gives
each condition's NLL, GR_long = (NLL_truncated - NLL_compressed) / (NLL_truncated -
NLL_full), the share of what truncation loses that the gists bring back, and what each
condition costs the teacher: positions fed, prefill FLOPs and KV-cache bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gistnet.context import CompressedSpan, RawTokens, context_inputs, teacher_forward
from gistnet.errors import Cancelled, ConfigError
from gistnet.eval.stats import paired_statistic

LONG_CONDITIONS = ("full", "truncated", "compressed", "mean", "recent")
# Nats per scored token truncation must lose for GR_long to be read as a measurement.
TRUNCATION_LOSS = 0.1
# The vector conditions, each measured by how much of truncation's loss it recovers.
RECOVERING = ("compressed", "mean", "recent")

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
# GistNet's gists for blocks of token ids: (N, T) -> (N, k, D).
GistFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LongLayout:
    """Where each condition's inputs come from, for one model and one setting of C, R, S."""

    block_size: int  # T, tokens a gist stands for
    gists_per_block: int  # k
    context_tokens: int  # C
    recent_tokens: int  # R, kept raw after the compressed blocks
    score_tokens: int  # S, scored after the context
    sink: bool = False  # a bos_sink model: its gists are read after the teacher's BOS

    def __post_init__(self):
        compressed = self.context_tokens - self.recent_tokens
        if self.recent_tokens < 1 or compressed < self.block_size:
            raise ConfigError(
                f"recent_tokens must be at least 1 and leave at least one block of "
                f"{self.block_size} tokens of the {self.context_tokens} context_tokens to "
                f"compress; got recent_tokens {self.recent_tokens}"
            )
        if compressed % self.block_size:
            raise ConfigError(
                f"context_tokens - recent_tokens ({compressed}) must be a multiple of the "
                f"model's block_size ({self.block_size}): the oldest tokens are compressed "
                f"in whole blocks"
            )
        if self.score_tokens < 1:
            raise ConfigError(f"score_tokens must be at least 1; got {self.score_tokens}")

    @property
    def blocks(self) -> int:
        return (self.context_tokens - self.recent_tokens) // self.block_size

    @property
    def window_tokens(self) -> int:
        return self.context_tokens + self.score_tokens

    @property
    def compressed_positions(self) -> int:
        """B: the inputs the compressed context feeds, the sink included."""
        return self.blocks * self.gists_per_block + self.recent_tokens + int(self.sink)

    def context_positions(self) -> dict[str, int]:
        """Each condition's context length in inputs fed (the scored tokens not counted)."""
        mean = self.blocks + self.recent_tokens + int(self.sink)  # one mean vector a block
        return {
            "full": self.context_tokens,
            "truncated": min(self.compressed_positions, self.context_tokens),
            "compressed": self.compressed_positions,
            "mean": mean,
            "recent": self.recent_tokens,
        }


def check_window(layout: LongLayout, *, horizon: int, teacher_positions: int | None) -> None:
    """Refuse a layout the dataset's windows or the teacher's positions cannot hold."""
    if layout.window_tokens > horizon:
        raise ConfigError(
            f"context_tokens + score_tokens ({layout.window_tokens}) exceed the dataset's "
            f"windows of {horizon} tokens: prepare it with horizon >= {layout.window_tokens}, "
            f"or ask for fewer tokens"
        )
    if teacher_positions is not None and layout.window_tokens > teacher_positions:
        raise ConfigError(
            f"context_tokens + score_tokens ({layout.window_tokens}) exceed the teacher's "
            f"{teacher_positions} positions: ask for at most {teacher_positions}"
        )


def teacher_positions(teacher: torch.nn.Module) -> int | None:
    """The teacher's position limit from its config, None where it names none."""
    config = teacher.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _scored_nll(
    teacher: torch.nn.Module, parts: list, *, start: int, targets: torch.Tensor, sink
) -> torch.Tensor:
    """NLL (B, S) of `targets` (B, S), the tokens after `parts`' last S inputs."""
    inputs = context_inputs(teacher, [parts], starts=[start], sink=sink)
    logits = teacher_forward(teacher, inputs).logits[:, -targets.shape[1] :]
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return -log_probs.gather(-1, targets[..., None]).squeeze(-1)


@torch.inference_mode()
def long_condition_nll(
    teacher: torch.nn.Module,
    windows: torch.Tensor,
    *,
    layout: LongLayout,
    gists: torch.Tensor,
    sink: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token NLL (N, S) of each condition for windows (N, >= C + S) token ids.

    `gists` (N, m, k, D) are the m compressed blocks' gists in order; `sink` (D,) is read
    before the gists and before the mean vectors (as the single-block evaluation reads
    every vector condition of a `bos_sink` model).
    """
    T, C, R = layout.block_size, layout.context_tokens, layout.recent_tokens
    m, k = layout.blocks, layout.gists_per_block
    if gists.shape[:3] != (len(windows), m, k):
        raise ConfigError(
            f"gists must be (windows={len(windows)}, blocks={m}, k={k}, D); got "
            f"{tuple(gists.shape)}"
        )
    device = teacher.get_input_embeddings().weight.device
    windows = windows[:, : layout.window_tokens].to(device)
    targets = windows[:, C:]  # (N, S)
    fed = windows[:, :-1]  # the last token predicts nothing scored
    budget = layout.context_positions()["truncated"]
    old = windows[:, : C - R]  # (N, m * T)
    means = teacher.get_input_embeddings()(old).float()
    means = means.reshape(len(windows), m, T, -1).mean(dim=2, keepdim=True)  # (N, m, 1, D)
    recent = RawTokens(fed[:, C - R :])
    contexts = {
        "full": ([RawTokens(fed)], 0, None),
        "truncated": ([RawTokens(fed[:, C - budget :])], 0, None),
        "compressed": ([CompressedSpan(gists, block_size=T), recent], 0, sink),
        "mean": ([CompressedSpan(means, block_size=T), recent], 0, sink),
        "recent": ([recent], 0, None),
    }
    return {
        name: _scored_nll(teacher, parts, start=start, targets=targets, sink=reads_sink)
        for name, (parts, start, reads_sink) in contexts.items()
    }


def prefill_cost(teacher: torch.nn.Module, positions: int) -> dict[str, int]:
    """What reading `positions` inputs costs the teacher, from its shapes.

    FLOPs: 2 per weight of the layers (the embedding tables and the LM head left out: a
    prefill needs the logits of its last position only) per position, plus causal
    attention's QK^T and AV, 2 n^2 d_attn a layer (n^2 / 2 pairs, 2 FLOPs a product, two
    products). KV-cache bytes: a key and a value vector a layer and position, in the
    teacher's dtype.
    """
    config = teacher.config
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    tables = {id(m.weight) for m in teacher.modules() if isinstance(m, torch.nn.Embedding)}
    output = teacher.get_output_embeddings()
    if output is not None:
        tables.add(id(output.weight))
    weights = sum(p.numel() for p in teacher.parameters() if p.dim() >= 2 and id(p) not in tables)
    element = teacher.get_input_embeddings().weight.element_size()
    return {
        "positions": int(positions),
        "prefill_flops": int(
            2 * weights * positions + 2 * layers * positions**2 * heads * head_dim
        ),
        "kv_cache_bytes": int(2 * layers * kv_heads * head_dim * positions * element),
    }


def score_long_windows(
    teacher: torch.nn.Module,
    windows: np.ndarray,
    *,
    layout: LongLayout,
    gists_of: GistFn,
    sink: torch.Tensor | None = None,
    batch_size: int = 16,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> dict[str, np.ndarray]:
    """{condition: (N, S) float32} NLL for windows (N, >= C + S), in batches of windows.

    `gists_of` maps blocks (n, T) of token ids to GistNet's (n, k, D) gists.
    """
    total = len(windows)
    scores: dict[str, list[np.ndarray]] = {name: [] for name in LONG_CONDITIONS}
    device = teacher.get_input_embeddings().weight.device
    T, m = layout.block_size, layout.blocks
    for start in range(0, total, batch_size):
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"evaluation cancelled after {start} of {total} windows")
        batch = torch.from_numpy(
            np.ascontiguousarray(windows[start : start + batch_size], dtype=np.int64)
        ).to(device)
        blocks = batch[:, : m * T].reshape(-1, T)  # (n * m, T)
        gists = gists_of(blocks).reshape(len(batch), m, layout.gists_per_block, -1)
        nll = long_condition_nll(teacher, batch, layout=layout, gists=gists, sink=sink)
        for name, values in nll.items():
            scores[name].append(values.cpu().numpy())
        if on_progress is not None:
            on_progress(min(start + batch_size, total), total)
    return {name: np.concatenate(parts).astype(np.float32) for name, parts in scores.items()}


def summarize_long(
    nll: dict[str, np.ndarray],
    *,
    layout: LongLayout,
    costs: dict[str, dict[str, int]],
    doc_ids: np.ndarray | None = None,
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The long report's numbers: per condition its NLL, GR_long and cost, the comparison
    of the gists with the mean vectors, and the bars, with 95% intervals over documents
    (over windows without `doc_ids`)."""
    total = len(nll["full"])
    if total == 0:
        raise ConfigError("no windows to summarize")
    columns = {name: np.asarray(nll[name], dtype=np.float64).mean(axis=1) for name in nll}
    stat = paired_statistic(columns, bootstrap_samples=bootstrap_samples, seed=seed, groups=doc_ids)

    def recovered(m, name):
        return (m["truncated"] - m[name]) / (m["truncated"] - m["full"])

    conditions = {}
    for name in LONG_CONDITIONS:
        entry = {
            "nll": stat(lambda m, n=name: m[n]),
            "delta_nll": stat(lambda m, n=name: m[n] - m["full"]),
            **costs[name],
            "nll_per_position": [float(v) for v in np.asarray(nll[name]).mean(axis=0)],
        }
        if name in RECOVERING:
            entry["gap_recovered_long"] = stat(lambda m, n=name: recovered(m, n))
        conditions[name] = entry
    comparisons = {
        "compressed_minus_mean_gap_recovered_long": stat(
            lambda m: recovered(m, "compressed") - recovered(m, "mean")
        ),
        "mean_minus_compressed_nll": stat(lambda m: m["mean"] - m["compressed"]),
        "truncated_minus_full_nll": stat(lambda m: m["truncated"] - m["full"]),
    }
    gr = conditions["compressed"]["gap_recovered_long"]["value"]
    above = (comparisons["mean_minus_compressed_nll"]["ci95"] or [None])[0]
    # GR_long is a measurement only where truncation loses something: a teacher that
    # reads nothing from the old tokens leaves a ratio of noise over noise.
    lost = conditions["truncated"]["delta_nll"]["value"]
    meaningful = lost is not None and lost >= TRUNCATION_LOSS
    return {
        "mode": "long",
        "n_examples": int(total),
        "n_documents": None if doc_ids is None else int(len(np.unique(doc_ids))),
        "resampling": "documents" if doc_ids is not None else "examples",
        "bootstrap_samples": int(bootstrap_samples),
        "seed": int(seed),
        "context_tokens": layout.context_tokens,
        "recent_tokens": layout.recent_tokens,
        "score_tokens": layout.score_tokens,
        "compressed_blocks": layout.blocks,
        "compressed_positions": layout.compressed_positions,
        "conditions": conditions,
        "comparisons": comparisons,
        "quality_bars": {
            "truncated_delta_nll_at_least_0.1": meaningful,
            "compressed_gap_recovered_long_at_least_0.5": (
                None if gr is None or not meaningful else gr >= 0.5
            ),
            "compressed_above_mean_ci_excludes_0": None if above is None else above > 0,
        },
    }
