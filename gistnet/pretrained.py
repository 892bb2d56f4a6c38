"""A trained GistNet as a folder in Hugging Face's layout, and the teacher it is tied to.

    <folder>/config.json        the GistNet config, its teacher and tokenizer, the dataset
                                (name, fingerprint), the training config and metrics, and
                                the sha256 of the teacher's weights
    <folder>/model.safetensors  the weights
    <folder>/run.yaml           the run config that trained it (model and training sections)
    <folder>/README.md          a model card: base model, dataset, objective, the latest
                                evaluation's figures, the command that trains it again

`save_pretrained` writes one from a model and a checkpoint's info (or from a `.pt`
checkpoint: `export_checkpoint`), `from_pretrained` reads one back; `load_checkpoint`
(gistnet.checkpoint) reads either form, so every path that takes a checkpoint takes a
folder. Gists are tied to the exact teacher they were trained with: a folder or
checkpoint that records its teacher's weights hash is refused with a teacher whose
weights differ (`check_teacher_weights`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from gistnet.errors import ConfigError, ShardError
from gistnet.files import atomic_write, file_sha256

FORMAT = "gistnet-pretrained/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
RUN_NAME = "run.yaml"
CARD_NAME = "README.md"
# The files of a Hugging Face folder that hold weights, whatever the format.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")

# (path, size, mtime_ns) -> sha256: a teacher is hashed once per process, not per load.
_HASHED: dict[tuple[str, int, int], str] = {}


class TeacherMismatch(ConfigError):
    """The teacher named for a GistNet is not the one it was trained with."""


def is_pretrained(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file() and (Path(path) / WEIGHTS_NAME).is_file()


def _file_hash(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = file_sha256(path)
    return _HASHED[key]


def teacher_weights_sha256(folder: str | Path) -> str | None:
    """One sha256 over a teacher folder's weight files (their names and contents), or None
    when `folder` is not a local folder holding weights (a hub name: nothing to hash)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{_file_hash(path)}\n".encode())
    return digest.hexdigest()


def check_teacher_weights(info: Mapping[str, Any], teacher_name: str) -> None:
    """Refuse `teacher_name` when the GistNet records a hash of its teacher's weights that
    this teacher's weights do not have."""
    recorded = (info.get("teacher") or {}).get("weights_sha256")
    if not recorded:
        return
    found = teacher_weights_sha256(teacher_name)
    if found is not None and found != recorded:
        raise TeacherMismatch(
            f"teacher {teacher_name!r} has other weights than the teacher this GistNet was "
            f"trained with (weights sha256 {found[:12]}..., trained with {recorded[:12]}...): "
            f"gists are read by the exact teacher they were trained for; name that teacher "
            f"(teacher_model), or train a GistNet for this one"
        )


# --------------------------------------------------------------------------- the card


