"""Device and dtype resolution, shared by dataset preparation, training and serving."""

from __future__ import annotations

import logging

import torch

from gistnet.config import parse_device
from gistnet.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(spec: str = "auto") -> torch.device:
    """Map cpu | cuda | cuda:N | auto to a device that exists here, or say why not."""
    try:
        spec = parse_device(spec)
    except ValueError as err:
        raise DeviceError(str(err)) from None
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    # cuda or cuda:N
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {spec!r} was asked for but CUDA is not available on this machine "
            f"(torch {torch.__version__}); use 'cpu' or 'auto'"
        )
    index = int(spec[5:]) if ":" in spec else 0
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"device {spec!r} does not exist: this machine has "
            f"{torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device("cuda", index)


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(f"dtype {name!r} is not one of {', '.join(_DTYPES)}") from None


def cpu_has_native_half(dtype: str) -> bool:
    """Whether this CPU computes `dtype` matrix products in hardware (AVX-512 BF16 or AMX
    tiles for bfloat16, AMX-FP16 for float16). Without them PyTorch converts every
    operand and half precision runs slower than float32, not faster."""
    if dtype == "bfloat16":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if dtype == "float16":
        return torch.cpu._is_amx_fp16_supported()
    return True


def warn_if_emulated(dtype: str, device: torch.device) -> None:
    """A warning where a teacher is asked to run in a half precision this CPU lacks."""
    if device.type == "cpu" and not cpu_has_native_half(dtype):
        log.warning(
            "the teacher runs in %s on a CPU without %s units (capability %s): PyTorch "
            "emulates it, many times slower than float32 here; use float32 on this machine",
            dtype,
            dtype,
            torch.backends.cpu.get_cpu_capability(),
        )
