"""Every teacher family the platform claims (gistnet.teacher.TESTED_FAMILIES), as a tiny
random model made here: the substituted-input path reads its embeddings and positions as
the token-id path does, and it prepares, trains, evaluates and serves gists. A family that
cannot read a gist at its block's positions is refused with its name, never scored.

Each model is 2 layers of width 32 over the sample tokenizer's vocabulary, saved with that
tokenizer as a Hugging Face folder, so every path loads it as a user's teacher.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from gistnet.config import validate_dataset_config, validate_run_config
from gistnet.context import CompressedSpan, RawTokens, context_inputs, teacher_forward
from gistnet.data import prepare_dataset
from gistnet.datasets import open_split
from gistnet.errors import ConfigError
from gistnet.inference import GistEncoder
from gistnet.substitution import (
    drop_token_id,
    drop_vector,
    full_log_probs_and_block_states,
    horizon_log_probs,
    substituted_inputs,
)
from gistnet.teacher import (
    TESTED_FAMILIES,
    block_hidden_states,
    check_teacher_family,
    check_teacher_layers,
    gistnet_inputs,
    load_teacher,
    load_teacher_config,
    load_tokenizer,
)
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings
from tests.conftest import SAMPLE_TEACHER, sample_documents, small_dataset_config
from tests.gistnet.evaluation import evaluate
from tools.train_gistnet import main as train_main

BLOCK, HORIZON = 32, 64
WIDTH, LAYERS, HEADS = 32, 2, 4
VOCAB = 1971  # the sample tokenizer's
# The sample tokenizer's BOS (and EOS) is token 0. No family gets a pad token: a padding
# row is zero, and a zero BOS embedding would hide how a family scales its embeddings.
SPECIAL = {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": None}
DECODER = {
    "hidden_size": WIDTH,
    "intermediate_size": 64,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "max_position_embeddings": 128,
}
GROUPED = {**DECODER, "num_key_value_heads": 2}

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**GROUPED),
    "mistral": lambda: transformers.MistralConfig(**GROUPED, sliding_window=None),
    "qwen2": lambda: transformers.Qwen2Config(**GROUPED),
    # Gemma multiplies its input embeddings by sqrt(hidden size) inside the embedding module.
    "gemma": lambda: transformers.GemmaConfig(**GROUPED, head_dim=WIDTH // HEADS),
    "phi3": lambda: transformers.Phi3Config(**GROUPED, original_max_position_embeddings=128),
    # Rotary over a quarter of each head, as the Pythia models have it.
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**DECODER, rotary_pct=0.25),
    # Learned positions stored with an offset of 2; embeddings projected into wider layers
    # (word_embed_proj_dim < hidden_size, as in OPT-350m) and back out.
    "opt": lambda: transformers.OPTConfig(
        hidden_size=48, ffn_dim=64, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        max_position_embeddings=128, word_embed_proj_dim=WIDTH, do_layer_norm_before=False,
    ),  # fmt: skip
    "gpt2": lambda: transformers.GPT2Config(n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS, n_positions=128),
}


def save_teacher(config, folder) -> str:
    """A random causal LM of `config` with the sample tokenizer, as a Hugging Face folder."""
    torch.manual_seed(0)
    for key, value in SPECIAL.items():
        setattr(config, key, value)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    load_tokenizer(str(SAMPLE_TEACHER)).save_pretrained(folder)
    return str(folder)


def test_the_tested_families_are_the_ones_this_module_builds():
    assert set(CONFIGS) == set(TESTED_FAMILIES)


@pytest.fixture(scope="module", params=TESTED_FAMILIES)
def family(request, tmp_path_factory) -> tuple[str, str]:
    """(family, the folder of its tiny random teacher)."""
    name = request.param
    return name, save_teacher(CONFIGS[name](), tmp_path_factory.mktemp(name))


@pytest.fixture(scope="module")
def teacher(family):
    return load_teacher(family[1])


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    """Three windows of the sample corpus: a block, then a block of horizon."""
    tokenizer = load_tokenizer(str(SAMPLE_TEACHER))
    ids = tokenizer(" ".join(sample_documents("train", 3)), add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[: 3 * HORIZON]).view(3, HORIZON)


def test_the_blocks_own_embeddings_substituted_give_the_token_id_log_probs(teacher, windows):
    embeddings = teacher.get_input_embeddings()(windows[:, :BLOCK])  # (B, T, D): k = T
    inputs_embeds, position_ids = substituted_inputs(
        teacher, windows, block_size=BLOCK, vectors=embeddings
    )
    assert position_ids[0].tolist() == list(range(HORIZON))
    with torch.no_grad():
        by_ids = horizon_log_probs(teacher, windows, block_size=BLOCK)
        substituted = horizon_log_probs(teacher, windows, block_size=BLOCK, vectors=embeddings)
        # The last block token alone at its position is not the full block: the positions
        # and the rest of the block matter, so the check above could fail.
        last = horizon_log_probs(teacher, windows, block_size=BLOCK, vectors=embeddings[:, -1])
    torch.testing.assert_close(substituted, by_ids, atol=1e-5, rtol=0)
    assert (last - by_ids).abs().max() > 1e-3


def test_a_context_of_tokens_and_a_span_of_their_own_embeddings_reads_as_the_tokens(
    teacher, windows
):
    """gistnet.context lays raw tokens and compressed blocks out for the teacher: a block
    read as its own T embeddings after 8 raw tokens, and a shorter context padded on the
    right in the same batch, give the token ids' logits at every real position."""
    embeddings = teacher.get_input_embeddings()(windows[:, 8 : 8 + BLOCK])  # (B, T, D)
    spanned = [
        RawTokens(windows[:, :8]),
        CompressedSpan(embeddings[:, None], BLOCK),  # (B, 1 block, k = T, D)
        RawTokens(windows[:, 8 + BLOCK :]),
    ]
    shorter = [RawTokens(windows[:, :40])]
    inputs = context_inputs(teacher, [spanned, shorter])
    assert inputs.lengths.tolist() == [HORIZON] * 3 + [40] * 3
    with torch.no_grad():
        logits = teacher_forward(teacher, inputs).logits
        by_ids = teacher(input_ids=windows, use_cache=False).logits
    torch.testing.assert_close(logits[:3], by_ids, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[3:, :40], by_ids[:, :40], atol=1e-5, rtol=0)