def _figure(entry: Mapping[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    text = f"{entry['value']:.3f}"
    low, high = (entry.get("ci95") or (None, None))[:2]
    return text + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def _evaluation_lines(evaluation: Mapping[str, Any] | None) -> list[str]:
    if not evaluation or not evaluation.get("conditions"):
        return ["No evaluation yet: `python -m tools.evaluate_gistnet --checkpoint <folder>`."]
    lines = [
        f"On {evaluation.get('n_examples', '?')} examples of the held-out split; 95% "
        f"intervals from {evaluation.get('bootstrap_samples', '?')} bootstrap resamples.",
        "",
        "| condition | NLL | ΔNLL | gap recovered |",
        "| --- | --- | --- | --- |",
    ]
    for name, entry in evaluation["conditions"].items():
        lines.append(
            f"| {name} | {_figure(entry.get('nll'))} | {_figure(entry.get('delta_nll'))} | "
            f"{_figure(entry.get('gap_recovered'))} |"
        )
    return lines


def model_card(config: Mapping[str, Any], evaluation: Mapping[str, Any] | None = None) -> str:
    """README.md of a GistNet folder: what it is, what it was trained on, how well it does."""
    model = config["model_config"]
    teacher = (config.get("teacher") or {}).get("model") or "unknown"
    dataset = config.get("dataset") or {}
    training = config.get("training_config") or {}
    k = model.get("gists_per_block", 1)
    front = {
        "library_name": "gistnet",
        "base_model": teacher,
        "tags": ["gistnet", "context-compression", "gist-tokens"],
    }
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# GistNet for {teacher}",
        "",
        f"Compresses each block of {model['block_size']} tokens into {k} gist "
        f"vector{'s' if k > 1 else ''} of width {model['hidden_size']} in the hidden space of "
        f"the frozen teacher `{teacher}`, which reads them in place of the block's tokens.",
        "",
        "| | |",
        "| --- | --- |",
        f"| teacher | `{teacher}` (weights sha256 "
        f"`{(config.get('teacher') or {}).get('weights_sha256') or 'not recorded'}`) |",
        f"| tokenizer | `{config.get('tokenizer') or teacher}` |",
        f"| dataset | {dataset.get('name', 'unknown')} (fingerprint "
        f"`{dataset.get('fingerprint', 'unknown')}`) |",
        f"| objective | {training.get('objective', 'mse')} |",
        f"| steps | {(config.get('metrics') or {}).get('steps', training.get('max_steps', '?'))} |",
        "",
        "## Evaluation",
        "",
        *_evaluation_lines(evaluation),
        "",
        "## Training it again",
        "",
        "```bash",
        f"python -m tools.train_gistnet --dataset {dataset.get('path', '<dataset>')} "
        f"--config {RUN_NAME}",
        "```",
        "",
        "## Using it",
        "",
        "```python",
        "from gistnet.inference import GistEncoder",
        "encoder = GistEncoder.from_checkpoint('<this folder>')",
        "gists = encoder.encode(token_ids)  # (N, block_size) -> (N, D), or (N, k, D)",
        "```",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the folder


def save_pretrained(
    folder: str | Path,
    *,
    state_dict: Mapping[str, Any],
    info: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None = None,
) -> Path:
    """Write the folder whole or not at all. `info` is a checkpoint's info
    (gistnet.checkpoint.read_checkpoint_info); `evaluation` a report for the card."""
    from safetensors.torch import save_file

    config = {
        "format": FORMAT,
        **{k: v for k, v in info.items() if k not in ("format", "block_size", "hidden_size")},
    }
    teacher = dict(config.get("teacher") or {})
    if teacher.get("model") and not teacher.get("weights_sha256"):
        teacher["weights_sha256"] = teacher_weights_sha256(teacher["model"])
    config["teacher"] = teacher
    run = {
        "model": config["model_config"],
        "training": config.get("training_config") or {},
    }
    folder = Path(folder)
    with atomic_write(folder, what=f"the model folder {folder.name}") as tmp:
        tmp.mkdir()
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str) + "\n")
        (tmp / RUN_NAME).write_text(yaml.safe_dump(run, sort_keys=False))
        (tmp / CARD_NAME).write_text(model_card(config, evaluation))
    return folder


def read_pretrained(folder: str | Path) -> dict[str, Any]:
    """The folder as a checkpoint's payload: {format, model_config, state_dict, ...}."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError) as err:
        raise ShardError(f"{str(folder)!r}: {CONFIG_NAME} cannot be read: {err}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ShardError(
            f"{str(folder)!r} is not a GistNet folder ({CONFIG_NAME} of format {FORMAT} expected)"
        )
    try:
        state_dict = load_file(str(folder / WEIGHTS_NAME))
    except (OSError, SafetensorError) as err:
        raise ShardError(f"{str(folder)!r}: {WEIGHTS_NAME} cannot be read: {err}") from None
    return {**config, "state_dict": state_dict}
