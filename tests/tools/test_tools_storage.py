"""The library's CLIs with object-store URLs for their inputs and outputs, against moto's
S3 server: prepare to s3://, train from and to s3:// over two processes (DDP), evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, small_dataset_config
from tools import evaluate_gistnet, prepare_dataset

pytestmark = [pytest.mark.slow]


def test_prepare_train_on_two_processes_and_evaluate_with_s3_urls(
    s3, tmp_path, monkeypatch, capsys
):
    bucket = s3.new_bucket()
    env = {**s3.env, "GISTNET_CACHE_DIR": str(tmp_path / "cache")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = small_dataset_config()
    config["splits"]["train"]["documents"] = config["splits"]["train"]["documents"][:12]
    config_file = tmp_path / "data.yaml"
    config_file.write_text(yaml.safe_dump(config))
    dataset = f"s3://{bucket}/datasets/small"
    assert prepare_dataset.main(["--config", str(config_file), "--output-dir", dataset]) == 0
    assert f"{dataset}/train.arrow" in capsys.readouterr().out
    fs = s3.filesystem()
    assert fs.exists(f"{bucket}/datasets/small/metadata.yaml")

    run_file = tmp_path / "run.yaml"
    run_file.write_text(
        yaml.safe_dump(
            {
                "model": {"num_heads": 4},
                "training": {"batch_size": 8, "max_steps": 6, "device": "cpu", "processes": 2},
            }
        )
    )
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.train_gistnet",
            "--dataset",
            f"{dataset}/train.arrow",
            "--config",
            str(run_file),
            "--output-dir",
            f"s3://{bucket}/runs/one",
        ],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert f"-> s3://{bucket}/runs/one/gistnet.pt" in trained.stdout
    assert trained.stdout.count("step      6/6") == 1  # rank 0 alone prints
    assert fs.exists(f"{bucket}/runs/one/gistnet.pt")
    assert f"and the folder s3://{bucket}/runs/one/gistnet/" in trained.stdout
    for name in ("config.json", "model.safetensors", "run.yaml", "README.md"):
        assert fs.exists(f"{bucket}/runs/one/gistnet/{name}"), name

    code = evaluate_gistnet.main(
        [
            "--checkpoint",
            f"s3://{bucket}/runs/one/gistnet.pt",
            "--dataset",
            dataset,
            "--out",
            f"s3://{bucket}/eval",
            "--bootstrap-samples",
            "20",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    report = json.loads(fs.cat(f"{bucket}/eval/evaluation.json"))
    assert {"full", "gist", "drop"} <= set(report["conditions"])
    assert fs.exists(f"{bucket}/eval/evaluation_nll_per_position.png")


def test_datasets_of_the_seeds_tool_are_fetched_by_url_with_or_without_metadata(
    s3, seed_dataset, seed_shard_alone, tmp_path, monkeypatch
):
    from gistnet.datasets import describe_dataset
    from gistnet.storage import open_local_dataset

    bucket = s3.new_bucket()
    for key, value in {**s3.env, "GISTNET_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    fs = s3.filesystem()
    for name in ("metadata.yaml", "train.arrow", "validation.arrow"):
        fs.put_file(str(seed_dataset / name), f"{bucket}/seed/{name}")
    fs.put_file(str(seed_shard_alone), f"{bucket}/alone/train.arrow")

    # The seed's metadata names no shard paths: validation.arrow beside it comes along.
    shard = open_local_dataset(f"s3://{bucket}/seed/train.arrow", splits=["validation"])
    assert (shard.parent / "validation.arrow").is_file()
    assert describe_dataset(shard)["metadata_form"] == "seed"

    alone = open_local_dataset(f"s3://{bucket}/alone/train.arrow", splits=["validation"])
    info = describe_dataset(alone)
    assert info["metadata_form"] == "none" and info["teacher_hidden_size"] == 128
