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

`MultiBlockObjective` is `training.objective: multiblock`: a dataset's window
(`context_input_ids`, H tokens from a block's start) read as `training.blocks` blocks and
the H - n·T tokens after them as the horizon, the oldest j blocks' gists made by GistNet.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gistnet.config import GistNetConfig, TrainingConfig
from gistnet.context import CompressedSpan, RawTokens, context_inputs, teacher_forward
from gistnet.errors import ConfigError
from gistnet.substitution import drop_token_id, drop_vector
from gistnet.teacher import gistnet_inputs


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


def check_window_fits(*, blocks: int, block_size: int, horizon: int) -> None:
    """A ConfigError unless a dataset's windows of `horizon` tokens hold `blocks` blocks
    and at least one horizon token after them."""
    if horizon > blocks * block_size:
        return
    most = (horizon - 1) // block_size
    fewer = f", or set training.blocks to at most {most}" if most >= 1 else ""
    raise ConfigError(
        f"objective multiblock with training.blocks {blocks} reads {blocks} blocks of "
        f"{block_size} tokens ({blocks * block_size}) and then a horizon, but the dataset's "
        f"windows are {horizon} tokens (its horizon): prepare it with horizon >= "
        f"{(blocks + 1) * block_size}{fewer}"
    )


def compressed_blocks_at(cfg: TrainingConfig, step: int) -> int:
    """The oldest blocks read as gists in the windows of training step `step`."""
    if cfg.compressed_blocks is not None:
        return cfg.compressed_blocks
    # A stream of its own ([seed, step, 1]; the batches draw from [seed, epoch]), a function
    # of the seed and the step alone: a resumed run and every DDP rank agree on it.
    return int(np.random.default_rng([cfg.seed, step, 1]).integers(1, cfg.blocks + 1))


class MultiBlockObjective:
    """The loss of a batch of windows (B, H) for GistNet: `MultiBlockLoss` with the gists
    of each window's oldest j blocks.

    GistNet reads each of those blocks alone, as it reads the block of a single-block
    example: the teacher's states of the block run by itself (`gistnet_inputs`), so a gist
    is what the gist engine would make of that block wherever it stood. A training step
    compresses the j of `compressed_blocks_at`; a validation batch (no step) compresses
    1 + (row mod blocks) blocks of each row, unless `compressed_blocks` fixes j: every
    number alike and the same rows the same way at each evaluation, so val_loss compares.
    """

    def __init__(self, teacher: torch.nn.Module, cfg: TrainingConfig, model_config: GistNetConfig):
        self.cfg = cfg
        self.model_config = model_config
        # A GistNet trained with bos_sink is read after the teacher's BOS, as everywhere.
        sink = drop_vector(teacher, drop_token_id(None, teacher)) if model_config.bos_sink else None
        self.loss = MultiBlockLoss(
            teacher, block_size=model_config.block_size, blocks=cfg.blocks, sink=sink
        )

    def gists(self, model: torch.nn.Module, windows: torch.Tensor, compressed: int) -> torch.Tensor:
        """GistNet's gists (B, j, k, D) of the windows' oldest `compressed` blocks."""
        batch, block_size = windows.shape[0], self.model_config.block_size
        blocks = windows[:, : compressed * block_size].reshape(batch * compressed, block_size)
        inputs = gistnet_inputs(self.loss.teacher, blocks, self.model_config)  # (B*j, T, D)
        gists = model(**inputs)  # (B*j, D) or (B*j, k, D)
        return gists.reshape(batch, compressed, -1, gists.shape[-1])  # -> (B, j, k, D)

    def __call__(
        self,
        model: torch.nn.Module,
        windows: torch.Tensor,
        *,
        rows: np.ndarray,
        step: int | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(the loss, its parts) for `windows` (B, H), the dataset's `rows`."""
        if step is not None:
            compressed = compressed_blocks_at(self.cfg, step)
            return self.loss(self.gists(model, windows, compressed), windows)
        fixed = self.cfg.compressed_blocks
        counts = np.full(len(rows), fixed) if fixed else 1 + np.asarray(rows) % self.cfg.blocks
        total, kl = windows.new_zeros((), dtype=torch.float32), 0.0
        for compressed in np.unique(counts):
            chosen = torch.from_numpy(np.flatnonzero(counts == compressed)).to(windows.device)
            part = windows[chosen]
            loss, stats = self.loss(self.gists(model, part, int(compressed)), part)
            total = total + loss * len(chosen)
            kl += stats["kl"] * len(chosen)
        stats = {"kl": kl / len(rows), "compressed_blocks": float(counts.mean())}
        return total / len(rows), stats
