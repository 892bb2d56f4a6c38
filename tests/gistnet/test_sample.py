"""The offline sample: the story generator, the shipped teacher and the tool that makes it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gistnet.sample.corpus import ENTITY_WORDS, generate_documents, generate_stories, write_corpus
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
