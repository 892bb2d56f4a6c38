"""One Settings object from GISTNET_* variables; a bad value stops start-up naming it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.settings import Settings, SettingsError, load_settings
from tests.service_stack import REPO, subprocess_env


def test_defaults_run_the_embedded_stack():
    settings = Settings(_env_file=None)
    assert settings.database_url == "sqlite:///var/gistnet.sqlite"
    assert settings.broker_url == "sqla+sqlite:///var/broker.sqlite"
    assert str(settings.artifact_root) == "artifacts" and str(settings.data_root) == "data"
    assert settings.api_key is None and settings.device == "auto"


def test_values_come_from_gistnet_variables(monkeypatch):
    monkeypatch.setenv("GISTNET_DATABASE_URL", "postgresql+psycopg://db/gistnet")
    monkeypatch.setenv("GISTNET_API_KEY", "k")
    monkeypatch.setenv("GISTNET_DEVICE", "cuda:1")
    monkeypatch.setenv("GISTNET_HEARTBEAT_TIMEOUT_S", "90")
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg://db/gistnet"
    assert settings.api_key.get_secret_value() == "k"
    assert settings.device == "cuda:1" and settings.heartbeat_timeout_s == 90


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GISTNET_DEVICE", "gpu", "GISTNET_DEVICE: device .gpu. is not one of cpu, cuda"),
        ("GISTNET_MAX_ATTEMPTS", "zero", "GISTNET_MAX_ATTEMPTS"),
        ("GISTNET_HEARTBEAT_TIMEOUT_S", "1", "at least twice GISTNET_HEARTBEAT_INTERVAL_S"),
        ("GISTNET_QUEUED_RESEND_MAX_S", "10", "at least GISTNET_QUEUED_RESEND_S"),
        ("GISTNET_LIMITS", '{"training.max_step": 5}', "GISTNET_LIMITS: .*'training.max_step'"),
        ("GISTNET_LIMITS", '{"training.max_steps": 1e12}', "at most 2147483647"),
        ("GISTNET_LIMITS", "max_steps=5", "GISTNET_LIMITS"),
    ],
)
def test_a_bad_value_names_its_variable(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_limits_are_raised_one_by_one_from_json(monkeypatch):
    assert load_settings().request_limits["training.max_steps"] == 1_000_000
    monkeypatch.setenv("GISTNET_LIMITS", '{"training.max_steps": 5000000}')
    limits = load_settings().request_limits
    assert limits["training.max_steps"] == 5_000_000 and isinstance(
        limits["training.max_steps"], int
    )
    assert limits["model.num_layers"] == 64


def test_the_command_refuses_to_start_with_a_bad_setting():
    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", "db", "current"],
        env=subprocess_env({"GISTNET_DEVICE": "tpu"}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "GISTNET_DEVICE" in done.stderr and "tpu" in done.stderr
