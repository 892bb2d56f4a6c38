"""The gist engine behind /gist (gistnet/inference.py, GistEncoder): a checkpoint's GistNet
reading the sample teacher's states of token blocks, the text it cuts into tokens, and
refinement on request."""

from __future__ import annotations

import pytest
import torch

from gistnet.checkpoint import load_checkpoint, save_checkpoint
from gistnet.config import GistNetConfig
from gistnet.errors import ConfigError
from gistnet.inference import GistEncoder
from gistnet.model import GistNet
from gistnet.refine import RefineSettings
from gistnet.teacher import gistnet_inputs, load_teacher, load_tokenizer
from tests.conftest import SAMPLE_TEACHER, sample_documents

BLOCK, HORIZON, WIDTH = 32, 64, 128  # the sample teacher's width


def _save(path, *, names_teacher: bool = True):
    torch.manual_seed(0)
    config = GistNetConfig.preset("substitution", hidden_size=WIDTH, block_size=BLOCK)
    return save_checkpoint(
        path,
        model=GistNet(config),
        training_config={},
        metrics={},
        dataset={"name": "sample", "block_size": BLOCK, "horizon": HORIZON},
        teacher={"model": str(SAMPLE_TEACHER) if names_teacher else None, "dtype": "float32"},
        tokenizer=str(SAMPLE_TEACHER) if names_teacher else None,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("engine") / "gistnet.pt")


@pytest.fixture(scope="module")
def encoder(checkpoint):
    return GistEncoder.from_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def blocks(encoder):
    ids = encoder.tokenize(" ".join(sample_documents("validation", 4)))
    return torch.tensor(ids[: 5 * BLOCK]).view(5, BLOCK)


def test_the_engine_takes_its_shape_and_its_reading_from_the_checkpoint(encoder):
    tokenizer = load_tokenizer(str(SAMPLE_TEACHER))
    assert (encoder.block_size, encoder.dim, encoder.gists_per_block) == (BLOCK, WIDTH, 1)
    assert encoder.bos_sink is True and encoder.sink_token_id == tokenizer.bos_token_id
    assert encoder.vocab_size == len(tokenizer)
    assert encoder.info["teacher"]["model"] == encoder.info["tokenizer"] == str(SAMPLE_TEACHER)
    assert encoder.refine_tokens == HORIZON - BLOCK  # the horizon it was trained to predict


def test_a_gist_is_gistnet_over_the_teachers_reading_of_the_block(checkpoint, encoder, blocks):
    model, _ = load_checkpoint(checkpoint)
    teacher = load_teacher(str(SAMPLE_TEACHER))
    with torch.no_grad():
        expected = model(**gistnet_inputs(teacher, blocks, model.config))
    gists = encoder.encode(blocks)
    assert gists.shape == (5, WIDTH) and gists.dtype == torch.float32
    assert gists.device.type == "cpu"
    torch.testing.assert_close(gists, expected, atol=1e-5, rtol=1e-5)


def test_a_blocks_gist_does_not_depend_on_the_blocks_batched_with_it(encoder, blocks):
    together = encoder.encode(blocks)
    for i in range(len(blocks)):
        torch.testing.assert_close(encoder.encode(blocks[i : i + 1])[0], together[i])
    assert not torch.allclose(together[0], together[1])


def test_blocks_of_the_wrong_shape_are_refused_naming_the_one_expected(encoder, blocks):
    for wrong in (blocks[:, :-1], blocks[0]):
        with pytest.raises(ValueError, match=r"expected \(N, 32\) token ids"):
            encoder.encode(wrong)


def test_text_is_cut_into_the_tokenizers_ids_and_no_token_is_longer_than_it_says(encoder):
    tokenizer = load_tokenizer(str(SAMPLE_TEACHER))
    text = sample_documents("validation", 1)[0]
    ids = encoder.tokenize(text)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert encoder.tokenize(text, max_tokens=10) == ids[:10]
    spelled = tokenizer.convert_ids_to_tokens(ids)
    assert max(len(t) for t in spelled) <= encoder.longest_token
    assert encoder.longest_token == max(len(t) for t in tokenizer.get_vocab())


def test_a_refined_gist_starts_from_the_gist_and_is_the_same_each_time(encoder, blocks):
    settings = RefineSettings(samples=2, steps=2, tokens=8)
    amortized = encoder.encode(blocks[:2])
    refined = encoder.encode(blocks[:2], refine=settings)
    assert refined.shape == amortized.shape and not torch.allclose(refined, amortized)
    torch.testing.assert_close(encoder.encode(blocks[:2], refine=settings), refined)


def test_a_checkpoint_that_names_no_teacher_asks_for_one_and_then_serves_token_ids(
    tmp_path, blocks
):
    path = _save(tmp_path / "unnamed.pt", names_teacher=False)
    with pytest.raises(ConfigError, match="does not name its teacher.*teacher_model="):
        GistEncoder.from_checkpoint(path)
    encoder = GistEncoder.from_checkpoint(path, teacher_model=str(SAMPLE_TEACHER))
    assert encoder.encode(blocks).shape == (5, WIDTH)
    with pytest.raises(ConfigError, match="does not name its tokenizer.*send token ids"):
        encoder.tokenize("a story")
