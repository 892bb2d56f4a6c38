"""The long-document evaluation: its conditions' invariants on a tiny random GPT-2, the
report's arithmetic on constructed numbers, and the whole mode on the sample teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gistnet.errors import ConfigError
from gistnet.eval.long import (
    LONG_CONDITIONS,
    LongLayout,
    check_window,
    long_condition_nll,
    prefill_cost,
    score_long_windows,
    summarize_long,
)
from gistnet.eval.report import format_table, write_report
from gistnet.eval.request import EvalSettings
from tests.conftest import SAMPLE_TEACHER, small_dataset_config
from tests.gistnet.evaluation import evaluate

WIDTH = 32  # the shared tiny teacher's


def own_gists(teacher, layout: LongLayout):
    """GistNet's stand-in that hands back each block's own token embeddings (k = T)."""

    def gists_of(blocks: torch.Tensor) -> torch.Tensor:
        return teacher.get_input_embeddings()(blocks)  # (n, T) -> (n, T, D)

    return gists_of


def layout(**overrides) -> LongLayout:
    fields = {"block_size": 4, "gists_per_block": 1, "context_tokens": 16, "recent_tokens": 4,
              "score_tokens": 8}  # fmt: skip
    return LongLayout(**{**fields, **overrides})


def test_blocks_kept_as_their_own_embeddings_score_like_the_full_and_truncated_context(
    teacher, context
):
    # k = T: nothing is compressed, B = C, so every condition but `recent` and `mean` reads
    # the whole text where it stood.
    whole = layout(gists_per_block=4)
    assert whole.compressed_positions == whole.context_tokens
    nll = score_long_windows(
        teacher, context.numpy(), layout=whole, gists_of=own_gists(teacher, whole)
    )
    assert set(nll) == set(LONG_CONDITIONS) and nll["full"].shape == (4, 8)
    np.testing.assert_allclose(nll["truncated"], nll["full"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nll["compressed"], nll["full"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(nll["recent"], nll["full"], atol=1e-3)


def test_one_token_blocks_make_the_mean_the_tokens_own_embedding(teacher, context):
    ones = layout(block_size=1, context_tokens=12)
    nll = score_long_windows(
        teacher, context.numpy(), layout=ones, gists_of=own_gists(teacher, ones)
    )
    for name in ("truncated", "compressed", "mean"):
        np.testing.assert_allclose(nll[name], nll["full"], rtol=1e-5, atol=1e-5)


def test_truncated_and_recent_read_their_last_tokens_as_a_sequence_of_their_own(
    teacher, context
):
    lay = layout()  # m = 3 blocks of 4 as 3 gists, R = 4: B = 7
    nll = long_condition_nll(teacher, context, layout=lay, gists=torch.randn(4, 3, 1, WIDTH))
    C, B, R = 16, lay.compressed_positions, 4
    targets = context[:, C:]

    def scored(first):
        logits = teacher(input_ids=context[:, first : C + 7]).logits[:, -8:]  # from position 0
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")

    torch.testing.assert_close(nll["truncated"], scored(C - B), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll["recent"], scored(C - R), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll["full"], scored(0), rtol=1e-5, atol=1e-5)


def test_a_sink_model_reads_its_gists_and_means_after_the_sink(teacher, context):
    gists = torch.randn(4, 3, 1, WIDTH)
    plain = long_condition_nll(teacher, context, layout=layout(), gists=gists)
    sunk = layout(sink=True)
    after = long_condition_nll(teacher, context, layout=sunk, gists=gists, sink=torch.randn(WIDTH))
    assert sunk.compressed_positions == 8
    for name in ("compressed", "mean"):
        assert not torch.allclose(plain[name], after[name])
    torch.testing.assert_close(plain["recent"], after["recent"])


def test_each_conditions_cost_follows_its_positions(teacher):
    positions = layout(context_tokens=36, recent_tokens=4).context_positions()
    assert positions == {"full": 36, "truncated": 12, "compressed": 12, "mean": 12, "recent": 4}
    cost = {name: prefill_cost(teacher, n) for name, n in positions.items()}
    # 2 layers of width 32: 4 * 32^2 in attention and 8 * 32^2 in the MLP, a key and a
    # value of 32 float32 each a layer and position
    layer_weights = 12 * WIDTH**2
    assert cost["recent"]["prefill_flops"] == 2 * 2 * layer_weights * 4 + 2 * 2 * 16 * WIDTH
    assert cost["full"]["kv_cache_bytes"] == 2 * 2 * WIDTH * 36 * 4
    assert cost["full"]["prefill_flops"] > cost["compressed"]["prefill_flops"]
    assert cost["compressed"] == cost["truncated"]


def test_layouts_and_windows_that_cannot_hold_are_refused(teacher):
    with pytest.raises(ConfigError, match="multiple of the model's block_size"):
        layout(context_tokens=18)
    with pytest.raises(ConfigError, match="at least one block"):
        layout(context_tokens=6)
    with pytest.raises(ConfigError, match="horizon >= 24"):
        check_window(layout(), horizon=16, teacher_positions=64)
    with pytest.raises(ConfigError, match="teacher's 20 positions"):
        check_window(layout(), horizon=64, teacher_positions=20)
    with pytest.raises(ConfigError, match="mode 'long'"):
        EvalSettings(context_tokens=64)
    with pytest.raises(ConfigError, match="below context_tokens"):
        EvalSettings(mode="long", context_tokens=64)
    with pytest.raises(ConfigError, match="oracle_examples"):
        EvalSettings(mode="long", context_tokens=128, oracle_examples=4)
    settings = EvalSettings(mode="long", context_tokens=128)
    assert (settings.recent_tokens, settings.score_tokens) == (64, 64)
    assert EvalSettings.from_dict(settings.to_dict()) == settings


def test_gap_recovered_long_on_constructed_numbers():
    per_window = {"full": 1.0, "truncated": 2.0, "compressed": 1.4, "mean": 1.8, "recent": 2.5}
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, size=(20, 1, 6))
    nll = {name: value + noise[:, 0] for name, value in per_window.items()}  # shared noise
    lay = layout()
    costs = {name: prefill_cost_stub(n) for name, n in lay.context_positions().items()}
    report = summarize_long(nll, layout=lay, costs=costs, doc_ids=np.arange(20) // 2,
                            bootstrap_samples=200)  # fmt: skip
    conditions = report["conditions"]
    assert conditions["compressed"]["gap_recovered_long"]["value"] == pytest.approx(0.6)
    assert conditions["mean"]["gap_recovered_long"]["value"] == pytest.approx(0.2)
    assert conditions["recent"]["gap_recovered_long"]["value"] == pytest.approx(-0.5)
    assert "gap_recovered_long" not in conditions["full"]
    difference = report["comparisons"]["compressed_minus_mean_gap_recovered_long"]
    assert difference["value"] == pytest.approx(0.4) and difference["ci95"][0] > 0
    assert report["quality_bars"] == {
        "truncated_delta_nll_at_least_0.1": True,
        "compressed_gap_recovered_long_at_least_0.5": True,
        "compressed_above_mean_ci_excludes_0": True,
    }
    # a teacher that reads nothing from the old tokens: the ratio is no measurement
    flat = {**nll, "truncated": nll["full"] + 0.01}
    bars = summarize_long(flat, layout=lay, costs=costs, bootstrap_samples=0)["quality_bars"]
    assert bars["truncated_delta_nll_at_least_0.1"] is False
    assert bars["compressed_gap_recovered_long_at_least_0.5"] is None
    assert report["n_documents"] == 10 and report["resampling"] == "documents"


def prefill_cost_stub(positions: int) -> dict[str, int]:
    return {"positions": positions, "prefill_flops": 10 * positions, "kv_cache_bytes": positions}


# --- the mode end to end, on the sample teacher ------------------------------------------


@pytest.fixture(scope="module")
def long_sample(tmp_path_factory):
    """The sample documents prepared as windows of 192 tokens (blocks of 32), and a random
    GistNet for the sample teacher: what the numbers are does not matter here."""
    from gistnet.checkpoint import save_checkpoint
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset
    from gistnet.model import GistNet, GistNetConfig

    root = tmp_path_factory.mktemp("long_sample")
    config = small_dataset_config(horizon=192, teacher_states="none")
    config["splits"] = {"validation": config["splits"]["validation"]}
    prepare_dataset(validate_dataset_config(config), output_dir=root / "data")
    torch.manual_seed(0)
    model = GistNet(GistNetConfig(hidden_size=128, block_size=32, num_heads=4))
    checkpoint = save_checkpoint(
        root / "gistnet.pt", model=model, training_config={}, metrics={},
        dataset={"name": "small"}, teacher={"model": str(SAMPLE_TEACHER), "dtype": "float32"},
        tokenizer=str(SAMPLE_TEACHER),
    )  # fmt: skip
    return {"root": root, "data": root / "data", "checkpoint": checkpoint}


LONG = {"mode": "long", "context_tokens": 128, "recent_tokens": 64, "score_tokens": 64}


def test_the_long_mode_reports_every_condition_with_its_cost(long_sample, tmp_path):
    progress = []
    report = evaluate(long_sample["checkpoint"], long_sample["data"], device="cpu",
                      batch_size=16, bootstrap_samples=50, max_examples=12,
                      on_progress=lambda *a: progress.append(a), **LONG)  # fmt: skip
    assert report["mode"] == "long" and list(report["conditions"]) == list(LONG_CONDITIONS)
    assert report["compressed_blocks"] == 2 and report["compressed_positions"] == 66
    assert progress[-1][0] == progress[-1][1] == report["n_examples"] > 0
    conditions = report["conditions"]
    assert conditions["full"]["positions"] == 128 and conditions["recent"]["positions"] == 64
    assert conditions["truncated"]["kv_cache_bytes"] == conditions["compressed"]["kv_cache_bytes"]
    assert conditions["full"]["prefill_flops"] > conditions["compressed"]["prefill_flops"]
    for name in LONG_CONDITIONS:
        assert conditions[name]["nll"]["ci95"] is not None
        assert len(conditions[name]["nll_per_position"]) == 64
    assert report["n_examples"] == 12 and report["resampling"] == "documents"
    json.dumps(report, allow_nan=False)
    table = format_table(report)
    assert "GR_long" in table and "compressed" in table and "KV cache" in table
    paths = write_report(report, tmp_path)
    assert paths["plot"].is_file()


def test_the_long_mode_refuses_a_context_longer_than_the_windows(long_sample):
    with pytest.raises(ConfigError, match="horizon >= 256"):
        evaluate(long_sample["checkpoint"], long_sample["data"], device="cpu",
                 **{**LONG, "context_tokens": 192})  # fmt: skip


def test_the_evaluation_command_takes_the_long_mode(long_sample, capsys):
    from tools.evaluate_gistnet import main

    out = long_sample["root"] / "eval"
    code = main([
        "--checkpoint", str(long_sample["checkpoint"]), "--dataset", str(long_sample["data"]),
        "--out", str(out), "--device", "cpu", "--bootstrap-samples", "20", "--mode", "long",
        "--context-tokens", "128", "--recent-tokens", "64", "--score-tokens", "32",
    ])  # fmt: skip
    assert code == 0
    assert "GR_long(compressed) - GR_long(mean)" in capsys.readouterr().out
    assert json.loads((out / "evaluation.json").read_text())["score_tokens"] == 32
