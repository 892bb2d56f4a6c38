"""GistNet: a small transformer that reads a block's teacher states and pools them into
one vector in the teacher's hidden space.

(B, N, T, D) teacher states [+ the block's token embeddings] [+ states of more teacher
layers, each normed and projected] -> pre-norm blocks with
rotary positions inside each block -> k x m learned queries attend over the block, each
gist one linear map of its m reads [-> a residual MLP per gist] -> (B, N, D) gists (k = 1)
or (B, N, k, D) (k = gists_per_block > 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gistnet.config import GistNetConfig
from gistnet.errors import ConfigError


def rotary_tables(length: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, hd); rotate pairs (first half, second half) by position-dependent angles
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, config: GistNetConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x, cos, sin, mask):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        # (B, T, D) -> (B, H, T, hd)
        q, k, v = (z.view(b, t, self.num_heads, -1).transpose(1, 2) for z in (q, k, v))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, config: GistNetConfig):
        super().__init__()
        width = int(config.mlp_ratio * config.hidden_size)
        self.up = nn.Linear(config.hidden_size, width)
        self.down = nn.Linear(width, config.hidden_size)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, config: GistNetConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class AttentionPool(nn.Module):
    """Learned queries attend over the block's tokens: (B, T, D) -> (B, k, D).

    Each of the k gists has `pool_queries` = m queries per head; a gist is one linear map of
    what its m queries read (their concatenation, m x D wide), so with m > 1 one vector can
    hold several parts of the block that a single softmax would average together.
    """

    def __init__(self, config: GistNetConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.slots = config.gists_per_block
        self.per_slot = config.pool_queries
        queries = self.slots * self.per_slot
        query = torch.zeros(config.num_heads, queries, config.head_dim)
        if queries > 1:
            # Distinct queries from the start, so they need not first break symmetry.
            nn.init.normal_(query, std=0.02)
        self.query = nn.Parameter(query)
        self.kv = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.proj = nn.Linear(self.per_slot * config.hidden_size, config.hidden_size)

    def forward(self, x, mask):
        b, t, d = x.shape
        k, v = self.kv(x).split(d, dim=-1)
        k, v = (z.view(b, t, self.num_heads, -1).transpose(1, 2) for z in (k, v))  # (B, H, T, hd)
        q = self.query.unsqueeze(0).expand(b, -1, -1, -1)  # (B, H, k*m, hd)
        pooled = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, k*m, hd)
        # (B, H, k*m, hd) -> (B, k*m, D) -> (B, k, m*D): a gist's m reads side by side
        read = pooled.transpose(1, 2).reshape(b, self.slots, self.per_slot * d)
        return self.proj(read)  # (B, k, D)


class GistMLP(nn.Module):
    """A pre-norm residual MLP applied to each gist on its own: (..., D) -> (..., D)."""

    def __init__(self, config: GistNetConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, g):
        return g + self.mlp(self.norm(g))


class GistNet(nn.Module):
    def __init__(self, config: GistNetConfig):
        super().__init__()
        if config.hidden_size is None or config.block_size is None:
            raise ConfigError(
                "GistNet needs hidden_size and block_size; a run config may omit them because "
                "gistnet.train.model_config_for fills them in from the dataset"
            )
        self.config = config
        # The token embeddings enter the residual stream through their own projection.
        self.embed_in = (
            nn.Linear(config.hidden_size, config.hidden_size) if config.token_embeddings else None
        )
        # So does each further teacher layer, after a norm: residual-stream states of a
        # teacher's lower layers can be far larger than its normed last-layer ones.
        self.layers_in = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(config.hidden_size, eps=config.norm_eps),
                nn.Linear(config.hidden_size, config.hidden_size),
            )
            for _ in config.teacher_layers
        )
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.pool = AttentionPool(config)
        self.gist_mlp = GistMLP(config) if config.gist_mlp else None
        cos, sin = rotary_tables(config.block_size, config.head_dim, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                # residual branches start small so a deep stack begins close to identity
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.num_layers))

    def optimizer(self, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
        """AdamW that decays the matrices only (as nanoGPT's configure_optimizers does):
        shrinking a norm's gain, a bias or the pooling query towards zero is no
        regularisation, it only moves their scale."""
        matrices = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        decayed = [p for p in self.parameters() if id(p) in matrices]
        others = [p for p in self.parameters() if id(p) not in matrices]
        groups = [
            {"params": decayed, "weight_decay": weight_decay},
            {"params": others, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr)

    def save_pretrained(self, folder, *, info: dict | None = None):
        """This model as a Hugging Face style folder (gistnet.pretrained); `info` is what a
        checkpoint records beside the weights (teacher, tokenizer, dataset, training)."""
        from gistnet.pretrained import save_pretrained

        info = {**(info or {}), "model_config": self.config.to_dict()}
        return save_pretrained(folder, state_dict=self.state_dict(), info=info)

    @classmethod
    def from_pretrained(cls, folder, *, device: str | torch.device = "cpu") -> GistNet:
        """The model of a folder `save_pretrained` (or `gistnet export`, or a download from
        the service) wrote, in eval mode; `load_checkpoint` gives its info too."""
        from gistnet.bounds import ModelBounds
        from gistnet.pretrained import read_pretrained

        payload = read_pretrained(folder)
        # The folder says how large a model to build, not what a trusted run made.
        ModelBounds.from_environment().check(payload["model_config"], where="model_config")
        model = cls(GistNetConfig(**payload["model_config"]))
        model.load_state_dict(payload["state_dict"])
        return model.to(device).eval()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
        layer_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, N, T, D) [+ mask (B, N, T), 1 = real token] -> (B, N, D); (B, T, D) -> (B, D).

        With gists_per_block k > 1 every block gives k vectors: (B, N, k, D), or (B, k, D)
        for (B, T, D) states. `embeddings`, shaped as `hidden`, are the block's input token
        embeddings; a model built with token_embeddings needs them, others refuse them.
        `layer_states` (B, N, T, m, D) or (B, T, m, D) are the block's states of the m
        teacher layers `teacher_layers` names, in that order; needed exactly when it names some.
        (`gistnet.teacher.gistnet_inputs` gives all three for a batch of blocks.)
        """
        cfg = self.config
        if (layer_states is not None) != bool(cfg.teacher_layers):
            raise ConfigError(
                f"this GistNet reads the states of teacher layers {list(cfg.teacher_layers)} "
                "beside the last: pass layer_states= (see gistnet.teacher.gistnet_inputs)"
                if cfg.teacher_layers
                else "this GistNet was built without teacher_layers; do not pass layer_states="
            )
        if (embeddings is not None) != cfg.token_embeddings:
            raise ConfigError(
                "this GistNet reads the block's token embeddings beside its states: pass "
                "embeddings= (the teacher's input embeddings of the block's tokens)"
                if cfg.token_embeddings
                else "this GistNet was built without token_embeddings; do not pass embeddings="
            )
        single = hidden.dim() == 3
        if single:
            hidden = hidden.unsqueeze(1)
            mask = mask.unsqueeze(1) if mask is not None else None
            embeddings = embeddings.unsqueeze(1) if embeddings is not None else None
            layer_states = layer_states.unsqueeze(1) if layer_states is not None else None
        if hidden.dim() != 4:
            raise ValueError(
                f"expected (B, N, T, D) or (B, T, D) states, got {tuple(hidden.shape)}"
            )
        b, n, t, d = hidden.shape
        if d != cfg.hidden_size:
            raise ConfigError(
                f"states have width {d} but this GistNet was built for hidden_size {cfg.hidden_size}"
            )
        if t > cfg.block_size:
            raise ConfigError(
                f"blocks have {t} tokens but this GistNet takes at most {cfg.block_size}"
            )
        x = hidden.reshape(b * n, t, d)  # (B, N, T, D) -> (B*N, T, D)
        if embeddings is not None:
            if embeddings.shape != hidden.shape:
                raise ConfigError(
                    f"embeddings have shape {tuple(embeddings.shape)} but the states "
                    f"{tuple(hidden.shape)}: give one input embedding per block token"
                )
            x = x + self.embed_in(embeddings.reshape(b * n, t, d).to(x.dtype))
        if layer_states is not None:
            expected = (b, n, t, len(self.layers_in), d)
            if tuple(layer_states.shape) != expected:
                raise ConfigError(
                    f"layer_states have shape {tuple(layer_states.shape)} but {expected} is "
                    f"expected: the block's states of teacher layers {list(cfg.teacher_layers)}"
                )
            layers = layer_states.reshape(b * n, t, len(self.layers_in), d).to(x.dtype)
            for j, project in enumerate(self.layers_in):
                x = x + project(layers[:, :, j])
        key_mask = None
        if mask is not None:
            key_mask = mask.reshape(b * n, 1, 1, t).bool()  # broadcast over heads and queries
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        for block in self.blocks:
            x = block(x, cos, sin, key_mask)
        gists = self.pool(self.norm(x), key_mask)  # (B*N, T, D) -> (B*N, k, D)
        if self.gist_mlp is not None:
            gists = self.gist_mlp(gists)
        gists = gists.view(b, n, cfg.gists_per_block, d)
        if cfg.gists_per_block == 1:
            gists = gists[:, :, 0]  # one vector per block keeps the (B, N, D) shape
        return gists[:, 0] if single else gists
