"""`make_sample_teacher --corpus-only`: more training stories around the shipped held-out
split, without building a teacher."""

from __future__ import annotations

from pathlib import Path

from tools.make_sample_teacher import main

SHIPPED = Path(__file__).resolve().parents[2] / "samples" / "sample_text"


def test_a_larger_corpus_extends_the_shipped_train_split_and_keeps_its_validation(tmp_path):
    out = tmp_path / "corpus"
    teacher = tmp_path / "teacher"
    argv = [
        "--corpus-only",
        "--train-docs",
        "1400",
        "--corpus-out",
        str(out),
        "--out",
        str(teacher),
    ]
    assert main(argv) == 0
    train = (out / "train.jsonl").read_text().splitlines()
    shipped_train = (SHIPPED / "train.jsonl").read_text().splitlines()
    assert len(train) == 1400
    assert train[: len(shipped_train)] == shipped_train
    assert (out / "validation.jsonl").read_text() == (SHIPPED / "validation.jsonl").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["train.jsonl", "validation.jsonl"]
    assert not teacher.exists()  # no tokenizer, no teacher


def test_the_corpus_tool_writes_long_documents(tmp_path):
    out = tmp_path / "long"
    argv = ["--corpus-only", "--long-documents", "--train-docs", "3", "--validation-docs", "2",
            "--corpus-out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = (out / "validation.jsonl").read_text().splitlines()
    assert len(rows) == 2
    assert all(row.count("This is a story about") == 2 for row in rows)
