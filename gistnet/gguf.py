"""Bringing a teacher from a GGUF file: one conversion into a Hugging Face folder.

llama.cpp's GGUF files hold a model's weights (often quantized), its hyper-parameters and
its tokenizer in one file. transformers reads them (`from_pretrained(..., gguf_file=...)`,
with the `gguf` package) but refuses to save a model loaded that way, and every path of
the platform loads its teacher from a folder. So the file is read once, every weight
dequantized to float32 or bfloat16, a plain model of the same config given those
weights, and that model and the tokenizer saved side by side: `config.json`,
`model.safetensors` and the tokenizer files, which `gistnet.teacher.load_teacher` and
`load_tokenizer` read like any other folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gistnet.devices import torch_dtype
from gistnet.errors import ConfigError, TeacherLoadError
from gistnet.files import atomic_write

__all__ = ["IMPORT_DTYPES", "ImportedTeacher", "gguf_architecture", "import_gguf_teacher"]

# What the dequantized weights are stored in: float16 loses range some teachers need.
IMPORT_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class ImportedTeacher:
    """A teacher folder written from a GGUF file."""

    path: Path
    architecture: str  # the GGUF's general.architecture, e.g. "llama"
    model_type: str  # the Hugging Face config's, e.g. "llama"
    parameters: int
    dtype: str
    vocab_size: int


def _require_gguf():
    try:
        import gguf
    except ImportError:
        raise TeacherLoadError(
            "reading a GGUF file needs the `gguf` and `accelerate` packages (dependencies of "
            "the platform): pip install gguf accelerate"
        ) from None
    return gguf


def gguf_architecture(path: str | Path) -> str:
    """The `general.architecture` a GGUF file states (e.g. "llama", "qwen2")."""
    gguf = _require_gguf()
    try:
        field = gguf.GGUFReader(str(path)).fields["general.architecture"]
    except KeyError:
        raise TeacherLoadError(f"{path} states no general.architecture: not a model GGUF") from None
    except Exception as err:  # a truncated or foreign file: ValueError, struct errors...
        raise TeacherLoadError(f"{path} is not a readable GGUF file: {err}") from err
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def supported_architectures() -> set[str]:
    """The GGUF architectures the installed transformers can turn into a model."""
    supported: set[str] = set()
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        # its table of config keys also holds the files' general and tokenizer sections
        supported.update(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})
    except ImportError:
        pass
    try:  # transformers 5 reads some architectures through a second loader
        from transformers.integrations.gguf import GGUF_ARCHS

        supported.update(GGUF_ARCHS)
    except ImportError:
        pass
    return supported


def _dequantized_load_options() -> dict:
    # transformers 5 can keep the weights in GGUF blocks; older versions always dequantize.
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _load_dense(path: Path, architecture: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype, **_dequantized_load_options()
        )
    except Exception as err:
        raise TeacherLoadError(
            f"transformers could not load {path.name} (GGUF architecture {architecture!r}) as a "
            f"causal language model: {err}"
        ) from err
    # save_pretrained refuses a GGUF-loaded model: the same config, built plainly, takes
    # the dequantized weights.
    config = loaded.config
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    return model.eval()


def import_gguf_teacher(
    path: str | Path, out_dir: str | Path, *, dtype: str = "float32"
) -> ImportedTeacher:
    """Convert the GGUF file `path` into a teacher folder `out_dir` (which must not hold one
    yet), its weights dequantized to `dtype` ("float32" or "bfloat16"). The folder appears
    whole or not at all."""
    from transformers import AutoTokenizer

    path, out_dir = Path(path).expanduser(), Path(out_dir).expanduser()
    if dtype not in IMPORT_DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(IMPORT_DTYPES)}")
    if not path.is_file():
        raise TeacherLoadError(f"GGUF file {str(path)!r} does not exist")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(
            f"{out_dir} is not empty: remove it or choose another output folder for the teacher"
        )
    architecture = gguf_architecture(path)
    supported = supported_architectures()
    if architecture not in supported:
        import transformers

        raise TeacherLoadError(
            f"GGUF architecture {architecture!r} is not one transformers "
            f"{transformers.__version__} can load from GGUF (it reads: "
            f"{', '.join(sorted(supported))}); convert the original Hugging Face checkpoint "
            f"instead, or bring its folder"
        )
    model = _load_dense(path, architecture, torch_dtype(dtype))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as err:
        raise TeacherLoadError(f"could not build the tokenizer of {path.name}: {err}") from err

    # The rename replaces an empty `out_dir` (checked above) whole.
    with atomic_write(out_dir, shared=True) as partial:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    return ImportedTeacher(
        path=out_dir,
        architecture=architecture,
        model_type=model.config.model_type,
        parameters=sum(p.numel() for p in model.parameters()),
        dtype=dtype,
        vocab_size=int(model.get_input_embeddings().weight.shape[0]),
    )
