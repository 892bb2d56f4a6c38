"""POST /gist: the blocks or the text of a request, and the refinement's work bound."""

from __future__ import annotations

import numpy as np

from api.validation.common import RequestProblem


def check_gist_request(blocks: list | None, text: str | None, *, max_blocks: int) -> None:
    if (blocks is None) == (text is None):
        raise RequestProblem("give exactly one of `blocks` (token ids) or `text`")
    if blocks is not None and len(blocks) > max_blocks:
        raise RequestProblem(
            f"{len(blocks)} blocks in one request; the most this server takes is {max_blocks} "
            f"(GISTNET_GIST_MAX_BLOCKS): split the request",
            status_code=413,
        )


def check_refine_work(blocks: int, samples: int, steps: int, max_work: int) -> None:
    """A refinement costs about blocks x samples x steps teacher passes: bounded per request."""
    work = blocks * samples * steps
    if work > max_work:
        raise RequestProblem(
            f"refine: {blocks} blocks x {samples} samples x {steps} steps = {work} teacher "
            f"passes; this server refines at most {max_work} per request "
            f"(GISTNET_GIST_REFINE_MAX_WORK): send fewer blocks per request, or ask for fewer "
            f"samples or steps",
            status_code=413,
        )


def gist_text_budget(*, max_blocks: int, block_size: int, longest_token: int) -> tuple[int, int]:
    """(characters, tokens) beyond which a text cannot fit in `max_blocks` blocks.

    No token of the tokenizer spans more than `longest_token` characters, so a text longer
    than (max_blocks + 1) blocks of such tokens is too long for certain, and is refused
    before a single token is made; a shorter one is tokenized no further than one token
    past the last block it may fill.
    """
    tokens = (max_blocks + 1) * block_size
    return tokens * max(longest_token, 1), tokens


def check_gist_text(text: str, *, max_characters: int, max_blocks: int) -> None:
    if len(text) > max_characters:
        raise RequestProblem(
            f"text has {len(text)} characters, more than {max_blocks} blocks can hold "
            f"(GISTNET_GIST_MAX_BLOCKS): send it in parts",
            status_code=413,
        )


def text_blocks(
    ids: list[int], *, block_size: int, max_blocks: int, truncated: bool = False
) -> tuple[np.ndarray, int]:
    """A text's token ids cut into full blocks: ((n, T) ids, tokens left over). `truncated`:
    tokenizing stopped at the budget, so the text has at least that many tokens."""
    full = len(ids) // block_size
    if full == 0:
        raise RequestProblem(f"text: {len(ids)} tokens, fewer than one block of {block_size}")
    if full > max_blocks:
        many = f"more than {max_blocks}" if truncated else str(full)
        raise RequestProblem(
            f"the text makes {many} blocks; the most one request takes is {max_blocks} "
            f"(GISTNET_GIST_MAX_BLOCKS): send it in parts",
            status_code=413,
        )
    blocks = np.asarray(ids[: full * block_size], dtype=np.int64)
    return blocks.reshape(full, block_size), len(ids) - full * block_size  # (n*T,) -> (n, T)


def blocks_array(blocks: list[list[int]], *, block_size: int, vocab_size: int) -> np.ndarray:
    """(N, T) int64 ids; a wrong block names its index and what is wrong with it."""
    if not blocks:
        raise RequestProblem("blocks: give at least one block")
    for index, block in enumerate(blocks):
        if len(block) != block_size:
            raise RequestProblem(
                f"blocks[{index}] has {len(block)} token ids; this model's blocks have exactly "
                f"{block_size}"
            )
    try:
        ids = np.asarray(blocks, dtype=np.int64)
    except OverflowError:
        raise RequestProblem(
            f"blocks: a token id is too large; ids run from 0 to {vocab_size - 1}"
        ) from None
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        index, position = (int(v) for v in np.argwhere(bad)[0])
        raise RequestProblem(
            f"blocks[{index}][{position}] is {int(ids[index, position])}, outside the teacher's "
            f"vocabulary (0 to {vocab_size - 1})"
        )
    return ids
