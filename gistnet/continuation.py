"""What follows a context (`gistnet.context`): the teacher's log-probabilities of a given
continuation, and new tokens generated one at a time.

Both read the context as `context_inputs` lays it out, so a compressed span is read where
its text stood and the tokens after it keep their true positions. The attention mask is
always passed: without one (and without a cache) transformers takes position ids that
jump, as they do after each compressed block, for packed sequences, and would keep each
block from reading what came before it. Scoring is one teacher
pass over the context and the continuation (its last token predicts nothing and is not
fed). A generation prefills the context once, from `inputs_embeds`, into a key-value cache
(transformers' DynamicCache), then feeds each new token alone at the next position: the
context is never read again, however many tokens follow.

The service's POST /score and POST /generate run these; nothing here knows about HTTP.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gistnet.context import Context, RawTokens, context_inputs
from gistnet.errors import ConfigError

__all__ = ["Generation", "Sampling", "continuation_log_probs"]


def _forward_names(teacher: torch.nn.Module) -> tuple[str, bool]:
    """The keyword the teacher takes its key-value cache by (transformers 5 names it
    `cache`, 4 `past_key_values`), and whether it can skip logits it is not asked for."""
    parameters = inspect.signature(teacher.forward).parameters
    return ("cache" if "cache" in parameters else "past_key_values"), "logits_to_keep" in parameters


@torch.inference_mode()
def continuation_log_probs(
    teacher: torch.nn.Module,
    context: Context,
    continuation: torch.Tensor,
    *,
    start: int = 0,
    sink: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 log-probabilities (n,) of each token of `continuation` (n,) read after a
    one-row `context` (whose text begins at `start`, after `sink` where one is given)."""
    if continuation.dim() != 1 or len(continuation) == 0:
        raise ConfigError(
            f"a continuation is one non-empty row of token ids; got {tuple(continuation.shape)}"
        )
    n = len(continuation)
    fed = [*context, RawTokens(continuation[None, :-1])]
    inputs = context_inputs(teacher, [fed], starts=[start], sink=sink)
    if int(inputs.lengths[0]) < n:
        raise ConfigError("the context feeds no input: the continuation's first token needs one")
    _, keeps_logits = _forward_names(teacher)
    kwargs = {"logits_to_keep": n} if keeps_logits else {}
    logits = teacher(
        inputs_embeds=inputs.inputs_embeds,
        position_ids=inputs.position_ids,
        attention_mask=inputs.attention_mask,
        use_cache=False,
        **kwargs,
    ).logits[0, -n:]  # the context's last input predicts the first token: (n, V)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return log_probs.gather(1, continuation.to(log_probs.device)[:, None])[:, 0].cpu()


@dataclass(frozen=True)
class Sampling:
    """How a generation picks each token."""

    # 0 picks the most likely token (greedy, deterministic); above 0 divides the logits.
    temperature: float = 0.0
    # Sample only among the most likely tokens whose probabilities first reach top_p.
    top_p: float = 1.0
    # The seed of the generation's own random numbers: the same seed, the same tokens.
    seed: int = 0


def _choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """One token id from the (V,) logits of the next position."""
    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    probs = F.softmax(logits.float().cpu() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        ranked, order = torch.sort(probs, descending=True)
        # A token stays if the more likely ones before it have not reached top_p yet.
        outside = (torch.cumsum(ranked, dim=0) - ranked) >= sampling.top_p
        ranked[outside] = 0
        probs = torch.zeros_like(probs).scatter(0, order, ranked)
    return int(torch.multinomial(probs, 1, generator=generator))


class Generation:
    """New tokens after a one-row context, one per `step()`.

    The context is prefilled into a key-value cache when the generation is made; each
    step feeds the token chosen before it (the first feeds nothing) and chooses the next.
    """

    @torch.inference_mode()
    def __init__(
        self,
        teacher: torch.nn.Module,
        context: Context,
        *,
        sampling: Sampling = Sampling(),
        start: int = 0,
        sink: torch.Tensor | None = None,
    ):
        from transformers import DynamicCache

        inputs = context_inputs(teacher, [context], starts=[start], sink=sink)
        if int(inputs.lengths[0]) == 0:
            raise ConfigError("the context feeds no input: a generation needs one to follow")
        self.teacher, self.sampling = teacher, sampling
        self._cache_name, keeps_logits = _forward_names(teacher)
        self._keep = {"logits_to_keep": 1} if keeps_logits else {}
        self._device = inputs.inputs_embeds.device
        self.cache = DynamicCache(config=teacher.config)
        out = teacher(
            inputs_embeds=inputs.inputs_embeds,
            position_ids=inputs.position_ids,
            attention_mask=inputs.attention_mask,
            use_cache=True,
            **{self._cache_name: self.cache},
            **self._keep,
        )
        self._logits = out.logits[0, -1]  # (V,): what follows the context's last input
        # The next token stands right after the context's last input (a gist stands at
        # its block's last position, so the text after the block goes on from there).
        self.position = int(inputs.position_ids[0, -1]) + 1
        self.context_length = int(inputs.lengths[0])
        self._generator = torch.Generator().manual_seed(sampling.seed)
        self._chosen: int | None = None

    @torch.inference_mode()
    def step(self) -> int:
        """The next token: the one chosen before is fed at its position first."""
        if self._chosen is not None:
            out = self.teacher(
                input_ids=torch.tensor([[self._chosen]], device=self._device),
                position_ids=torch.tensor([[self.position]], device=self._device),
                use_cache=True,
                **{self._cache_name: self.cache},
                **self._keep,
            )
            self._logits = out.logits[0, -1]
            self.position += 1
        self._chosen = _choose(self._logits, self.sampling, self._generator)
        return self._chosen

    def cache_bytes(self) -> int:
        """Bytes the key-value cache holds now."""
        total = 0
        for layer in getattr(self.cache, "layers", []):
            for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
        return total
