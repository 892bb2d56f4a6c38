"""Both command-line tools, end to end on the shipped sample, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from gistnet.checkpoint import read_checkpoint_info
from tests.conftest import ROOT, SAMPLE_CORPUS, SAMPLE_TEACHER
from tools.evaluate_gistnet import main as evaluate_main
from tools.train_gistnet import main as train_main


def run(*args: str, cwd, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PYTHONPATH": str(ROOT),
            "PATH": "/usr/bin:/bin",
            "HF_HUB_OFFLINE": "1",
            **(env or {}),
        },
    )


def test_prepare_then_train_from_the_command_line(tmp_path):
    config = tmp_path / "data.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dataset_name": "cli_sample",
                "tokenizer": str(SAMPLE_TEACHER),
                "teacher_model": str(SAMPLE_TEACHER),
                "teacher_device": "cpu",
                "splits": {
                    "train": {
                        "source": str(SAMPLE_CORPUS / "train.jsonl"),
                        "output_path": "data/train.arrow",
                        "max_tokens": 6000,
                    },
                    "validation": {
                        "source": str(SAMPLE_CORPUS / "validation.jsonl"),
                        "output_path": "data/validation.arrow",
                        "max_tokens": 2000,
                    },
                },
            }
        )
    )
    prep = run("tools.prepare_dataset", "--config", str(config), cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr
    assert "train:" in prep.stdout and "tokens/s" in prep.stdout
    assert (tmp_path / "data" / "metadata.yaml").is_file()

    train = run(
        "tools.train_gistnet",
        "--dataset",
        "data/train.arrow",
        "--config",
        str(ROOT / "configs" / "runs" / "gistnet_example.yaml"),
        "--max-steps",
        "10",
        "--log-every",
        "5",  # the flag wins over the file's training.log_every (50)
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr
    assert "step     10/10" in train.stdout and "examples/s" in train.stdout
    assert "step      5/10" in train.stdout and "step      4/10" not in train.stdout
    assert "val_loss" in train.stdout
    info = read_checkpoint_info(tmp_path / "artifacts" / "gistnet" / "gistnet.pt")
    assert info["metrics"]["steps"] == 10
    # Beside the checkpoint, the same model as a Hugging Face style folder, named.
    folder = tmp_path / "artifacts" / "gistnet" / "gistnet"
    assert "and the folder artifacts/gistnet/gistnet/ (GistNet.from_pretrained)" in train.stdout
    assert read_checkpoint_info(folder)["metrics"] == info["metrics"]


def test_bad_config_exits_with_a_message_not_a_traceback(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("dataset_name: x\ntokenizer: t\nteacher_model: t\nhorizon: 40\nsplits: {}\n")
    result = run("tools.prepare_dataset", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "horizon (40) must be a multiple of block_size (32)" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_source_that_expands_past_its_bound_fails_naming_the_bound(tmp_path):
    import gzip

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "bomb.jsonl.gz").write_bytes(gzip.compress(b'{"text": "spam spam"}\n' * 50_000))
    config = tmp_path / "data.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dataset_name": "bomb",
                "tokenizer": str(SAMPLE_TEACHER),
                "teacher_model": str(SAMPLE_TEACHER),
                "teacher_states": "none",
                # Two shards: the plan counts the documents, and meets the bound before the
                # teacher loads.
                "splits": {
                    "train": {"source": "corpus/*.jsonl.gz", "shards": 2, "output_path": "t.arrow"}
                },
            }
        )
    )
    limits = {"GISTNET_LIMITS": json.dumps({"sources.max_file_bytes": 100_000})}
    result = run("tools.prepare_dataset", "--config", str(config), cwd=tmp_path, env=limits)
    assert result.returncode == 2, result.stderr
    assert "bomb.jsonl.gz: its text is longer than 100000 bytes once decompressed" in result.stderr
    assert "GISTNET_LIMITS='{\"sources.max_file_bytes\": ...}'" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.glob("*.arrow"))


def test_a_compressed_corpus_prepared_token_only_in_shards_trains_from_a_glob(tmp_path):
    import zstandard

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = (SAMPLE_CORPUS / "train.jsonl").read_text().splitlines(keepends=True)
    for i in range(2):  # two files of 30 stories, as a corpus comes in many
        text = "".join(lines[30 * i : 30 * (i + 1)]).encode()
        (corpus / f"stories-{i}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(text))
    config = tmp_path / "data.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dataset_name": "cli_parts",
                "tokenizer": str(SAMPLE_TEACHER),
                "teacher_model": str(SAMPLE_TEACHER),
                "teacher_states": "none",
                "splits": {
                    "train": {
                        "source": "corpus/*.jsonl.zst",
                        "shards": 3,
                        "output_path": "data/train.arrow",
                    },
                    "validation": {
                        "source": str(SAMPLE_CORPUS / "validation.jsonl"),
                        "output_path": "data/validation.arrow",
                        "max_tokens": 2000,
                    },
                },
            }
        )
    )
    prep = run("tools.prepare_dataset", "--config", str(config), cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr
    assert "teacher_states=none" in prep.stdout
    assert "train: 60 documents" in prep.stdout and "3 shards" in prep.stdout
    assert sorted(p.name for p in (tmp_path / "data").glob("train-*.arrow")) == [
        f"train-0000{i}-of-00003.arrow" for i in range(3)
    ]

    train = run(
        "tools.train_gistnet",
        "--dataset",
        "data/train-*-of-00003.arrow",
        "--config",
        str(ROOT / "configs" / "runs" / "gistnet_example.yaml"),
        "--max-steps",
        "3",
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr
    assert "step      3/3" in train.stdout and "val_loss" in train.stdout


def test_train_and_evaluate_a_dataset_of_the_seeds_tool(seed_dataset, tmp_path, capsys):
    # The seed's layout (variable-length lists) and its metadata form, as users bring them.
    train = run(
        "tools.train_gistnet",
        "--dataset", str(seed_dataset / "train.arrow"),
        "--config", str(ROOT / "configs" / "runs" / "gistnet_example.yaml"),
        "--max-steps", "4",
        "--output-dir", str(tmp_path / "model"),
        cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert "step      4/4" in train.stdout and "val_loss" in train.stdout

    code = evaluate_main(
        [
            "--checkpoint", str(tmp_path / "model" / "gistnet.pt"),
            "--dataset", str(seed_dataset),
            "--max-examples", "8",
            "--bootstrap-samples", "10",
            "--device", "cpu",
            "--out", str(tmp_path / "eval"),
        ]
    )  # fmt: skip
    assert code == 0
    assert "swapped" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["n_examples"] == 8 and report["dataset"]["metadata_form"] == "seed"


def test_a_seed_shard_without_metadata_trains_and_evaluates_with_flags(
    seed_shard_alone, tmp_path, capsys
):
    def config(objective: str) -> str:
        path = tmp_path / f"{objective}.yaml"
        training = {"objective": objective, "batch_size": 8, "device": "cpu"}
        path.write_text(yaml.safe_dump({"training": training}))
        return str(path)

    dataset = ["--dataset", str(seed_shard_alone), "--max-steps", "2"]
    flags = ["--teacher", str(SAMPLE_TEACHER), "--tokenizer", str(SAMPLE_TEACHER)]

    # As a user runs it: the missing teacher is a message naming the flag, not a traceback.
    refused = run("tools.train_gistnet", *dataset, "--config", config("substitution"), cwd=tmp_path)
    assert refused.returncode == 2
    assert "--teacher" in refused.stderr and "Traceback" not in refused.stderr

    out = ["--output-dir", str(tmp_path / "sub")]
    assert train_main([*dataset, "--config", config("substitution"), *flags, *out]) == 0
    printed = capsys.readouterr()
    assert " kl " in printed.out and "note:" not in printed.err
    info = read_checkpoint_info(tmp_path / "sub" / "gistnet.pt")
    assert info["teacher"]["model"] == info["tokenizer"] == str(SAMPLE_TEACHER.resolve())

    evaluation = [
        "--checkpoint", str(tmp_path / "sub" / "gistnet.pt"),
        "--dataset", str(seed_shard_alone),
        "--max-examples", "8",
        "--bootstrap-samples", "10",
        "--device", "cpu",
        "--out", str(tmp_path / "eval"),
    ]  # fmt: skip
    assert evaluate_main([*evaluation, *flags]) == 0
    assert "GR(gist) - GR(mean)" in capsys.readouterr().out

    # mse runs without them, and says what serving will need.
    out = ["--output-dir", str(tmp_path / "mse")]
    assert train_main([*dataset, "--config", config("mse"), *out]) == 0
    assert "train again with --teacher and --tokenizer" in capsys.readouterr().err
    info = read_checkpoint_info(tmp_path / "mse" / "gistnet.pt")
    assert info["teacher"]["model"] is None and info["tokenizer"] is None
