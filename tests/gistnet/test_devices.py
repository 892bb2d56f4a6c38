"""gistnet.devices: a device spelling becomes a device that exists here, or an error that
says why not; a dtype name becomes its torch dtype."""

from __future__ import annotations

import pytest
import torch

from gistnet.devices import resolve_device, torch_dtype
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
