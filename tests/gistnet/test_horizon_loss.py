"""The fused horizon loss (gistnet.horizon_loss): the numbers and gradients of the unfused
log_softmax + kl_div + gather, whatever the chunk, and without keeping a float32 copy of
the gist logits for the backward pass; and the substitution loss built on it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import transformers

from gistnet.horizon_loss import horizon_kl_nll, log_softmax_owned
from gistnet.substitution import (
    SubstitutionLoss,
    horizon_log_probs,
    horizon_logits,
    horizon_targets,
)

B, L, V = 3, 5, 257  # B x L = 15 rows


def _reference(logits, full, targets):
    """The unfused formula the substitution loss was written as."""
    gist = F.log_softmax(logits.float(), dim=-1)
    kl = F.kl_div(gist, full, reduction="none", log_target=True).sum(-1)
    nll = -gist.gather(-1, targets[..., None]).squeeze(-1)
    return kl, nll


def _inputs(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, L, V, generator=generator)).to(dtype).requires_grad_()
    full = F.log_softmax(3 * torch.randn(B, L, V, generator=generator), dim=-1)
    targets = torch.randint(0, V, (B, L), generator=generator)
    # weights of each token's KL and NLL in a loss, as the rest weight and nll_weight make
    weights = torch.rand(2, B, L, generator=generator)
    return logits, full, targets, weights


def _value_and_grad(loss_fn, logits, full, targets, weights):
    kl, nll = loss_fn(logits, full, targets)
    ((weights[0] * kl).sum() + (weights[1] * nll).sum()).backward()
    grad, logits.grad = logits.grad, None
    return kl.detach(), nll.detach(), grad


# rows a chunk: 1, 4 and 7 do not divide the 15 rows, 15 is all of them at once
@pytest.mark.parametrize("rows", [1, 4, 7, 15, 100])
@pytest.mark.parametrize(
    "dtype, tolerance",
    # bfloat16: the values from the same upcast logits (float32 rounding); the gradient
    # written in bfloat16 as autograd writes the unfused one, so within one bfloat16 step
    [(torch.float32, 1e-5), (torch.bfloat16, 2**-8)],
)
def test_values_and_gradients_are_the_unfused_formulas(rows, dtype, tolerance):
    logits, full, targets, weights = _inputs(dtype)
    kl, nll, grad = _value_and_grad(
        lambda *a: horizon_kl_nll(*a, chunk_bytes=rows * 4 * V), logits, full, targets, weights
    )
    want_kl, want_nll, want_grad = _value_and_grad(_reference, logits, full, targets, weights)
    assert kl.dtype == nll.dtype == torch.float32 and kl.shape == nll.shape == (B, L)
    assert grad.dtype == dtype  # the logits' gradient comes back in their own dtype
    torch.testing.assert_close(kl, want_kl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nll, want_nll, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad.float(), want_grad.float(), atol=tolerance, rtol=tolerance)


def _saved_during(loss_fn, logits, full, targets) -> list[torch.Tensor]:
    """Every tensor autograd keeps for the backward pass of `loss_fn`'s graph."""
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        kl, nll = loss_fn(logits, full, targets)
        (kl.sum() + nll.sum()).backward()
    return saved


def _float32_copies(saved, *given) -> list[torch.Tensor]:
    """The saved float32 tensors of the logits' size (B x L x V) that are none of `given`
    (the first given is the full side's log-probabilities)."""
    given_storage = {tensor.untyped_storage().data_ptr() for tensor in given}
    return [
        t
        for t in saved
        if t.dtype == torch.float32
        and t.numel() == given[0].numel()
        and t.untyped_storage().data_ptr() not in given_storage
    ]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_no_float32_copy_of_the_logits_is_kept_for_the_backward_pass(dtype):
    logits, full, targets, _ = _inputs(dtype)
    fused = _saved_during(horizon_kl_nll, logits, full, targets)
    # what it keeps: the logits it was given (in their dtype) and the full log-probs
    assert not _float32_copies(fused, full, logits)
    assert {t.untyped_storage().data_ptr() for t in fused if t.numel() == B * L * V} == {
        logits.untyped_storage().data_ptr(),
        full.untyped_storage().data_ptr(),
    }
    # the unfused formula keeps the gist's float32 log-softmax: the check can tell
    assert _float32_copies(_saved_during(_reference, logits, full, targets), full, logits)


