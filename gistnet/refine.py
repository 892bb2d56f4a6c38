"""Refined gists: GistNet's vectors improved at gist time, from the block alone.

GistNet computes a block's gist in one forward: an amortized guess at the vector that
lets the teacher continue as if it had read the block. Refinement spends more compute
per block to close what that guess leaves. The frozen teacher writes `samples`
continuations of the block (sampled at `temperature`, `tokens` long, a seeded
generator), and Adam moves the gist, from GistNet's vector, to minimise the same KL the
substitution objective trains, averaged over those continuations: the teacher reading
the gist should predict each continuation as it does after reading the block. Nothing
but the block is used, so a refined gist is as available as a plain one; the oracle of
`gistnet.eval.oracle` differs in being fitted to the one true continuation.

The cost is about `samples` x `steps` teacher forward and backward passes of
block + continuation per block, against one forward for GistNet's vector.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gistnet.errors import Cancelled, ConfigError
from gistnet.substitution import horizon_log_probs

__all__ = ["RefineSettings", "refine_gists", "sample_continuations"]

# Bounds a request may ask for (the service refuses more; see api.validation).
MAX_SAMPLES = 64
MAX_STEPS = 1000
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0  # below: the float32 logits overflow


@dataclass(frozen=True)
class RefineSettings:
    """How a gist is refined; the defaults are what docs/quality.md measured."""

    samples: int = 8  # continuations the teacher writes per block
    steps: int = 50  # Adam steps on the gist
    lr: float = 0.05
    temperature: float = 0.8  # of the sampled continuations (0.8 measured a little above 1.0)
    tokens: int | None = None  # continuation length; None: the model's horizon - block_size
    seed: int = 0  # the sampler's seed: the same blocks, batched alike, give the same gists

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.samples <= MAX_SAMPLES:
            problems.append(f"samples must be 1 to {MAX_SAMPLES}; got {self.samples}")
        if not 1 <= self.steps <= MAX_STEPS:
            problems.append(f"steps must be 1 to {MAX_STEPS}; got {self.steps}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0; got {self.lr}")
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
            problems.append(
                f"temperature must be {MIN_TEMPERATURE} to {MAX_TEMPERATURE}; got {self.temperature}"
            )
        if self.tokens is not None and self.tokens < 1:
            problems.append(f"tokens must be >= 1; got {self.tokens}")
        if problems:
            raise ConfigError("refine: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def sample_continuations(
    teacher: torch.nn.Module,
    block_ids: torch.Tensor,
    *,
    tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The blocks (N, T) each followed by `tokens` tokens the teacher samples after it,
    (N, T + tokens): ancestral sampling from the full softmax, one token at a time with
    the teacher's key-value cache."""
    # The key-value cache the teacher returns is fed back: transformers 5 names it `cache`,
    # 4 `past_key_values` (a tuple or a Cache object, by version and model).
    parameters = inspect.signature(teacher.forward).parameters
    name = "cache" if "cache" in parameters else "past_key_values"
    keep = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    out = teacher(input_ids=block_ids, use_cache=True, **keep)
    drawn = []
    for i in range(tokens):
        probs = F.softmax(out.logits[:, -1].float() / temperature, dim=-1)
        token = torch.multinomial(probs, 1, generator=generator)  # (N, 1)
        drawn.append(token)
        if i + 1 < tokens:
            out = teacher(input_ids=token, use_cache=True, **{name: getattr(out, name)}, **keep)
    return torch.cat([block_ids, *drawn], dim=1)


