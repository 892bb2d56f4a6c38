"""A compressed context: how the frozen teacher reads raw tokens and gists in one sequence.

A context is a sequence of parts, each covering a run of consecutive text positions:

    RawTokens(ids)                      n tokens, read as themselves
    CompressedSpan(gists, block_size)   m blocks of T tokens each, read as k gists per block

The teacher reads every part where its text stood. A raw token keeps its true position; a
compressed block's k gists sit at that block's last k positions (the block's other T - k
positions are not fed), so what follows the block reads them where a RoPE or an
absolute-position teacher expects the block to end:

    RawTokens(r_0 .. r_5)  CompressedSpan(2 blocks of 4, k=1)  RawTokens(h_0 h_1)
    r_0 ... r_5            g_0   g_1                           h_0  h_1
    positions 0 ... 5      9     13                            14   15

A `sink` (the teacher's BOS embedding, for a GistNet trained with `bos_sink`) is read
first, one position before the context's first input, as the teacher reads BOS at the
start of any sequence. The single-block substitution of `gistnet.substitution` is the
context [CompressedSpan(1 block), RawTokens(horizon)]; the long-document evaluation
(`gistnet.eval.long`) and the service's scoring build theirs from the same function,
`context_inputs`, the one place that lays gists and tokens out for the teacher.

A batch is a list of contexts, each holding B_i rows of one layout; rows of different
lengths are padded on the right, and `attention_mask` is 0 there. Under causal attention
right padding changes nothing the real positions compute.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gistnet.errors import ConfigError

__all__ = [
    "CompressedSpan",
    "ContextInputs",
    "RawTokens",
    "context_inputs",
    "context_positions",
    "takes_logits_to_keep",
    "teacher_forward",
]


@dataclass(frozen=True)
class RawTokens:
    """Token ids read as themselves: (B, n) long, n may be 0."""

    token_ids: torch.Tensor

    @property
    def positions(self) -> int:
        return self.token_ids.shape[1]


@dataclass(frozen=True)
class CompressedSpan:
    """m consecutive blocks of `block_size` tokens, each read as its k gists.

    `gists` is (B, m, k, D). The span covers m x block_size positions however many of them
    the gists fill.
    """

    gists: torch.Tensor
    block_size: int

    def __post_init__(self) -> None:
        if self.gists.dim() != 4:
            raise ConfigError(
                f"a compressed span's gists must be (batch, blocks, k, width); got shape "
                f"{tuple(self.gists.shape)}"
            )
        k = self.gists.shape[2]
        if not 1 <= k <= self.block_size:
            raise ConfigError(
                f"{k} vectors per block cannot stand in for a block of {self.block_size} "
                f"tokens: use at most {self.block_size}"
            )

    @property
    def positions(self) -> int:
        return self.gists.shape[1] * self.block_size


Part = RawTokens | CompressedSpan
Context = Sequence[Part]


@dataclass(frozen=True)
class ContextInputs:
    """What the teacher is fed for a batch of contexts.

    `inputs_embeds` (B, N, D) in the teacher's dtype, `position_ids` (B, N) long, and
    `attention_mask` (B, N) long, 1 at a real input and 0 at right padding; `lengths` (B,)
    the real inputs of each row. Gradients flow from `inputs_embeds` back into the gists.
    """

    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor


def _batch_of(context: Context) -> int:
    if not context:
        raise ConfigError("a context needs at least one part")
    rows = {
        (part.token_ids if isinstance(part, RawTokens) else part.gists).shape[0] for part in context
    }
    if len(rows) != 1:
        raise ConfigError(f"the parts of one context must have the same rows; got {sorted(rows)}")
    return rows.pop()


def context_positions(context: Context, *, start: int = 0) -> torch.Tensor:
    """The position of each input a context feeds, (N,) long, before any sink.

    A context's text begins at position `start`; a raw part's tokens take their positions
    one by one, a compressed block's gists its last k.
    """
    pieces = []
    at = start
    for part in context:
        if isinstance(part, RawTokens):
            pieces.append(torch.arange(at, at + part.positions))
        else:
            blocks, k = part.gists.shape[1], part.gists.shape[2]
            block_ends = at + part.block_size * torch.arange(1, blocks + 1)  # (m,)
            offsets = torch.arange(-k, 0)  # (k,)
            pieces.append((block_ends[:, None] + offsets[None, :]).reshape(-1))  # (m * k,)
        at += part.positions
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def _one_layout(
    teacher: torch.nn.Module, context: Context, start: int, sink: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, D) embeddings and (B, N) positions of rows that share one context layout."""
    embed = teacher.get_input_embeddings()
    weight = embed.weight
    batch = _batch_of(context)
    width = weight.shape[1]
    pieces = []
    for part in context:
        if isinstance(part, RawTokens):
            pieces.append(embed(part.token_ids.to(weight.device)))  # (B, n, D)
            continue
        if part.gists.shape[3] != width:
            raise ConfigError(
                f"gists of width {part.gists.shape[3]} cannot be read by a teacher of hidden "
                f"size {width}: use the GistNet trained for this teacher"
            )
        gists = part.gists.reshape(batch, -1, width)  # (B, m, k, D) -> (B, m * k, D)
        pieces.append(gists.to(dtype=weight.dtype, device=weight.device))
    positions = context_positions(context, start=start).to(weight.device)
    if sink is not None:
        if sink.shape != (width,):
            raise ConfigError(f"sink must be one vector of width {width}; got {tuple(sink.shape)}")
        first = int(positions[0]) if len(positions) else start
        if first < 1:
            raise ConfigError(
                f"the sink is read one position before the context's first input, which "
                f"stands at {first}: no positions are left before it (fewer vectors per "
                f"block, or a later start, leave room)"
            )
        pieces.insert(0, sink.to(dtype=weight.dtype, device=weight.device).expand(batch, 1, -1))
        positions = torch.cat([positions.new_tensor([first - 1]), positions])
    inputs_embeds = torch.cat(pieces, dim=1)  # (B, N, D)
    return inputs_embeds, positions[None, :].expand(batch, -1)


