"""The gist engine: token blocks in, gist vectors out (teacher, then GistNet).

It knows nothing of HTTP or batching queues; the service wraps it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gistnet.checkpoint import load_checkpoint
from gistnet.devices import resolve_device
from gistnet.teacher import block_hidden_states, load_teacher, load_tokenizer


class GistEncoder:
    def __init__(self, *, model, teacher, tokenizer, info: dict, device: torch.device):
        self.model = model
        self.teacher = teacher
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.block_size = int(info["block_size"])
        self.dim = int(info["hidden_size"])
        self.vocab_size = int(teacher.get_input_embeddings().weight.shape[0])

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: str | torch.device = "cpu"
    ) -> GistEncoder:
        device = device if isinstance(device, torch.device) else resolve_device(device)
        model, info = load_checkpoint(path, device=device)
        teacher = load_teacher(
            info["teacher"]["model"], dtype=info["teacher"]["dtype"], device=device
        )
        tokenizer = load_tokenizer(info["tokenizer"])
        return cls(model=model, teacher=teacher, tokenizer=tokenizer, info=info, device=device)

    def tokenize(self, text: str, *, max_tokens: int | None = None) -> list[int]:
        """The text's token ids (no special tokens); at most `max_tokens` of them."""
        if max_tokens is None:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(
            text, add_special_tokens=False, truncation=True, max_length=max_tokens
        )["input_ids"]

    @property
    def longest_token(self) -> int:
        """Characters of the longest token in the vocabulary: no token of a text spans more
        (for byte-level BPE a token's spelling has one character per byte it stands for)."""
        if not hasattr(self, "_longest_token"):
            self._longest_token = max(len(t) for t in self.tokenizer.get_vocab())
        return self._longest_token

    @torch.inference_mode()
    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, T) token ids -> (N, D) float32 gists on the CPU."""
        if input_ids.dim() != 2 or input_ids.shape[1] != self.block_size:
            raise ValueError(
                f"expected (N, {self.block_size}) token ids, got {tuple(input_ids.shape)}"
            )
        states = block_hidden_states(self.teacher, input_ids.to(self.device))  # (N, T, D)
        return self.model(states).float().cpu()  # (N, T, D) -> (N, D)
