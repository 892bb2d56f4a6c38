"""A vector in place of a block: how the frozen teacher reads a gist, and the loss that
trains GistNet so the teacher predicts what follows the block as if it had read the block.

An example is `context_input_ids` (B, H): the block b (its first T = block_size tokens),
then the L = H - T horizon tokens h. Every condition scores the same L tokens of h:

    full     b_0 ... b_{T-1}      h_0 ... h_{L-1}     positions 0 ... H-1
    vector   v                    h_0 ... h_{L-1}     positions T-1, T ... H-1
    k vectors v_1 ... v_k          h_0 ... h_{L-1}     positions T-k ... T-1, T ... H-1

    after BOS   BOS v_1 ... v_k      h_0 ... h_{L-1}     positions T-k-1 ... T-1, T ... H-1

The vectors sit at the block's last k positions (k = 1 unless GistNet emits several per
block), so h keeps its position ids and only the content before it differs. In every row
the input at position T-1 predicts h_0, the one at T-1+i predicts h_i. With a `sink` (a
GistNet trained with `bos_sink`) the teacher's BOS embedding comes first, as it would at
the start of any sequence the gists are read in: the teacher's attention heads park on
that first position, so the vectors need not act as the sink themselves. This module is
where the evaluation (`gistnet.eval`) and the training objective get those inputs; it lays
them out with `gistnet.context`, whose one-block case they are.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from gistnet.context import (
    CompressedSpan,
    RawTokens,
    context_inputs,
    takes_logits_to_keep,
    teacher_forward,
)
from gistnet.errors import ConfigError
from gistnet.horizon_loss import CHUNK_BYTES, horizon_kl_nll, log_softmax_owned

__all__ = [
    "SubstitutionLoss",
    "drop_token_id",
    "drop_vector",
    "full_log_probs_and_block_states",
    "horizon_log_probs",
    "horizon_logits",
    "horizon_nll",
    "horizon_targets",
    "mean_block_embedding",
    "substituted_inputs",
]


# The horizon tokens a report calls the "first 8" (the rest of the sentence the block broke
# off); the report's "rest" and `rest_weight` are the tokens after them.
EARLY_TOKENS = 8


def _horizon_length(context_input_ids: torch.Tensor, block_size: int) -> int:
    if context_input_ids.dim() != 2:
        raise ConfigError(
            f"context_input_ids must be (batch, horizon); got shape {tuple(context_input_ids.shape)}"
        )
    horizon_tokens = context_input_ids.shape[1] - block_size
    if horizon_tokens < 1:
        raise ConfigError(
            f"context of {context_input_ids.shape[1]} tokens leaves no horizon after a block of "
            f"{block_size}: prepare the dataset with horizon > block_size (e.g. 2 x block_size)"
        )
    return horizon_tokens


def _embedding_weight(teacher: torch.nn.Module) -> torch.Tensor:
    return teacher.get_input_embeddings().weight


def horizon_targets(context_input_ids: torch.Tensor, *, block_size: int) -> torch.Tensor:
    """The tokens every condition predicts: h = context[:, T:], (B, H) -> (B, L)."""
    _horizon_length(context_input_ids, block_size)
    return context_input_ids[:, block_size:]


def _as_slots(vectors: torch.Tensor, batch: int, width: int, block_size: int) -> torch.Tensor:
    """(B, D) or (B, k, D) vectors as (B, k, D), checked against the batch and the width."""
    slots = vectors[:, None, :] if vectors.dim() == 2 else vectors
    if slots.dim() != 3 or slots.shape[0] != batch or slots.shape[2] != width:
        raise ConfigError(
            f"vectors must be (batch={batch}, teacher hidden size={width}) or (batch={batch}, "
            f"k, {width}); got {tuple(vectors.shape)}"
        )
    if not 1 <= slots.shape[1] <= block_size:
        raise ConfigError(
            f"{slots.shape[1]} vectors per block cannot stand in for a block of {block_size} "
            f"tokens: use at most {block_size}"
        )
    return slots


def _single_block_context(
    context_input_ids: torch.Tensor, slots: torch.Tensor, block_size: int, horizon_end: int | None
) -> list[RawTokens | CompressedSpan]:
    """The block as one compressed block of k vectors (B, k, D), then h up to `horizon_end`."""
    return [
        CompressedSpan(slots[:, None], block_size=block_size),  # (B, k, D) -> (B, 1, k, D)
        RawTokens(context_input_ids[:, block_size:horizon_end]),
    ]


def substituted_inputs(
    teacher: torch.nn.Module,
    context_input_ids: torch.Tensor,
    *,
    block_size: int,
    vectors: torch.Tensor,
    sink: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's input with k vectors in place of the block.

    `vectors` is (B, D) (k = 1) or (B, k, D). Returns `inputs_embeds` (B, k + L, D) in the
    teacher's dtype, the vectors first and then the embeddings of h, and `position_ids`
    (B, k + L): T-k, ..., T-1, T, ..., H-1. A `sink` (D,) is read before the vectors, at
    T-k-1 (one more position). Gradients flow from `inputs_embeds` back into `vectors`.
    Built by `gistnet.context.context_inputs`, of which this is the one-block case.
    """
    _horizon_length(context_input_ids, block_size)
    batch = context_input_ids.shape[0]
    slots = _as_slots(vectors, batch, _embedding_weight(teacher).shape[1], block_size)
    context = _single_block_context(context_input_ids, slots, block_size, None)
    inputs = context_inputs(teacher, [context], sink=sink)
    return inputs.inputs_embeds, inputs.position_ids