def context_inputs(
    teacher: torch.nn.Module,
    contexts: Sequence[Context],
    *,
    starts: Sequence[int] | None = None,
    sink: torch.Tensor | None = None,
) -> ContextInputs:
    """The teacher's input for a batch of contexts, their rows stacked in order.

    Each context holds B_i rows of one layout; its text begins at `starts[i]` (0 unless
    given). `sink` (D,) is read first in every row, one position before its first input.
    Rows shorter than the longest are padded on the right with zero embeddings at position
    0, masked out.
    """
    if not contexts:
        raise ConfigError("context_inputs needs at least one context")
    starts = [0] * len(contexts) if starts is None else list(starts)
    if len(starts) != len(contexts):
        raise ConfigError(f"{len(starts)} starts for {len(contexts)} contexts")
    if any(start < 0 for start in starts):
        raise ConfigError(f"a context starts at position 0 or later; got starts {starts}")
    layouts = [
        _one_layout(teacher, context, start, sink)
        for context, start in zip(contexts, starts, strict=True)
    ]
    longest = max(embeds.shape[1] for embeds, _ in layouts)
    embeds_rows, position_rows, mask_rows, lengths = [], [], [], []
    for embeds, positions in layouts:
        batch, length, width = embeds.shape
        pad = longest - length
        mask = torch.ones(batch, longest, dtype=torch.long, device=embeds.device)
        if pad:
            embeds = torch.cat([embeds, embeds.new_zeros(batch, pad, width)], dim=1)
            positions = torch.cat([positions, positions.new_zeros(batch, pad)], dim=1)
            mask[:, length:] = 0
        embeds_rows.append(embeds)
        position_rows.append(positions)
        mask_rows.append(mask)
        lengths.append(torch.full((batch,), length, dtype=torch.long, device=embeds.device))
    return ContextInputs(
        inputs_embeds=torch.cat(embeds_rows),
        position_ids=torch.cat(position_rows),
        attention_mask=torch.cat(mask_rows),
        lengths=torch.cat(lengths),
    )


def takes_logits_to_keep(teacher: torch.nn.Module) -> bool:
    """Whether the teacher's forward can compute the logits of its last positions only."""
    return "logits_to_keep" in inspect.signature(teacher.forward).parameters


def teacher_forward(teacher: torch.nn.Module, inputs: ContextInputs, *, logits_to_keep: int = 0):
    """The teacher's output on `inputs`, without a KV cache.

    The mask is always passed, padded or not: without one, Hugging Face models read a
    jump in `position_ids` as the start of another sequence packed into the row and stop
    attention across it, and the positions a compressed block leaves out are such jumps.
    `logits_to_keep` > 0 asks for the logits of the last that many positions only (one
    (B, n, V) tensor instead of (B, N, V)), where the teacher can skip the rest; the
    caller still slices, for a teacher that cannot.
    """
    kwargs = {}
    if logits_to_keep and takes_logits_to_keep(teacher):
        kwargs["logits_to_keep"] = logits_to_keep
    return teacher(
        inputs_embeds=inputs.inputs_embeds,
        position_ids=inputs.position_ids,
        attention_mask=inputs.attention_mask,
        use_cache=False,
        **kwargs,
    )
