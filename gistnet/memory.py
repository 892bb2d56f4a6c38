"""How much memory a training run takes, estimated from its configs before it starts.

An estimate, on the generous side: float32 weights, their gradients and AdamW's two
moments; the activations autograd keeps for the backward pass of every layer; the batch
itself; and for the substitution and multiblock objectives the frozen teacher with its
own activations and logits over the horizon. A run that would not fit can be refused with
the numbers, instead of dying in the allocator minutes later (or taking the machine down
with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gistnet.config import GistNetConfig

FLOAT = 4  # bytes: float32 everywhere the trainer computes gradients


def gistnet_parameters(config: GistNetConfig) -> int:
    """Exactly the parameters `GistNet(config)` has, without building it."""
    d, width = config.hidden_size, int(config.mlp_ratio * config.hidden_size)
    norm = 2 * d
    attention = (d * 3 * d + 3 * d) + (d * d + d)
    mlp = (d * width + width) + (width * d + d)
    block = 2 * norm + attention + mlp
    queries = config.gists_per_block * config.pool_queries
    pool = queries * d + (d * 2 * d + 2 * d) + (config.pool_queries * d * d + d)  # query, kv, proj
    extra = d * d + d if config.token_embeddings else 0  # embed_in
    extra += len(config.teacher_layers) * (norm + d * d + d)  # layers_in
    if config.gist_mlp:
        extra += norm + mlp
    return config.num_layers * block + norm + pool + extra


# Families whose MLP is gated (a gate, an up and a down matrix).
GATED_MLP_FAMILIES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"}
)
# Families with a learned position table instead of rotary positions.
LEARNED_POSITIONS = frozenset({"gpt2", "opt", "gpt_neo"})


@dataclass(frozen=True)
class TeacherShape:
    """What the memory of a teacher depends on, read from its Hugging Face config."""

    layers: int
    width: int
    vocab: int
    mlp_width: int
    # Keys and values are this wide (narrower than `width` with grouped-query attention).
    kv_width: int = 0
    # Gated MLPs (Llama's SwiGLU and its kin) hold three matrices, others two.
    gated_mlp: bool = False
    # An LM head of its own, not the input embeddings read back.
    untied_head: bool = False
    # Learned positions (GPT-2, OPT): a table of this many rows.
    positions: int = 0

    @classmethod
    def from_hf_config(cls, config: Any) -> TeacherShape | None:
        def first(*names):
            return next((getattr(config, n) for n in names if getattr(config, n, None)), None)

        layers = first("n_layer", "num_hidden_layers")
        width = first("n_embd", "hidden_size")
        vocab = first("vocab_size")
        if not (layers and width and vocab):
            return None
        mlp_width = first("n_inner", "intermediate_size", "ffn_dim") or 4 * width
        heads = first("n_head", "num_attention_heads") or 1
        head_dim = first("head_dim") or width // heads
        kv_heads = first("num_key_value_heads") or heads
        model_type = getattr(config, "model_type", "")
        return cls(
            int(layers),
            int(width),
            int(vocab),
            int(mlp_width),
            kv_width=int(kv_heads * head_dim),
            gated_mlp=model_type in GATED_MLP_FAMILIES,
            untied_head=not getattr(config, "tie_word_embeddings", True),
            positions=int(first("n_positions", "max_position_embeddings") or 0)
            if model_type in LEARNED_POSITIONS
            else 0,
        )

    @property
    def parameters(self) -> int:
        """The matrices and tables, counted from the shapes (norms and biases left out:
        well under 1% of a teacher)."""
        kv_width = self.kv_width or self.width
        attention = 2 * self.width * self.width + 2 * self.width * kv_width
        mlp = (3 if self.gated_mlp else 2) * self.width * self.mlp_width
        tables = self.vocab * self.width * (2 if self.untied_head else 1)
        return tables + self.positions * self.width + self.layers * (attention + mlp)


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    # Weights, gradients and AdamW's two moments.
    model_bytes: int
    activations_bytes: int
    batch_bytes: int
    # The substitution objective's teacher: weights, activations and logits.
    teacher_bytes: int = 0

    @property
    def total(self) -> int:
        return self.model_bytes + self.activations_bytes + self.batch_bytes + self.teacher_bytes

    def describe(self) -> str:
        parts = [
            f"{self.parameters:,} parameters with gradients and optimizer state "
            f"{format_bytes(self.model_bytes)}",
            f"activations {format_bytes(self.activations_bytes)}",
            f"batch {format_bytes(self.batch_bytes)}",
        ]
        if self.teacher_bytes:
            parts.append(f"teacher {format_bytes(self.teacher_bytes)}")
        return f"about {format_bytes(self.total)} ({', '.join(parts)})"


def training_memory(
    config: GistNetConfig,
    *,
    batch_size: int,
    objective: str = "mse",
    horizon: int | None = None,
    teacher: TeacherShape | None = None,
    blocks: int = 1,
    teacher_bytes_per_value: int = FLOAT,
    activation_checkpointing: bool = False,
    reconstruct: bool = False,
) -> MemoryEstimate:
    """The peak memory of one training step of GistNet `config` on `batch_size` examples
    of `blocks` blocks GistNet reads each (the multiblock objective's windows, at most);
    the teacher's weights and activations `teacher_bytes_per_value` each (its
    `training.teacher_dtype`), only each layer's input kept with `activation_checkpointing`;
    `reconstruct` (training.reconstruct_weight > 0) adds the gist side's second forward,
    over the block after its gist."""
    d, t, heads = config.hidden_size, config.block_size, config.num_heads
    width = int(config.mlp_ratio * d)
    parameters = gistnet_parameters(config)
    # Kept for backward per token and layer: norms, q/k/v and their rotated copies, the
    # attention output and projection (about 18 widths), the MLP's up, GELU and down inputs
    # (3 MLP widths), and the attention weights of the unfused kernel (heads x T).
    per_token_layer = 18 * d + 3 * width + heads * t
    # Each further teacher layer read (teacher_layers) keeps its norm's input and output.
    inputs = 8 * d + 2 * d * len(config.teacher_layers)
    rows = batch_size * blocks
    activations = FLOAT * rows * t * (config.num_layers * per_token_layer + inputs)
    # The block states (a host copy and a device copy), those of further teacher layers,
    # the targets and the indices.
    layers = len(config.teacher_layers)
    batch = FLOAT * rows * (2 * t * d + layers * t * d + d) + 16 * batch_size
    teacher_bytes = 0
    if objective in ("substitution", "multiblock") and teacher is not None and horizon:
        tokens = batch_size * horizon
        layer = 18 * teacher.width + 3 * teacher.mlp_width
        # Checkpointed, the layers keep their inputs and one layer's activations live again
        # at a time in the backward pass.
        kept = teacher.layers * (teacher.width if activation_checkpointing else layer)
        kept += layer if activation_checkpointing else 0
        # substitution: the full side's float32 log-probabilities, the gist side's logits
        # and their gradient in the teacher's dtype (gistnet.horizon_loss keeps no float32
        # copy); multiblock: logits and their float32 log-softmax on both sides.
        fused = objective == "substitution"
        logits = (FLOAT + 2 * teacher_bytes_per_value if fused else 4 * FLOAT) * teacher.vocab
        teacher_bytes = teacher_bytes_per_value * (teacher.parameters + tokens * kept)
        teacher_bytes += tokens * logits
        if reconstruct and fused:
            # [BOS] gist and the block's first T - 1 tokens, kept for the same backward; the
            # logits, their float32 copy for the cross-entropy and its gradient.
            again = batch_size * (t + 1)
            teacher_bytes += teacher_bytes_per_value * again * kept
            teacher_bytes += again * (2 * FLOAT + 2 * teacher_bytes_per_value) * teacher.vocab
    return MemoryEstimate(
        parameters=parameters,
        model_bytes=4 * FLOAT * parameters,
        activations_bytes=activations,
        batch_bytes=batch,
        teacher_bytes=teacher_bytes,
    )


def format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
