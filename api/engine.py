"""The gist engines: one model's teacher and GistNet, loaded once and kept.

Nothing here knows about HTTP or the batching queue: an engine turns an (N, T) array of
token ids into (N, D) gists ((N, k, D) for a model with k gists per block), scores a
continuation or starts a generation after a context of `ContextPart`s (gistnet.context,
gistnet.continuation), and the cache hands out engines by model id.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gistnet.bounds import ModelBounds


@dataclass(frozen=True)
class ContextPart:
    """A run of a context's text: its token ids (n,), of which the first `gists` blocks
    (m, k, D) stand for as many full blocks, read as those gists; the rest is read raw.
    A part without gists is read raw."""

    tokens: np.ndarray
    gists: np.ndarray | None = None

    @property
    def blocks(self) -> int:
        return 0 if self.gists is None else len(self.gists)

    def fed(self, block_size: int) -> int:
        """Inputs the teacher reads for it: k per block, one per raw token."""
        if self.gists is None:
            return len(self.tokens)
        return (
            self.gists.shape[0] * self.gists.shape[1] + len(self.tokens) - self.blocks * block_size
        )


class GistEngine:
    def __init__(
        self,
        *,
        model_id: int,
        checkpoint: Path,
        device: str,
        max_batch: int,
        bounds: ModelBounds | None = None,
    ):
        import torch

        from gistnet.inference import GistEncoder

        self.model_id = model_id
        # When the database last said the model exists (time.monotonic()).
        self.checked_at = time.monotonic()
        self.max_batch = max_batch
        self._torch = torch
        self._encoder = GistEncoder.from_checkpoint(checkpoint, device=device, bounds=bounds)
        self.block_size = self._encoder.block_size
        self.dim = self._encoder.dim
        self.gists_per_block = self._encoder.gists_per_block
        self.bos_sink = self._encoder.bos_sink
        self.sink_token_id = self._encoder.sink_token_id
        self.vocab_size = self._encoder.vocab_size
        self.position_limit = self._encoder.position_limit
        self.eos_token_id = self._encoder.eos_token_id
        # Where a context's text begins (1 after the sink of a bos_sink model, else 0).
        self.context_start, self._sink = self._encoder.context_sink

    @property
    def longest_token(self) -> int:
        """Characters of the tokenizer's longest token; a ConfigError without a tokenizer."""
        return self._encoder.longest_token

    def tokenize(self, text: str, *, max_tokens: int | None = None) -> list[int]:
        return list(self._encoder.tokenize(text, max_tokens=max_tokens))

    def decode_blocks(self, blocks: np.ndarray) -> list[str] | None:
        """(N, T) ids -> the text of each block, as the tokenizer writes it back (None for a
        checkpoint that names no tokenizer)."""
        if self._encoder.tokenizer is None:
            return None
        return self._encoder.tokenizer.batch_decode(blocks.tolist())

    def decode(self, ids: list[int]) -> str | None:
        """Token ids as text (None for a checkpoint that names no tokenizer)."""
        if self._encoder.tokenizer is None:
            return None
        return self._encoder.tokenizer.decode(ids)

    def _context(self, parts: list[ContextPart]) -> list:
        """The library's context (one row) for `parts`: each part's blocks as a compressed
        span, then its raw tokens."""
        from gistnet.context import CompressedSpan, RawTokens

        torch, context = self._torch, []
        for part in parts:
            if part.gists is not None:
                gists = torch.from_numpy(part.gists).reshape(1, part.blocks, -1, self.dim)
                context.append(CompressedSpan(gists, self.block_size))  # (1, m, k, D)
            raw = part.tokens[part.blocks * self.block_size :]
            if len(raw):
                context.append(RawTokens(torch.from_numpy(raw)[None, :]))  # (1, n)
        return context

    def score(self, parts: list[ContextPart], continuation: np.ndarray) -> np.ndarray:
        """(n,) float32 log-probabilities of the continuation's tokens after the context."""
        from gistnet.continuation import continuation_log_probs

        return continuation_log_probs(
            self._encoder.teacher,
            self._context(parts),
            self._torch.from_numpy(continuation),
            start=self.context_start,
            sink=self._sink,
        ).numpy()

    def generation(self, parts: list[ContextPart], sampling):
        """A gistnet.continuation.Generation after the context, its prefill done:
        `step()` gives each next token. `sampling`: a gistnet.continuation.Sampling."""
        from gistnet.continuation import Generation

        return Generation(
            self._encoder.teacher,
            self._context(parts),
            sampling=sampling,
            start=self.context_start,
            sink=self._sink,
        )

    def encode(self, blocks: np.ndarray, *, refine=None) -> np.ndarray:
        """(N, T) int64 token ids -> (N, D) float32 gists ((N, k, D) for k gists per block),
        at most max_batch blocks a forward; refined from their blocks with `refine` (a
        gistnet.refine.RefineSettings)."""
        out = []
        for start in range(0, len(blocks), self.max_batch):
            chunk = self._torch.from_numpy(
                np.ascontiguousarray(blocks[start : start + self.max_batch])
            )
            # (n, T) -> (n, [k,] D)
            out.append(self._encoder.encode(chunk, refine=refine).numpy())
        return np.concatenate(out) if len(out) > 1 else out[0]


class EngineCache:
    """At most `capacity` engines, least recently used dropped first. Loading happens once
    per model even when many requests ask for it at the same moment."""

    def __init__(
        self, *, device: str, capacity: int, max_batch: int, bounds: ModelBounds | None = None
    ):
        self.device, self.capacity, self.max_batch = device, capacity, max_batch
        # The largest model a checkpoint may ask to be built (the service's POST /train bounds).
        self.bounds = bounds
        self._engines: OrderedDict[int, GistEngine] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}
        # The model that was the newest when the database last said so: /gist without a
        # model_id keeps serving it while the database is away.
        self.newest_model_id: int | None = None

    def get(self, model_id: int, checkpoint: Path) -> GistEngine:
        with self._lock:
            if model_id in self._engines:
                self._engines.move_to_end(model_id)
                return self._engines[model_id]
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:
            with self._lock:
                if model_id in self._engines:
                    return self._engines[model_id]
            engine = GistEngine(
                model_id=model_id,
                checkpoint=checkpoint,
                device=self.device,
                max_batch=self.max_batch,
                bounds=self.bounds,
            )
            with self._lock:
                self._engines[model_id] = engine
                while len(self._engines) > self.capacity:
                    self._engines.popitem(last=False)
                self._loading.pop(model_id, None)
            return engine

    def loaded_engine(self, model_id: int) -> GistEngine | None:
        """The engine if it is loaded already: a lookup that never blocks on a load."""
        with self._lock:
            engine = self._engines.get(model_id)
            if engine is not None:
                self._engines.move_to_end(model_id)
            return engine

    def drop(self, model_id: int) -> None:
        """Forget a model's engine (the model was deleted)."""
        with self._lock:
            self._engines.pop(model_id, None)

    def loaded(self) -> list[int]:
        with self._lock:
            return list(self._engines)

    def clear(self) -> None:
        with self._lock:
            self._engines.clear()
