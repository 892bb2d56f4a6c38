"""Floating-point operations of the hot paths, counted from the models' shapes.

One multiply-add is 2 FLOPs. A teacher's forward over `tokens` positions of one sequence,
with the LM head applied to the last `logits` of them, costs

    2 x (the decoder layers' matrix parameters) x tokens          the projections and MLPs
    + 4 x layers x width x tokens (tokens + 1) / 2                causal attention: q.k and p.v
    + 2 x width x vocabulary x logits                             the LM head

Norms, rotary positions, the softmax and the embedding lookup are left out (well under 1%
of these shapes). The teacher is frozen, so a backward pass through it computes the
gradient of its inputs only, never of its weights: one product per weight matrix (as
many FLOPs as the forward's) and four per attention product pair where the forward had
two. The shapes are `gistnet.memory.TeacherShape`'s, read from a Hugging Face config;
`torch.utils.flop_counter.FlopCounterMode` agrees with these counts on a tiny Llama
(tests/tools/test_bench_speed.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from gistnet.config import GistNetConfig
from gistnet.memory import TeacherShape


@dataclass(frozen=True)
class Flops:
    """A count in two parts: products with weight matrices (the LM head's included), and
    attention's products of activations with activations."""

    matrices: int
    attention: int = 0

    @property
    def total(self) -> int:
        return self.matrices + self.attention

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.matrices + other.matrices, self.attention + other.attention)

    def __mul__(self, factor: int) -> Flops:
        return Flops(self.matrices * factor, self.attention * factor)

    __rmul__ = __mul__


def matmul_flops(n: int) -> int:
    """An (n, n) by (n, n) product."""
    return 2 * n**3


def layer_matrix_parameters(shape: TeacherShape) -> int:
    """The weights of the decoder layers, every one of which each token is multiplied by:
    the shape's parameters without its tables (embeddings, learned positions, the head)."""
    tables = shape.vocab * shape.width * (2 if shape.untied_head else 1)
    return shape.parameters - tables - shape.positions * shape.width


def attention_pairs(tokens: int, *, causal: bool = True) -> int:
    """(query, key) pairs a sequence's attention computes: a triangle when causal, the
    square where a kernel (transformers' eager attention) multiplies the masked pairs too."""
    return tokens * (tokens + 1) // 2 if causal else tokens * tokens


def forward_parts(shape: TeacherShape, tokens: int, logits: int, *, causal: bool = True) -> Flops:
    """The forward of one sequence of `tokens` with the LM head on its last `logits`."""
    matrices = 2 * layer_matrix_parameters(shape) * tokens + 2 * shape.width * shape.vocab * logits
    attention = 4 * shape.layers * shape.width * attention_pairs(tokens, causal=causal)
    return Flops(matrices, attention)


def forward_flops(shape: TeacherShape, tokens: int, logits: int) -> int:
    return forward_parts(shape, tokens, logits).total


def input_backward_parts(
    shape: TeacherShape, tokens: int, logits: int, *, causal: bool = True
) -> Flops:
    """The backward of that forward to its inputs alone (frozen weights): each weight
    product once more (the input's gradient), each attention product twice (both of its
    operands are activations)."""
    forward = forward_parts(shape, tokens, logits, causal=causal)
    return Flops(forward.matrices, 2 * forward.attention)


def gistnet_parts(config: GistNetConfig) -> Flops:
    """GistNet's forward on one block of T = block_size tokens (`gistnet.model.GistNet`):
    the input projections, the blocks and the pool's keys and values per token, attention
    over the block (not causal) and the pool's queries over it, then per gist the pool's
    projection and the gist MLP."""
    d, t = config.hidden_size, config.block_size
    mlp = int(config.mlp_ratio * d)
    per_token = d * d * (int(config.token_embeddings) + len(config.teacher_layers))
    per_token += config.num_layers * (4 * d * d + 2 * d * mlp) + 2 * d * d  # blocks, pool kv
    per_gist = config.pool_queries * d * d + (2 * d * mlp if config.gist_mlp else 0)
    matrices = 2 * per_token * t + 2 * per_gist * config.gists_per_block
    queries = config.gists_per_block * config.pool_queries
    attention = 4 * d * t * (config.num_layers * t + queries)
    return Flops(matrices, attention)


def gist_side_tokens(horizon_tokens: int, config: GistNetConfig) -> int:
    """Positions the teacher reads on the gist side (`gistnet.substitution`): BOS where the
    gists are read after it, the k gists, then the horizon but for its last token."""
    return int(config.bos_sink) + config.gists_per_block + horizon_tokens - 1


def substitution_step(
    shape: TeacherShape,
    config: GistNetConfig,
    *,
    horizon: int,
    batch: int,
    reconstruct: bool = False,
) -> dict[str, int]:
    """One training step of the substitution objective on `batch` windows of `horizon`
    tokens (a block of T, then L = horizon - T): the full side's forward without gradient
    (H - 1 tokens, L logits), the gist side's forward and its backward to the gists, and
    GistNet's forward and backward (about 3 forwards: input and weight gradients). With
    `reconstruct` (training.reconstruct_weight > 0) a second gist side: the block read
    after its gist, T logits."""
    length = horizon - config.block_size
    full = forward_parts(shape, horizon - 1, length)

    def gist_side(scored: int) -> int:
        tokens = gist_side_tokens(scored, config)
        parts = forward_parts(shape, tokens, scored) + input_backward_parts(shape, tokens, scored)
        return parts.total

    gistnet = 3 * gistnet_parts(config)
    parts = {"full": full.total, "gist_side": gist_side(length), "gistnet": gistnet.total}
    if reconstruct:
        parts["reconstruct"] = gist_side(config.block_size)
    parts = {name: batch * value for name, value in parts.items()}
    return {**parts, "total": sum(parts.values())}


def evaluation_flops(
    shape: TeacherShape, config: GistNetConfig, *, horizon: int, conditions: int
) -> int:
    """`gistnet.eval.conditions.evaluate_conditions` on one example: the full condition,
    `drop` (its one vector alone) and `conditions` more vector conditions (mean, gist,
    swapped, ...) read as the gists are, after BOS with `bos_sink`."""
    length = horizon - config.block_size
    full = forward_flops(shape, horizon - 1, length)
    drop = forward_flops(shape, 1 + length - 1, length)
    vector = forward_flops(shape, gist_side_tokens(length, config), length)
    return full + drop + conditions * vector


def gist_flops(shape: TeacherShape, config: GistNetConfig) -> int:
    """One block through `/gist`: the teacher's base model over the block (no LM head),
    then GistNet."""
    return forward_flops(shape, config.block_size, 0) + gistnet_parts(config).total


def block_states_flops(shape: TeacherShape, block_size: int) -> int:
    """One example of cached preparation: the block through the teacher's base model."""
    return forward_flops(shape, block_size, 0)
