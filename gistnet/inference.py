"""The gist engine: token blocks in, gist vectors out (teacher, then GistNet).

It knows nothing of HTTP or batching queues; the service wraps it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gistnet.bounds import ModelBounds
from gistnet.devices import resolve_device
from gistnet.errors import ConfigError
from gistnet.loading import load_gistnet
from gistnet.refine import RefineSettings, refine_gists
from gistnet.substitution import drop_token_id, drop_vector
from gistnet.teacher import gistnet_inputs


class GistEncoder:
    def __init__(self, *, model, teacher, tokenizer, info: dict, device: torch.device):
        self.model = model
        self.teacher = teacher
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.block_size = int(info["block_size"])
        self.dim = int(info["hidden_size"])
        # Vectors per block; encode gives (N, k, D) when k > 1 and (N, D) when k = 1.
        self.gists_per_block = int(model.config.gists_per_block)
        # A model trained with bos_sink is read after the teacher's BOS embedding (its
        # token id here): whoever substitutes the gists puts that token before them.
        self.bos_sink = bool(model.config.bos_sink)
        self.sink_token_id = drop_token_id(tokenizer, teacher) if self.bos_sink else None
        self.vocab_size = int(teacher.get_input_embeddings().weight.shape[0])

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        teacher_model: str | None = None,
        tokenizer: str | None = None,
        bounds: ModelBounds | None = None,
        teacher_dtype: str | None = None,
    ) -> GistEncoder:
        """The engine for a checkpoint; `teacher_model` / `tokenizer` stand in for what a
        checkpoint trained on a dataset without metadata does not name (or override it).
        `bounds`: the largest model the checkpoint may ask for (load_checkpoint);
        `teacher_dtype`: the teacher's dtype, else the one its states were trained from."""
        device = device if isinstance(device, torch.device) else resolve_device(device)

        def missing_teacher() -> ConfigError:
            return ConfigError(
                f"checkpoint {str(path)!r} does not name its teacher (it was trained on a "
                f"dataset whose metadata did not): train it again with --teacher and "
                f"--tokenizer (train_gistnet(teacher_model=..., tokenizer=...)), or pass "
                f"teacher_model= and tokenizer= to GistEncoder.from_checkpoint"
            )

        # Token ids need no tokenizer; text does, and `tokenize` says how to give one.
        loaded = load_gistnet(
            path,
            device=device,
            teacher_model=teacher_model,
            tokenizer=tokenizer,
            teacher_dtype=teacher_dtype,
            missing_teacher=missing_teacher,
            remedy="name the teacher it was trained for",
            bounds=bounds,
        )
        info = loaded.info
        info = {**info, "teacher": {**info["teacher"], "model": loaded.teacher_name}}
        return cls(
            model=loaded.model,
            teacher=loaded.teacher,
            tokenizer=loaded.tokenizer,
            info={**info, "tokenizer": loaded.tokenizer_name},
            device=device,
        )

    def tokenize(self, text: str, *, max_tokens: int | None = None) -> list[int]:
        """The text's token ids (no special tokens); at most `max_tokens` of them."""
        tokenizer = self._tokenizer_or_error()
        if max_tokens is None:
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        return tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_tokens)[
            "input_ids"
        ]

    @property
    def longest_token(self) -> int:
        """Characters of the longest token in the vocabulary: no token of a text spans more
        (for byte-level BPE a token's spelling has one character per byte it stands for)."""
        if not hasattr(self, "_longest_token"):
            vocab = self._tokenizer_or_error().get_vocab()
            self._longest_token = max(len(t) for t in vocab)
        return self._longest_token

    def _tokenizer_or_error(self):
        if self.tokenizer is None:
            raise ConfigError(
                "this checkpoint does not name its tokenizer, so text cannot be cut into "
                "tokens: send token ids, train again with --tokenizer, or pass tokenizer= to "
                "GistEncoder.from_checkpoint"
            )
        return self.tokenizer

    @property
    def position_limit(self) -> int | None:
        """Positions the teacher reads (its max_position_embeddings, or GPT-2's n_positions):
        a context, compressed or not, keeps its text's positions, so its text and what
        follows must fit in them. None for a teacher whose config does not say."""
        config = self.teacher.config
        for attribute in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(config, attribute, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @property
    def eos_token_id(self) -> int | None:
        """The token that ends a text, where the tokenizer or the teacher names one."""
        for source in (self.tokenizer, self.teacher.config):
            token_id = getattr(source, "eos_token_id", None)
            if isinstance(token_id, list | tuple):
                token_id = token_id[0] if token_id else None
            if token_id is not None:
                return int(token_id)
        return None

    @property
    def context_sink(self) -> tuple[int, torch.Tensor | None]:
        """Where a context's text begins, and the vector read before it: a model trained
        with bos_sink has its gists read after the teacher's BOS embedding, so its contexts
        begin at position 1 after that embedding at 0; any other begins at 0, alone."""
        if not self.bos_sink:
            return 0, None
        return 1, drop_vector(self.teacher, self.sink_token_id).to(self.device)

    @property
    def refine_tokens(self) -> int:
        """How long the continuations a refinement samples are by default: the horizon the
        model was trained to predict (what its evaluation scores), else one block (a model
        trained on a one-block horizon, or whose checkpoint does not say)."""
        horizon = int((self.info.get("dataset") or {}).get("horizon") or 0)
        return horizon - self.block_size if horizon > self.block_size else self.block_size

    def encode(
        self, input_ids: torch.Tensor, *, refine: RefineSettings | None = None
    ) -> torch.Tensor:
        """(N, T) token ids -> (N, D) float32 gists on the CPU, or (N, k, D) for a model
        with gists_per_block k > 1 (vector j of a block stands at its position T-k+j).
        With `refine`, each gist is then refined from its block (`gistnet.refine`): about
        samples x steps teacher passes per block more."""
        if input_ids.dim() != 2 or input_ids.shape[1] != self.block_size:
            raise ValueError(
                f"expected (N, {self.block_size}) token ids, got {tuple(input_ids.shape)}"
            )
        gists = self._amortized(input_ids)
        if refine is None:
            return gists
        sink = None
        if self.bos_sink:
            sink = drop_vector(self.teacher, self.sink_token_id).to(self.device)
        return refine_gists(
            self.teacher, input_ids, gists, settings=refine, tokens=self.refine_tokens, sink=sink
        )

    @torch.inference_mode()
    def _amortized(self, input_ids: torch.Tensor) -> torch.Tensor:
        # The block's states (N, T, D) and whatever else this model reads
        inputs = gistnet_inputs(self.teacher, input_ids.to(self.device), self.model.config)
        return self.model(**inputs).float().cpu()  # -> (N, [k,] D)
