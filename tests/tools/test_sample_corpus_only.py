"""`make_sample_teacher --corpus-only`: more training stories around the shipped held-out
split, without building a teacher."""

from __future__ import annotations

import json
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


def test_a_longer_interlude_puts_the_first_storys_resumption_further_in(tmp_path):
    def resumption(row: str) -> int:
        """Characters before the first story's hero is named after the second story."""
        text = json.loads(row)["text"]
        hero = text.removeprefix("This is a story about ").split(",", 1)[0]
        second = text.index("This is a story about", 1)
        return text.index(hero, text.index(".", second + 60))

    starts = {}
    for interlude in ("18 24", "34 42"):
        out = tmp_path / interlude.replace(" ", "-")
        argv = ["--corpus-only", "--long-documents", "--interlude", *interlude.split(),
                "--train-docs", "1", "--validation-docs", "8", "--corpus-out", str(out)]  # fmt: skip
        assert main(argv) == 0
        rows = (out / "validation.jsonl").read_text().splitlines()
        starts[interlude] = [resumption(row) for row in rows]
    # at most 6 + 24 sentences before the first story resumes in one, at least 3 + 34 in
    # the other (the intros alike)
    assert min(starts["34 42"]) > max(starts["18 24"])
