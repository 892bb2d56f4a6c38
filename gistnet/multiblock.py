"""The multi-block objective: the teacher reading a window of many blocks whose oldest ones
are gists should predict the horizon after it as it does after the whole text.

A window is n blocks of T tokens and then L horizon tokens h. Its oldest j blocks
(1 <= j <= n) are read as their k gists each, the other n - j stay raw, all at their
text's positions (`gistnet.context`):

    full        b_0 ... b_{n-1}                    h_0 ... h_{L-1}
    compressed  g(b_0) ... g(b_{j-1}) b_j ... b_{n-1}  h_0 ... h_{L-1}

The loss is KL(full || compressed) over h's next-token distributions, in nats per horizon
token, float32; the `full` side without gradient, the compressed side back-propagating
through the frozen teacher into the gists. With j = n = 1 it is the single-block
substitution KL (`gistnet.substitution.SubstitutionLoss` without its NLL term and weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gistnet.context import CompressedSpan, RawTokens, context_inputs, teacher_forward
from gistnet.errors import ConfigError


class MultiBlockLoss:
    """KL(full || compressed) of the horizon after a window of `blocks` blocks."""

    def __init__(
        self,
        teacher: torch.nn.Module,
        *,
        block_size: int,
        blocks: int,
        sink: torch.Tensor | None = None,
    ):
        if blocks < 1:
            raise ConfigError(f"blocks must be at least 1; got {blocks}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.block_size = block_size
        self.blocks = blocks
        # The teacher's BOS embedding for a GistNet trained with bos_sink, read before
        # the gists as the evaluation reads them.
        self.sink = sink

    def horizon_tokens(self, window_ids: torch.Tensor) -> int:
        horizon = window_ids.shape[1] - self.blocks * self.block_size
        if window_ids.dim() != 2 or horizon < 1:
            raise ConfigError(
                f"a window of {self.blocks} blocks of {self.block_size} needs more than "
                f"{self.blocks * self.block_size} tokens (blocks, then the horizon); got shape "
                f"{tuple(window_ids.shape)}"
            )
        return horizon

    def full_log_probs(self, window_ids: torch.Tensor) -> torch.Tensor:
        """The horizon's log-probabilities (B, L, V) after the whole text, without gradient."""
        horizon = self.horizon_tokens(window_ids)
        with torch.no_grad():
            inputs = context_inputs(self.teacher, [[RawTokens(window_ids[:, :-1])]])
            logits = teacher_forward(self.teacher, inputs).logits[:, -horizon:]
        return F.log_softmax(logits.float(), dim=-1)

    def compressed_log_probs(self, gists: torch.Tensor, window_ids: torch.Tensor) -> torch.Tensor:
        """The horizon's log-probabilities (B, L, V) with the oldest j blocks read as
        `gists` (B, j, k, D): under whatever grad mode the caller chose."""
        horizon = self.horizon_tokens(window_ids)
        compressed = gists.shape[1]
        if not 1 <= compressed <= self.blocks:
            raise ConfigError(
                f"gists for {compressed} blocks: compress 1 to {self.blocks} of the window's blocks"
            )
        parts = [
            CompressedSpan(gists, block_size=self.block_size),
            RawTokens(window_ids[:, compressed * self.block_size : -1]),
        ]
        inputs = context_inputs(self.teacher, [parts], sink=self.sink)
        logits = teacher_forward(self.teacher, inputs).logits[:, -horizon:]
        return F.log_softmax(logits.float(), dim=-1)

    def __call__(
        self,
        gists: torch.Tensor,
        window_ids: torch.Tensor,
        *,
        full: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss for `gists` (B, j, k, D) of the window's oldest j blocks; `full` is
        `full_log_probs(window_ids)` where the caller has it."""
        if self.teacher.training:
            self.teacher.eval()
        if full is None:
            full = self.full_log_probs(window_ids)
        compressed = self.compressed_log_probs(gists, window_ids)
        # sum_v p_full (log p_full - log p_compressed), averaged over the B x L tokens
        kl = F.kl_div(compressed, full, reduction="none", log_target=True).sum(-1).mean()
        return kl, {"kl": kl.item(), "compressed_blocks": float(gists.shape[1])}