def fit_vectors(
    teacher: torch.nn.Module,
    context: torch.Tensor,
    full: torch.Tensor,
    init: torch.Tensor,
    *,
    block_size: int,
    lr: float,
    max_steps: int,
    repeats: int = 1,
    sink: torch.Tensor | None = None,
    patience: int | None = None,
    min_improvement: float = 0.0,
    should_cancel: Callable[[], bool] | None = None,
    cancelled: str = "cancelled while fitting vectors",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Free vectors fitted by Adam, from `init` (B, [k,] D), to the substitution KL: vector
    i stands in for the block of the `repeats` rows i*repeats ... of `context` (B*repeats, H),
    whose `full` log-probabilities are given, and is scored by its mean KL over them. Each
    keeps the vector with its lowest KL seen. With `patience`, the search stops once the
    summed KL has not improved by `min_improvement` (relative) for that many steps.
    Returns (best vectors float32, their KL (B,), steps taken) on the teacher's device.
    The oracle (repeats 1, the true horizon) and refinement (its sampled ones) share it."""
    device = teacher.get_input_embeddings().weight.device
    # A normal tensor (init may come from inference mode) that Adam may move.
    vectors = init.detach().clone().float().to(device)
    vectors.requires_grad_(True)
    best = vectors.detach().clone()
    best_kl = torch.full((len(vectors),), float("inf"), device=device)
    optimizer = torch.optim.Adam([vectors], lr=lr)
    history: list[float] = []
    steps = 0
    with torch.enable_grad():
        while steps < max_steps:
            if should_cancel is not None and should_cancel():
                raise Cancelled(cancelled)
            steps += 1
            log_probs = horizon_log_probs(
                teacher,
                context,
                block_size=block_size,
                vectors=vectors.repeat_interleave(repeats, dim=0) if repeats > 1 else vectors,
                sink=sink,
            )
            kl = F.kl_div(log_probs, full, reduction="none", log_target=True).sum(-1)
            per_vector = kl.mean(-1).view(len(vectors), repeats).mean(-1)  # (B,)
            with torch.no_grad():
                better = per_vector < best_kl
                best[better] = vectors.detach()[better]
                best_kl = torch.minimum(best_kl, per_vector.detach())
            # Summed, not averaged: each vector sees its own gradient alone.
            optimizer.zero_grad(set_to_none=True)
            per_vector.sum().backward()
            optimizer.step()
            if patience is not None:
                history.append(float(best_kl.sum()))
                if len(history) > patience and history[-1] > history[-1 - patience] * (
                    1 - min_improvement
                ):
                    break
    return best, best_kl, steps


def refine_gists(
    teacher: torch.nn.Module,
    block_ids: torch.Tensor,
    init: torch.Tensor,
    *,
    settings: RefineSettings,
    tokens: int,
    sink: torch.Tensor | None = None,
    rows_per_batch: int | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Refined gists (N, [k,] D) float32 on the CPU for blocks (N, T), from GistNet's
    vectors `init` (same shape). `tokens` is the continuation length unless the settings
    name one; `sink` (D,) is read before the vectors (a `bos_sink` model). Blocks are
    refined `rows_per_batch // samples` at a time (default: as many continuations as keep
    one float32 tensor of their logits within 256 MiB on the CPU, 2 GiB on a GPU); each
    keeps the vector with the lowest mean KL over its continuations seen during the search.
    """
    if len(init) != len(block_ids):
        raise ConfigError(f"{len(init)} starting vectors for {len(block_ids)} blocks")
    device = teacher.get_input_embeddings().weight.device
    tokens = settings.tokens or tokens
    if tokens < 1:
        raise ConfigError(
            f"refinement needs continuations of at least 1 token; got {tokens}: give "
            f"RefineSettings(tokens=...)"
        )
    block_size = block_ids.shape[1]
    samples = settings.samples
    if rows_per_batch is None:
        vocab = teacher.get_input_embeddings().weight.shape[0]
        budget = (2 << 30) if device.type == "cuda" else (256 << 20)
        rows_per_batch = max(1, budget // (tokens * vocab * 4))
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    per_batch = max(1, rows_per_batch // samples)
    refined = []
    # Gradients flow to the vectors even where a caller runs under inference mode.
    with torch.inference_mode(False):
        for start in range(0, len(block_ids), per_batch):
            blocks = block_ids[start : start + per_batch].to(device=device, dtype=torch.long)
            rows = blocks.repeat_interleave(samples, dim=0)  # (B * S, T)
            context = sample_continuations(
                teacher, rows, tokens=tokens, temperature=settings.temperature, generator=generator
            )
            with torch.no_grad():
                full = horizon_log_probs(teacher, context, block_size=block_size)
            best, _, _ = fit_vectors(
                teacher, context, full, init[start : start + per_batch], block_size=block_size,
                lr=settings.lr, max_steps=settings.steps, repeats=samples, sink=sink,
                should_cancel=should_cancel, cancelled="cancelled while refining gists",
            )  # fmt: skip
            refined.append(best.cpu())
    return torch.cat(refined)
