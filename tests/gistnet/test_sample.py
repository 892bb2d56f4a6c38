"""The offline sample: the story generator, the shipped teacher and the tool that makes it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gistnet.sample.corpus import (
    ENTITY_WORDS,
    INTRO,
    LongShape,
    generate_documents,
    generate_long_stories,
    generate_stories,
    write_corpus,
)
from gistnet.sample.teacher import count_whole_entity_words
from tools import make_sample_teacher

REPO = Path(__file__).resolve().parents[2]
TEACHER_DIR = REPO / "samples" / "teacher"
VALIDATION_TEXT = REPO / "samples" / "sample_text" / "validation.jsonl"


@pytest.fixture(scope="module")
def shipped_tokenizer():
    return AutoTokenizer.from_pretrained(TEACHER_DIR)


@pytest.fixture(scope="module")
def shipped_teacher():
    return AutoModelForCausalLM.from_pretrained(TEACHER_DIR).eval()


def test_generator_gives_the_same_stories_for_the_same_seed():
    assert generate_documents(6, seed=7) == generate_documents(6, seed=7)
    assert generate_documents(6, seed=7) != generate_documents(6, seed=8)
    # Asking for fewer stories gives a prefix of the longer run.
    assert generate_documents(3, seed=7) == generate_documents(6, seed=7)[:3]


def test_every_story_names_each_of_its_entities_again_and_again():
    for story in generate_stories(200, seed=1):
        counts = {
            slot: len(re.findall(rf"\b{word}\b", story.text)) for slot, word in story.facts.items()
        }
        assert counts["hero"] >= 5, counts
        assert min(counts.values()) >= 2, counts
        assert story.facts["hero"] != story.facts["friend"]


def test_a_long_documents_opening_facts_recur_only_after_the_interlude():
    shape = LongShape()
    for story in generate_long_stories(100, seed=1):
        opening, rest = story.text.split(" This is a story about", 1)
        interlude_words = {w for slot, w in story.facts.items() if slot.startswith("interlude_")}
        main_only = [
            story.facts[slot] for slot in ("hero", "friend", "city", "object", "animal", "job")
            if story.facts[slot] not in interlude_words
        ]  # fmt: skip
        assert all(re.search(rf"\b{word}\b", opening) for word in main_only)
        # the first of them named again comes after the whole interlude (its intro and body)
        first = min(m.start() for w in main_only for m in re.finditer(rf"\b{w}\b", rest))
        assert rest[:first].count(". ") >= len(INTRO) - 1 + shape.interlude[0]
        assert rest.count(story.facts["interlude_hero"]) >= 5
    assert generate_long_stories(3, seed=2) == generate_long_stories(3, seed=2)
    with pytest.raises(ValueError, match="interlude"):
        LongShape(interlude=(5, 2))


def test_write_corpus_writes_long_documents_on_request(tmp_path):
    stories = write_corpus(tmp_path / "s", seed=3, n_train=2, n_validation=2)
    long = write_corpus(tmp_path / "l", seed=3, n_train=2, n_validation=2, long=LongShape())
    short_text = stories.validation_path.read_text()
    long_text = long.validation_path.read_text()
    assert len(long_text) > 1.5 * len(short_text)
    assert all(json.loads(row)["text"].count("This is a story about") == 2
               for row in long_text.splitlines())  # fmt: skip


def test_write_corpus_writes_train_and_validation_jsonl(tmp_path):
    files = write_corpus(tmp_path, seed=3, n_train=4, n_validation=2)
    train = [json.loads(line) for line in files.train_path.read_text().splitlines()]
    validation = [json.loads(line) for line in files.validation_path.read_text().splitlines()]
    assert [len(train), len(validation)] == [4, 2]
    assert all(set(row) == {"text"} and row["text"] for row in train + validation)
    assert not {row["text"] for row in train} & {row["text"] for row in validation}


def test_shipped_tokenizer_keeps_every_entity_word_as_one_token(shipped_tokenizer):
    assert count_whole_entity_words(shipped_tokenizer) == len(ENTITY_WORDS)
    assert shipped_tokenizer.eos_token == shipped_tokenizer.bos_token == "<|endoftext|>"


def test_shipped_teacher_predicts_validation_text_far_better_than_uniform(
    shipped_tokenizer, shipped_teacher
):
    texts = [json.loads(line)["text"] for line in VALIDATION_TEXT.read_text().splitlines()[:4]]
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = shipped_tokenizer(text, return_tensors="pt")["input_ids"]
            assert ids.shape[1] <= shipped_teacher.config.n_positions
            logits = shipped_teacher(input_ids=ids).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    uniform = math.log(len(shipped_tokenizer))
    assert shipped_teacher.config.vocab_size == len(shipped_tokenizer)
    assert total / count < uniform / 3


def test_make_sample_teacher_with_tiny_settings_writes_a_loadable_folder(tmp_path):
    def build(name: str) -> Path:
        out = tmp_path / name
        args = ["--out", str(out / "teacher"), "--corpus-out", str(out / "text")]
        tiny = ["--train-docs", "6", "--validation-docs", "2", "--steps", "2", "--batch-size", "2"]
        tiny += ["--seq-len", "64"]
        assert make_sample_teacher.main([*args, *tiny, "--vocab-size", "400", "--no-progress"]) == 0
        return out

    first, second = build("first"), build("second")
    tokenizer = AutoTokenizer.from_pretrained(first / "teacher")
    teacher = AutoModelForCausalLM.from_pretrained(first / "teacher")
    ids = tokenizer("This is a story about Anna.", return_tensors="pt")["input_ids"]
    assert teacher(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    assert (first / "text" / "train.jsonl").exists()
    assert "validation perplexity" in (first / "teacher" / "README.md").read_text()
    # Same seed, same settings: the same corpus and the same weights, byte for byte.
    for path in ("text/train.jsonl", "teacher/tokenizer.json", "teacher/model.safetensors"):
        assert (first / path).read_bytes() == (second / path).read_bytes(), path


def test_a_long_context_sample_teacher_is_built_on_long_documents(tmp_path):
    args = ["--out", str(tmp_path / "teacher"), "--corpus-out", str(tmp_path / "text"),
            "--train-docs", "4", "--validation-docs", "2", "--steps", "1", "--batch-size", "1",
            "--seq-len", "1024", "--positions", "1024", "--vocab-size", "400", "--layers", "1",
            "--width", "32", "--heads", "2", "--long-documents", "--no-progress"]  # fmt: skip
    assert make_sample_teacher.main(args) == 0
    teacher = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher")
    assert teacher.config.n_positions == 1024
    rows = (tmp_path / "text" / "train.jsonl").read_text().splitlines()
    assert all(row.count("This is a story about") == 2 for row in rows)
    assert "| `long_documents` | True |" in (tmp_path / "teacher" / "README.md").read_text()
