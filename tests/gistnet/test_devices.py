"""gistnet.devices: a device spelling becomes a device that exists here, or an error that
says why not; a dtype name becomes its torch dtype."""

from __future__ import annotations

import pytest
import torch

from gistnet.devices import cpu_has_native_half, resolve_device, torch_dtype, warn_if_emulated
from gistnet.errors import ConfigError, DeviceError


def test_cpu_and_auto_give_a_device_of_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == resolve_device() == expected


def test_a_cuda_device_this_machine_lacks_is_named_with_what_it_has():
    if torch.cuda.is_available():
        missing = f"cuda:{torch.cuda.device_count()}"
        with pytest.raises(DeviceError, match=f"{missing}' does not exist: this machine has"):
            resolve_device(missing)
    else:
        with pytest.raises(DeviceError, match="CUDA is not available.*use 'cpu' or 'auto'"):
            resolve_device("cuda:1")


def test_a_device_spelled_otherwise_is_refused():
    with pytest.raises(DeviceError, match="gpu"):
        resolve_device("gpu")


def test_dtype_names_map_to_torch_dtypes_and_others_are_listed():
    assert torch_dtype("bfloat16") is torch.bfloat16 and torch_dtype("float32") is torch.float32
    with pytest.raises(ConfigError, match="'auto' is not one of float32, float16, bfloat16"):
        torch_dtype("auto")


def test_a_half_precision_teacher_on_a_cpu_without_its_units_is_warned_about(caplog):
    """bfloat16 on a CPU without AVX-512 BF16 or AMX is emulated, measured 90x slower than
    float32 on an AVX2 EPYC: loading a teacher so says so in the log, on such a CPU only."""
    assert cpu_has_native_half("float32")
    cpu = torch.device("cpu")
    for dtype in ("bfloat16", "float16", "float32"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="gistnet.devices"):
            warn_if_emulated(dtype, cpu)
        warned = any("emulates it" in r.getMessage() for r in caplog.records)
        assert warned == (not cpu_has_native_half(dtype)), dtype
    caplog.clear()
    warn_if_emulated("bfloat16", torch.device("cuda", 0))  # GPUs are not this check's
    assert not caplog.records