def test_the_full_side_is_normalised_over_its_own_float32_logits():
    logits = 5 * torch.randn(B, L, V)
    want = F.log_softmax(logits, dim=-1)
    log_probs = log_softmax_owned(logits, chunk_bytes=4 * 4 * V)  # 4 rows a chunk
    assert log_probs.data_ptr() == logits.data_ptr()  # one (B, L, V) float32 tensor, not two
    torch.testing.assert_close(log_probs, want, atol=1e-5, rtol=1e-5)
    half = (5 * torch.randn(B, L, V)).bfloat16()
    torch.testing.assert_close(log_softmax_owned(half), F.log_softmax(half.float(), dim=-1))
    with pytest.raises(ValueError, match="without gradient"):
        log_softmax_owned(torch.randn(2, V, requires_grad=True))


BLOCK = 8


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval().requires_grad_(False)


def _reference_substitution_loss(teacher, gists, context, *, rest_weight, nll_weight):
    """The substitution loss as it was written before the fused loss: the same numbers."""
    horizon = context.shape[1] - BLOCK
    with torch.no_grad():
        logits = teacher(input_ids=context[:, :-1]).logits[:, -horizon:]
        full = F.log_softmax(logits.float(), dim=-1)
    gist = horizon_log_probs(teacher, context, block_size=BLOCK, vectors=gists)
    per_token = F.kl_div(gist, full, reduction="none", log_target=True).sum(-1)
    nll = -gist.gather(-1, horizon_targets(context, block_size=BLOCK)[..., None]).mean()
    rest = torch.ones(horizon)
    rest[8:] = rest_weight
    return (rest / rest.mean() * per_token).mean() + nll_weight * nll


def test_the_substitution_loss_and_gist_gradient_are_unchanged(llama):
    context = torch.randint(3, V, (4, 3 * BLOCK), generator=torch.Generator().manual_seed(2))
    gists = torch.randn(4, 2, 32, requires_grad=True)  # two gists a block
    loss_fn = SubstitutionLoss(
        llama, block_size=BLOCK, rest_weight=2.5, nll_weight=0.3, chunk_bytes=3 * 4 * V
    )  # 3 rows a chunk of the 4 x 16
    loss, _ = loss_fn(gists, context)
    (grad,) = torch.autograd.grad(loss, gists)
    want = _reference_substitution_loss(llama, gists, context, rest_weight=2.5, nll_weight=0.3)
    (want_grad,) = torch.autograd.grad(want, gists)
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, want_grad, atol=1e-5, rtol=1e-4)
    assert grad.abs().sum() > 0


def test_a_bfloat16_teacher_keeps_no_float32_logits_for_the_backward_pass(llama):
    teacher = copy.deepcopy(llama).to(torch.bfloat16)
    context = torch.randint(3, V, (4, 3 * BLOCK), generator=torch.Generator().manual_seed(3))
    gists = torch.randn(4, 32, requires_grad=True)
    loss_fn = SubstitutionLoss(teacher, block_size=BLOCK, nll_weight=0.3)
    with torch.no_grad():
        full = horizon_log_probs(teacher, context, block_size=BLOCK)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = loss_fn(gists, context, full=full)
        loss.backward()
    assert torch.isfinite(loss) and gists.grad.abs().sum() > 0
    assert full.dtype == torch.float32 and not _float32_copies(saved, full)


def test_a_loaded_teachers_head_reads_the_horizon_as_one_matrix_product(llama, tmp_path):
    """load_teacher makes the LM head's input contiguous: the horizon's logits, sliced by
    logits_to_keep from a gist forward that needs a gradient, then take one matrix product,
    not a batched one over B copies of the (V, D) head, with the same logits as before."""
    from torch.profiler import ProfilerActivity, profile

    from gistnet.teacher import load_teacher

    llama.save_pretrained(tmp_path / "llama")
    loaded = load_teacher(str(tmp_path / "llama"))
    context = torch.randint(3, V, (4, 3 * BLOCK), generator=torch.Generator().manual_seed(4))
    # two gists a block: 17 positions, of which the horizon's 16 are a strided slice
    gists = torch.randn(4, 2, 32, requires_grad=True)

    def forward_and_backward(teacher):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            logits = horizon_logits(teacher, context, block_size=BLOCK, vectors=gists)
            (grad,) = torch.autograd.grad(logits.float().square().sum(), gists)
        return logits, grad, {event.key for event in prof.key_averages()}

    logits, grad, ops = forward_and_backward(loaded)
    want_logits, want_grad, plain_ops = forward_and_backward(llama)
    assert "aten::bmm" in plain_ops  # what the strided slice costs a teacher as built
    assert "aten::bmm" not in ops
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, want_grad, atol=1e-4, rtol=1e-4)
