"""The horizon loss of a gist, fused and taken a chunk of rows at a time.

The substitution objective compares the teacher's next-token distributions over the
horizon with and without the block: per horizon token the KL(full || gist) and the gist's
NLL of the true token. Written as `log_softmax(logits.float())`, `kl_div(reduction="none")`
and a gather, autograd keeps a float32 copy of the gist logits, their log-softmax and the
element-wise KL, each (B, L, V), and makes as many again in the backward pass: with a
49k vocabulary that is 50 MB apiece at batch 8 x 32, with the 128k-256k vocabularies of
today's teachers several times more. Here the rows (B x L of them) go through in chunks of
a bounded number of bytes: the forward pass keeps only the logits it was given (in their
own dtype), the full side's log-probabilities and one logsumexp per row; the backward pass
recomputes each chunk's softmax and writes the logits' gradient in the logits' dtype.

The weights of each token's KL and NLL in the loss (the rest weight, the NLL weight, the
mean over B x L) are the gradients that reach the two per-token outputs, so whatever the
caller makes of them the backward pass is

    grad_logits = g_kl * (q * sum(p_full) - p_full) + g_nll * (q - onehot(target))

with q the gist's softmax (sum(p_full) is 1 up to rounding; it is kept so the gradient is
the one autograd gives the unfused formula).
"""

from __future__ import annotations

import torch

__all__ = ["CHUNK_BYTES", "horizon_kl_nll", "log_softmax_owned"]

# The float32 bytes of the logits of one chunk of rows: each temporary of the loss is about
# this big (a few at once), whatever the batch, the horizon and the vocabulary.
CHUNK_BYTES = 16 * 2**20


def chunk_rows(vocab: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows of `vocab` float32 logits that fit in `chunk_bytes`, at least one."""
    return max(1, chunk_bytes // (4 * vocab))


def _chunks(rows: int, size: int):
    for start in range(0, rows, size):
        yield slice(start, min(rows, start + size))


def _log_softmax_rows_(rows: torch.Tensor) -> torch.Tensor:
    """Float32 rows (n, V) made their log-softmax in place, by log_softmax's own steps
    (subtract the row's max, then the log of the sum of the exponentials), so the values
    are F.log_softmax's; returns each row's logsumexp (n,)."""
    top = rows.amax(dim=-1, keepdim=True)
    rows.sub_(top)
    log_sum = rows.exp().sum(dim=-1, keepdim=True).log_()
    rows.sub_(log_sum)
    return (top + log_sum).squeeze(-1)


def _kl_nll_forward(logits, full, targets, size):
    """Per row of (N, V): the KL(full || gist), the NLL of the target and the logsumexp."""
    rows = logits.shape[0]
    kl, nll, lse = (torch.empty(rows, dtype=torch.float32, device=logits.device) for _ in range(3))
    for part in _chunks(rows, size):
        log_q = logits[part].to(torch.float32, copy=True)  # never the caller's own rows
        lse[part] = _log_softmax_rows_(log_q)  # now the gist's log-probabilities
        p_log = full[part]
        # as F.kl_div(log_q, p_log, log_target=True) sums it: exp(p_log) * (p_log - log_q)
        kl[part] = (p_log.exp() * (p_log - log_q)).sum(-1)
        nll[part] = -log_q.gather(-1, targets[part, None]).squeeze(-1)
    return kl, nll, lse


def _kl_nll_backward(logits, full, targets, lse, grad_kl, grad_nll, size):
    """The logits' gradient (N, V) in their dtype, one chunk's softmax at a time."""
    grad = torch.empty_like(logits)
    for part in _chunks(logits.shape[0], size):
        q = (logits[part].float() - lse[part, None]).exp_()
        p = full[part].exp()
        chunk = grad_kl[part, None] * (q * p.sum(-1, keepdim=True) - p)
        chunk += grad_nll[part, None] * q
        chunk.scatter_add_(-1, targets[part, None], -grad_nll[part, None])
        grad[part] = chunk
    return grad


class _HorizonKLNLL(torch.autograd.Function):
    """(N, V) gist logits, (N, V) float32 full log-probabilities, (N,) targets -> the
    per-row KL and NLL (N,) float32; the gradient flows to the logits alone."""

    @staticmethod
    def forward(ctx, logits, full, targets, size):
        kl, nll, lse = _kl_nll_forward(logits, full, targets, size)
        ctx.save_for_backward(logits, full, targets, lse)
        ctx.size = size
        return kl, nll

    @staticmethod
    def backward(ctx, grad_kl, grad_nll):
        logits, full, targets, lse = ctx.saved_tensors
        grad = _kl_nll_backward(
            logits, full, targets, lse, grad_kl.float(), grad_nll.float(), ctx.size
        )
        return grad, None, None, None


def horizon_kl_nll(
    logits: torch.Tensor,
    full: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_bytes: int = CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(full || gist) and the gist's NLL of `targets`, each (B, L) float32 in nats.

    `logits` (B, L, V) are the teacher's on the gist side, in its dtype (float32, bfloat16
    or float16), with gradient; `full` (B, L, V) the full side's float32 log-probabilities,
    without; `targets` (B, L) the horizon's token ids. The same numbers as
    `F.kl_div(log_softmax(logits.float()), full, log_target=True).sum(-1)` and the gathered
    NLL, computed `chunk_bytes` of float32 logits at a time (see the module's docstring).
    """
    batch, length, vocab = logits.shape
    if full.shape != logits.shape or targets.shape != (batch, length):
        raise ValueError(
            f"logits {tuple(logits.shape)}, full log-probabilities {tuple(full.shape)} and "
            f"targets {tuple(targets.shape)} must be (B, L, V), (B, L, V) and (B, L)"
        )
    # (B, L, V) -> (B*L, V): a view of the teacher's logits where they are contiguous (its
    # own output with logits_to_keep), else one copy in their own dtype
    rows = logits.reshape(batch * length, vocab)
    kl, nll = _HorizonKLNLL.apply(
        rows,
        full.reshape(batch * length, vocab).float(),
        targets.reshape(batch * length).to(device=logits.device, dtype=torch.long),
        chunk_rows(vocab, chunk_bytes),
    )
    return kl.view(batch, length), nll.view(batch, length)


def log_softmax_owned(logits: torch.Tensor, *, chunk_bytes: int = CHUNK_BYTES) -> torch.Tensor:
    """Float32 log-probabilities of `logits` (..., V), without gradient, written over the
    logits where they are float32 already: the caller hands over a tensor nobody else
    reads (a no-gradient forward's output), so the full side holds one (B, L, V) float32
    tensor instead of the logits and their log-softmax both. Half-precision logits are
    copied to float32 once, and that copy is overwritten. A chunk of rows at a time, so
    the temporaries stay `chunk_bytes` small."""
    if logits.requires_grad:
        raise ValueError("log_softmax_owned overwrites its input: give it logits without gradient")
    owned = logits.float().contiguous()
    rows = owned.view(-1, owned.shape[-1])
    for part in _chunks(rows.shape[0], chunk_rows(owned.shape[-1], chunk_bytes)):
        _log_softmax_rows_(rows[part])
    return owned