def test_the_horizon_reads_across_the_positions_a_compressed_block_leaves_out(
    teacher, windows
):
    """A block read as one vector leaves positions out; the tokens after it still attend
    to what came before it (no family may take the jump for the start of a new sequence)."""
    last = teacher.get_input_embeddings()(windows[:, 8 + BLOCK - 1 : 8 + BLOCK])  # (B, 1, D)

    def horizon_logits(prefix: torch.Tensor) -> torch.Tensor:
        context = [
            RawTokens(prefix),
            CompressedSpan(last[:, None], BLOCK),  # (B, 1 block, k = 1, D)
            RawTokens(windows[:, 8 + BLOCK :]),
        ]
        with torch.no_grad():
            return teacher_forward(teacher, context_inputs(teacher, [context])).logits[:, -8:]

    def by_ids(prefix: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([prefix, windows[:, 8:]], dim=1)
        with torch.no_grad():
            return teacher(input_ids=tokens, use_cache=False).logits[:, -8:]

    prefix, other = windows[:, :8], windows[:, :8].roll(1, dims=0)
    # As much as the prefix moves the horizon's logits when every token is read (a random
    # teacher's logits are small, some families' very small).
    moved = (horizon_logits(prefix) - horizon_logits(other)).abs().max()
    assert moved > 0.1 * (by_ids(prefix) - by_ids(other)).abs().max() > 0


def test_the_drop_vector_reads_as_its_token_at_the_blocks_last_position(teacher, windows):
    bos = drop_token_id(load_tokenizer(str(SAMPLE_TEACHER)), teacher)
    assert teacher.get_input_embeddings().weight[bos].abs().sum() > 0
    batch = len(windows)
    tokens = torch.cat([torch.full((batch, 1), bos), windows[:, BLOCK:-1]], dim=1)
    positions = torch.arange(BLOCK - 1, HORIZON - 1).expand(batch, -1)
    dropped = drop_vector(teacher, bos).expand(batch, -1)
    with torch.no_grad():
        by_ids = teacher(input_ids=tokens, position_ids=positions, use_cache=False).logits
        substituted = horizon_log_probs(teacher, windows, block_size=BLOCK, vectors=dropped)
    torch.testing.assert_close(substituted, by_ids.float().log_softmax(-1), atol=1e-5, rtol=0)


def test_the_states_gistnet_reads_are_the_ones_the_lm_head_reads(teacher, windows):
    blocks = windows[:, :BLOCK]
    with torch.no_grad():
        states = block_hidden_states(teacher, blocks)  # (B, T, D)
        logits = teacher(input_ids=blocks, use_cache=False).logits
        from_window, window_states, _ = full_log_probs_and_block_states(
            teacher, windows, block_size=BLOCK
        )
        head = teacher.get_output_embeddings()(states.to(logits.dtype))
    assert states.shape == (len(windows), BLOCK, WIDTH)
    torch.testing.assert_close(head, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(window_states, states, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        from_window, horizon_log_probs(teacher, windows, block_size=BLOCK), atol=0, rtol=0
    )


@pytest.fixture(scope="module")
def datasets(family, tmp_path_factory) -> dict[str, str]:
    """{teacher_states: dataset folder}: the same documents prepared with the teacher's
    cached states and as token ids only."""
    folder = family[1]
    out = {}
    for states in ("cache", "none"):
        config = small_dataset_config(
            tokenizer=folder,
            teacher_model=folder,
            teacher_states=states,
            splits={
                "train": {"documents": sample_documents("train", 6)},
                "validation": {"documents": sample_documents("validation", 3)},
            },
        )
        out[states] = str(tmp_path_factory.mktemp(f"{family[0]}-{states}"))
        prepare_dataset(validate_dataset_config(config), output_dir=out[states])
    return out


def substitution_run(family: str):
    """3 steps of the shipped substitution preset: GistNet reads the block's token
    embeddings and the teacher's hidden state 0 beside its last-layer states, and the
    teacher reads the gists after its BOS. The wide-layered OPT is refused hidden state 0
    (see below), so it reads the last layer's states only."""
    model = {"num_heads": HEADS, **({"teacher_layers": []} if family == "opt" else {})}
    return validate_run_config(
        {
            "preset": "substitution",
            "model": model,
            "training": {
                "batch_size": 4, "max_steps": 3, "device": "cpu", "eval_every": 3,
                "eval_examples": 8,
            },
        }
    )  # fmt: skip


def test_the_family_prepares_trains_evaluates_and_serves_gists(family, datasets, tmp_path):
    cached = open_split(datasets["cache"])
    assert cached.hidden_size == WIDTH and cached.num_examples >= 4
    run = substitution_run(family[0])
    runs = {
        states: train_gistnet(
            TrainRequest(
                dataset=path, output_dir=tmp_path / states, settings=TrainSettings(run=run)
            )
        )
        for states, path in datasets.items()
    }
    # The token-only run takes its states from the window's forward (a hook on the module
    # the LM head reads): the same losses as the states cached by a forward of the block.
    losses = [h["loss"] for h in runs["cache"].history]
    assert len(losses) == 3 and all(np.isfinite(losses))
    np.testing.assert_allclose([h["loss"] for h in runs["none"].history], losses, rtol=1e-5)
    checkpoint = runs["none"].checkpoint_path

    report = evaluate(
        checkpoint, datasets["cache"], device="cpu", max_examples=8, bootstrap_samples=10
    )
    nll = {name: entry["nll"]["value"] for name, entry in report["conditions"].items()}
    assert set(nll) >= {"full", "gist", "drop", "mean", "swapped"}
    assert all(np.isfinite(list(nll.values())))
    assert nll["drop"] != nll["full"]  # the block changes what the teacher predicts

    encoder = GistEncoder.from_checkpoint(checkpoint)
    assert encoder.info["teacher"]["model"] == family[1]
    assert encoder.bos_sink and encoder.sink_token_id == SPECIAL["bos_token_id"]
    blocks = torch.tensor(cached.input_ids[:4], dtype=torch.long)
    gists = encoder.encode(blocks)
    assert gists.shape == (4, WIDTH) and torch.isfinite(gists).all()
    with torch.no_grad():
        inputs = gistnet_inputs(encoder.teacher, blocks, encoder.model.config)
        torch.testing.assert_close(
            inputs["hidden"], torch.tensor(cached.teacher_hidden[:4]), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(gists, encoder.model(**inputs), atol=1e-6, rtol=0)


def test_teacher_layers_wider_than_the_embeddings_are_refused(family):
    config = load_teacher_config(family[1])
    if family[0] != "opt":
        check_teacher_layers(config, [0, LAYERS])
        return
    with pytest.raises(ConfigError, match="48 wide but its embeddings .* 32"):
        check_teacher_layers(config, [0])


# ---------------------------------------------------------------------- a refused family


@pytest.fixture(scope="module")
def bloom_teacher(tmp_path_factory) -> str:
    """BLOOM: ALiBi attention, and a forward that takes no position_ids."""
    config = transformers.BloomConfig(hidden_size=WIDTH, n_layer=LAYERS, n_head=HEADS)
    return save_teacher(config, tmp_path_factory.mktemp("bloom"))


def test_a_family_without_position_ids_is_refused_naming_it(bloom_teacher, tmp_path):
    with pytest.raises(ConfigError, match="'bloom' .*no position_ids.*tested families: llama"):
        check_teacher_family(load_teacher_config(bloom_teacher))
    with pytest.raises(ConfigError, match="'bloom'"):
        load_teacher(bloom_teacher)
    token_only = small_dataset_config(
        tokenizer=bloom_teacher, teacher_model=bloom_teacher, teacher_states="none"
    )
    with pytest.raises(ConfigError, match="'bloom'"):
        prepare_dataset(validate_dataset_config(token_only), output_dir=tmp_path / "data")


def test_the_training_command_refuses_the_family_with_its_name(
    bloom_teacher, small_dataset, tmp_path, capsys
):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: {num_heads: 4}\n"
        "training: {objective: substitution, max_steps: 1, batch_size: 2, device: cpu}\n"
    )
    code = train_main(
        [
            "--dataset", str(small_dataset), "--config", str(config),
            "--teacher", bloom_teacher, "--output-dir", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "teacher family 'bloom'" in error and "Traceback" not in error
    assert not (tmp_path / "out" / "gistnet.pt").exists()
