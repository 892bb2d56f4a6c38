"""Teachers and tokenizers a request names: a Hugging Face id, or a folder under one of the
server's model roots (GISTNET_MODEL_ROOTS). A folder anywhere else is refused with one
message, the same whether it exists or not, so the check tells nothing about the disk."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from api.validation.common import RequestProblem
from gistnet.errors import ConfigError, GistNetError

# A hub id: "name" or "org/name", no leading dot.
_HUB_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")


def check_model_location(name: str, *, field: str, roots: Sequence[Path] | None) -> None:
    """`name` is a hub id, or a folder under `roots` (None: any folder, as the library
    allows). A hub-shaped name that is also a folder here counts as the folder."""
    if roots is None:
        return
    path = Path(name).expanduser()
    if _HUB_ID.match(name) and not path.exists():
        return
    resolved = path.resolve()
    if not any(resolved.is_relative_to(Path(root).resolve()) for root in roots):
        raise RequestProblem(
            f"{field}: {name!r} is not a Hugging Face id nor a folder under the server's "
            f"model roots (GISTNET_MODEL_ROOTS); put the model in one of them"
        )


def teacher_config(name: str):
    """The teacher's Hugging Face config, read without its weights."""
    from gistnet.errors import TeacherLoadError
    from gistnet.teacher import load_teacher_config

    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise RequestProblem(
            f"teacher_model folder {name!r} has no config.json: save the model there with "
            f"save_pretrained()"
        )
    try:
        return load_teacher_config(name)
    except TeacherLoadError as err:
        raise RequestProblem(str(err)) from None


def check_family(config, *, field: str) -> None:
    """The teacher of this Hugging Face config can read a gist in place of a block."""
    from gistnet.errors import ConfigError
    from gistnet.teacher import check_teacher_family

    try:
        check_teacher_family(config)
    except ConfigError as err:
        raise RequestProblem(f"{field}: {err}") from None


def check_teacher_pair(
    tokenizer_name: str,
    teacher_name: str,
    *,
    horizon: int | None,
    model_roots: Sequence[Path] | None = None,
) -> None:
    """The tokenizer and teacher are allowed (`model_roots`), load (without weights) and
    belong together, the teacher's family can read gists, and a horizon fits the teacher's
    context."""
    from gistnet.teacher import check_tokenizer_fits, load_tokenizer

    check_model_location(tokenizer_name, field="tokenizer", roots=model_roots)
    check_model_location(teacher_name, field="teacher_model", roots=model_roots)
    try:
        tokenizer = load_tokenizer(tokenizer_name)
    except GistNetError as err:
        raise RequestProblem(f"tokenizer: {err}") from None
    teacher = teacher_config(teacher_name)
    check_family(teacher, field="teacher_model")
    positions = getattr(teacher, "n_positions", None) or getattr(
        teacher, "max_position_embeddings", None
    )
    if positions is not None and horizon is not None and horizon > positions:
        raise RequestProblem(
            f"horizon ({horizon}) is longer than the teacher's context ({positions} "
            f"positions); lower horizon"
        )
    vocab = getattr(teacher, "vocab_size", None)
    if vocab is not None:
        try:
            check_tokenizer_fits(
                tokenizer, vocab, tokenizer_name=tokenizer_name, teacher_name=teacher_name
            )
        except ConfigError as err:
            raise RequestProblem(str(err)) from None