def _full_forward(
    teacher: torch.nn.Module,
    context_input_ids: torch.Tensor,
    horizon_tokens: int,
    *,
    hidden_states: bool = False,
):
    """The teacher's output on the window (the `full` condition): the logits at positions
    T-1 ... H-2 predict h (only those are kept where the teacher can skip the rest); the
    window's last token predicts nothing and is not fed. With `hidden_states`, the output
    holds every layer's states too."""
    kwargs: dict[str, Any] = {"input_ids": context_input_ids[:, :-1], "use_cache": False}
    if hidden_states:
        kwargs["output_hidden_states"] = True
    if takes_logits_to_keep(teacher):
        kwargs["logits_to_keep"] = horizon_tokens
    return teacher(**kwargs)


def horizon_logits(
    teacher: torch.nn.Module,
    context_input_ids: torch.Tensor,
    *,
    block_size: int,
    vectors: torch.Tensor | None = None,
    sink: torch.Tensor | None = None,
) -> torch.Tensor:
    """The teacher's logits (B, L, V) for the horizon steps, in the teacher's dtype: what
    `horizon_log_probs` normalises. Only those positions' logits are computed where the
    teacher can skip the others."""
    horizon_tokens = _horizon_length(context_input_ids, block_size)
    if vectors is None:
        logits = _full_forward(teacher, context_input_ids, horizon_tokens).logits
    else:
        batch = context_input_ids.shape[0]
        slots = _as_slots(vectors, batch, _embedding_weight(teacher).shape[1], block_size)
        context = _single_block_context(context_input_ids, slots, block_size, -1)
        inputs = context_inputs(teacher, [context], sink=sink)
        logits = teacher_forward(teacher, inputs, logits_to_keep=horizon_tokens).logits
    # the last vector predicts h_0: (B, [1+] k + L - 1, V) -> (B, L, V)
    return logits[:, -horizon_tokens:]


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Float32 log-softmax of a forward's logits, over them where nothing needs their
    gradient (the forward's output is ours alone then: one (B, L, V) float32 tensor)."""
    if logits.requires_grad:
        return F.log_softmax(logits.float(), dim=-1)
    return log_softmax_owned(logits)


def horizon_log_probs(
    teacher: torch.nn.Module,
    context_input_ids: torch.Tensor,
    *,
    block_size: int,
    vectors: torch.Tensor | None = None,
    sink: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 log-probabilities (B, L, V) of the next token at each horizon step.

    Row i is the teacher's distribution for h_i. `vectors=None` is the `full` condition
    (the teacher reads b then h); a (B, D) or (B, k, D) tensor is substituted for the
    block, after `sink` where one is given (see `substituted_inputs`). The last
    horizon token is not fed: under causal attention it cannot change any prediction of h.
    Runs under whatever grad mode the caller chose.
    """
    logits = horizon_logits(
        teacher, context_input_ids, block_size=block_size, vectors=vectors, sink=sink
    )
    return _log_probs(logits)  # (B, L, V)


def full_log_probs_and_block_states(
    teacher: torch.nn.Module,
    context_input_ids: torch.Tensor,
    *,
    block_size: int,
    layers: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The `full` condition's log-probabilities (B, L, V), and from the same forward the
    block's last-layer states (B, T, D) float32 and, where `layers` names hidden states
    (`GistNetConfig.teacher_layers`), the block's states of those (B, T, m, D), else None.

    For a causal teacher the states at the window's first T positions do not depend on
    the tokens after them, so they are the states of the block read alone: what a dataset
    with cached states holds (`gistnet.teacher.block_hidden_states`). A token-only dataset
    thus gets its states without a second forward. The last-layer ones are taken from the
    output of the module the LM head reads (`gistnet.teacher.trunk_of`), as the cached
    ones are, by a hook for the length of this call.
    """
    from gistnet.teacher import select_layers, trunk_of

    horizon_tokens = _horizon_length(context_input_ids, block_size)
    captured: list[torch.Tensor] = []

    def keep_states(_module, _inputs, output) -> None:
        captured.append(output[0])  # last_hidden_state: (B, H - 1, D)

    handle = trunk_of(teacher).register_forward_hook(keep_states)
    try:
        out = _full_forward(teacher, context_input_ids, horizon_tokens, hidden_states=bool(layers))
    finally:
        handle.remove()
    log_probs = _log_probs(out.logits[:, -horizon_tokens:])
    layer_states = select_layers(out.hidden_states, layers, block_size) if layers else None
    return log_probs, captured[-1][:, :block_size].float(), layer_states


def horizon_nll(
    teacher: torch.nn.Module,
    context_input_ids: torch.Tensor,
    *,
    block_size: int,
    vectors: torch.Tensor | None = None,
    sink: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 NLL in nats (B, L) of each horizon token under a condition (see horizon_log_probs)."""
    log_probs = horizon_log_probs(
        teacher, context_input_ids, block_size=block_size, vectors=vectors, sink=sink
    )
    targets = horizon_targets(context_input_ids, block_size=block_size)
    return -log_probs.gather(-1, targets[..., None]).squeeze(-1)


def drop_token_id(tokenizer: Any = None, teacher: torch.nn.Module | None = None) -> int:
    """The token whose embedding stands for "no content": BOS, else EOS.

    Looks at the tokenizer first, then at the teacher's config.
    """
    for source in (tokenizer, getattr(teacher, "config", None)):
        if source is None:
            continue
        for attribute in ("bos_token_id", "eos_token_id"):
            token_id = getattr(source, attribute, None)
            if isinstance(token_id, list | tuple):
                token_id = token_id[0] if token_id else None
            if token_id is not None:
                return int(token_id)
    raise ConfigError(
        "the tokenizer and the teacher define neither a BOS nor an EOS token, so the `drop` "
        "condition has no content-free token: give the tokenizer a bos_token or eos_token"
    )


def drop_vector(teacher: torch.nn.Module, token_id: int) -> torch.Tensor:
    """The teacher's input embedding of `token_id`, (D,) float32: what its embedding module
    gives for the token, as the token-id path reads it (Gemma's scales its table's row by
    sqrt(hidden size), so the row alone would be another vector)."""
    embed = teacher.get_input_embeddings()
    token = torch.tensor([token_id], device=embed.weight.device)
    with torch.no_grad():
        return embed(token)[0].float()


def mean_block_embedding(teacher: torch.nn.Module, block_input_ids: torch.Tensor) -> torch.Tensor:
    """Mean of the block's input embeddings (the simple baseline), (B, T) -> (B, D) float32."""
    with torch.no_grad():
        return teacher.get_input_embeddings()(block_input_ids).float().mean(dim=1)


class SubstitutionLoss:
    """KL(full || gist) over the horizon's next-token distributions, plus optionally the
    gist condition's NLL of h.

    The teacher stays frozen and in eval mode (dropout would make the target noisy); the
    `full` distributions are computed without gradient, the `gist` ones with it, so the
    loss back-propagates through the teacher's forward pass into the gists only. Both are
    in nats per horizon token, computed in float32 whatever the teacher's dtype: the gist
    side by `gistnet.horizon_loss`, `chunk_bytes` of float32 logits at a time. With
    `activation_checkpointing` the teacher's layers on the gist side keep only their
    inputs and run again in the backward pass (`gistnet.teacher.checkpointed_layers`).
    """

    def __init__(
        self,
        teacher: torch.nn.Module,
        *,
        block_size: int,
        nll_weight: float = 0.0,
        bos_sink: bool = False,
        rest_weight: float = 1.0,
        reconstruct_weight: float = 0.0,
        early_tokens: int = EARLY_TOKENS,
        activation_checkpointing: bool = False,
        chunk_bytes: int = CHUNK_BYTES,
    ):
        if nll_weight < 0:
            raise ConfigError(f"nll_weight must be >= 0; got {nll_weight}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.block_size = block_size
        self.nll_weight = float(nll_weight)
        # The gists are read after the BOS embedding (GistNetConfig.bos_sink); only then is
        # a BOS (or EOS) needed: a teacher with neither trains without.
        self.sink = drop_vector(teacher, drop_token_id(None, teacher)) if bos_sink else None
        if rest_weight <= 0:
            raise ConfigError(f"rest_weight must be > 0; got {rest_weight}")
        # The KL at horizon tokens past the first `early_tokens` counts rest_weight times.
        self.rest_weight = float(rest_weight)
        if reconstruct_weight < 0:
            raise ConfigError(f"reconstruct_weight must be >= 0; got {reconstruct_weight}")
        self.reconstruct_weight = float(reconstruct_weight)
        self.early_tokens = int(early_tokens)
        self.activation_checkpointing = bool(activation_checkpointing)
        self.chunk_bytes = int(chunk_bytes)

    def full_and_states(
        self, context_input_ids: torch.Tensor, layers: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Without gradient: the `full` log-probabilities, the block's states and those of
        `layers`, one forward (see `full_log_probs_and_block_states`); pass the first back
        as `full=`."""
        if self.teacher.training:
            self.teacher.eval()
        with torch.no_grad():
            return full_log_probs_and_block_states(
                self.teacher, context_input_ids, block_size=self.block_size, layers=layers
            )

    def _gradient_side(self):
        """Where the gist side's forward runs: through checkpointed layers when asked and
        a backward pass will follow (a validation pass without gradient keeps nothing)."""
        if not (self.activation_checkpointing and torch.is_grad_enabled()):
            return nullcontext()
        from gistnet.teacher import checkpointed_layers

        return checkpointed_layers(self.teacher)

    def _objective(self, per_token: torch.Tensor) -> torch.Tensor:
        """The weighted mean of the per-token KL (B, L): each token's KL counts 1, those
        past `early_tokens` rest_weight, the weights scaled to mean 1."""
        if self.rest_weight == 1.0:
            return per_token.mean()
        rest = torch.ones(per_token.shape[1], device=per_token.device)
        rest[self.early_tokens :] = self.rest_weight
        rest = rest / rest.mean()  # mean 1: the loss stays in nats per token
        return (rest * per_token).mean()

    def __call__(
        self,
        gists: torch.Tensor,
        context_input_ids: torch.Tensor,
        *,
        full: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.teacher.training:
            self.teacher.eval()
        if full is None:
            with torch.no_grad():
                full = horizon_log_probs(
                    self.teacher, context_input_ids, block_size=self.block_size
                )
        with self._gradient_side():
            logits = horizon_logits(
                self.teacher,
                context_input_ids,
                block_size=self.block_size,
                vectors=gists,
                sink=self.sink,
            )
        targets = horizon_targets(context_input_ids, block_size=self.block_size)
        # sum_v p_full (log p_full - log p_gist) and -log p_gist(h_i), each (B, L)
        per_token, per_token_nll = horizon_kl_nll(
            logits, full, targets, chunk_bytes=self.chunk_bytes
        )
        kl, nll = per_token.mean(), per_token_nll.mean()
        objective = self._objective(per_token)
        loss = objective + self.nll_weight * nll if self.nll_weight else objective
        stats = {"kl": kl.item(), "nll": nll.item()}
        if self.reconstruct_weight:
            reconstruct = self.reconstruction_nll(gists, context_input_ids).mean()
            loss = loss + self.reconstruct_weight * reconstruct
            stats["reconstruct"] = reconstruct.item()
        return loss, stats

    def reconstruction_nll(self, gists: torch.Tensor, context_input_ids: torch.Tensor):
        """NLL (B, T) of the block's own tokens, the teacher reading them after the gist:
        the block itself as the horizon of an example [block, block]."""
        block = context_input_ids[:, : self.block_size]
        twice = torch.cat([block, block], dim=1)
        with self._gradient_side():
            logits = horizon_logits(
                self.teacher, twice, block_size=self.block_size, vectors=gists, sink=self.sink
            )
        return F.cross_entropy(logits.float().transpose(1, 2), block, reduction="none")
