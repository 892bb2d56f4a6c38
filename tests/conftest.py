"""Fixtures shared by every test package: the shipped sample teacher and small datasets
prepared from the shipped sample corpus."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_TEACHER = Path(os.environ.get("GISTNET_TEST_TEACHER", ROOT / "samples" / "teacher"))
SAMPLE_CORPUS = Path(os.environ.get("GISTNET_TEST_CORPUS", ROOT / "samples" / "sample_text"))


def sample_documents(split: str = "validation", count: int = 12) -> list[str]:
    with (SAMPLE_CORPUS / f"{split}.jsonl").open() as fh:
        return [json.loads(line)["text"] for _, line in zip(range(count), fh, strict=False)]


def small_dataset_config(**overrides) -> dict:
    """A dataset config over a few sample documents, inline, that prepares in seconds."""
    config = {
        "dataset_name": "small",
        "tokenizer": str(SAMPLE_TEACHER),
        "teacher_model": str(SAMPLE_TEACHER),
        "block_size": 32,
        "horizon": 64,
        "teacher_batch_size": 64,
        "teacher_device": "cpu",
        "splits": {
            "train": {"documents": sample_documents("train", 40)},
            "validation": {"documents": sample_documents("validation", 8)},
        },
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def sample_teacher_dir() -> Path:
    return SAMPLE_TEACHER


def sharded_config(shards: int, **overrides):
    """small_dataset_config with its train split written as `shards` files, validated."""
    from gistnet.config import validate_dataset_config

    config = small_dataset_config(**overrides)
    config["splits"]["train"]["shards"] = shards
    return validate_dataset_config(config)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A prepared dataset folder (train + validation shards, metadata.yaml), built once."""
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset

    out = tmp_path_factory.mktemp("small_dataset")
    prepare_dataset(validate_dataset_config(small_dataset_config()), output_dir=out)
    return out


@pytest.fixture(scope="session")
def cached_in_4(tmp_path_factory) -> Path:
    """small_dataset's documents with the train split in 4 shards (validation in one)."""
    from gistnet.data import prepare_dataset

    out = tmp_path_factory.mktemp("cached_in_4")
    prepare_dataset(sharded_config(4), output_dir=out)
    return out


@pytest.fixture(scope="session")
def seed_dataset(small_dataset, tmp_path_factory) -> Path:
    """small_dataset as the seed's tool wrote datasets: variable-length list columns and
    the seed's metadata.yaml (train + validation)."""
    from tests.seed_layout import write_seed_dataset

    return write_seed_dataset(small_dataset, tmp_path_factory.mktemp("seed_dataset"))


@pytest.fixture(scope="session")
def seed_shard_alone(seed_dataset, tmp_path_factory) -> Path:
    """The seed's train shard in a folder with no metadata.yaml."""
    from tests.seed_layout import copy_without_metadata

    return copy_without_metadata(seed_dataset, tmp_path_factory.mktemp("seed_alone"))


# The key of the shared embedded service: the dashboard, the client and the metrics tests
# all go through the API key, as a deployed server would ask them to.
SERVICE_KEY = "dashboard-test-key"


@pytest.fixture(scope="session")
def running_service(tmp_path_factory):
    """One `gistnet serve` (SQLite records and broker, its local worker serving metrics)
    for the tests of the dashboard, the client and /metrics: starting one takes seconds."""
    from tests.service_stack import embedded_service, free_port

    with embedded_service(
        tmp_path_factory.mktemp("embedded-service"),
        api_key=SERVICE_KEY,
        worker_metrics_port=free_port(),
        events_poll_s=0.2,
    ) as service:
        yield service


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on 127.0.0.1, with its fake credentials in this process's
    environment (worker subprocesses inherit them)."""
    from tests.s3_server import CREDENTIALS, s3_server

    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        with s3_server() as server:
            yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------------------- the browser
# Debian's Chromium driven by Playwright, shared by the dashboard tests (tests/api and the
# SmolLM2 module). Without either it skips, saying why; under CI it fails instead.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]


def _no_browser(reason: str):
    if os.environ.get("CI") == "true" or os.environ.get("GISTNET_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; under CI the dashboard test must run", pytrace=False)
    pytest.skip(reason)


def _chromium() -> str | None:
    for candidate in (os.environ.get("GISTNET_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        _no_browser("playwright is not installed: pip install -e '.[dev]'")
    executable = _chromium()
    if executable is None:
        _no_browser("no Chromium on this machine: apt-get install chromium")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        except Error as err:
            _no_browser(f"Chromium at {executable} does not start: {err}")
        yield chromium
        chromium.close()
