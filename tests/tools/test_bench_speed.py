"""`bench.speed`: the FLOPs it counts from the shapes are those torch's own counter counts
on the same models, and its smoke mode runs every path and reports each with finite,
positive figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from bench import flops
from gistnet.config import GistNetConfig
from gistnet.memory import TeacherShape
from gistnet.model import GistNet

ROOT = Path(__file__).resolve().parents[2]
BATCH, TOKENS, LOGITS = 2, 40, 16
SMOLLM2 = TeacherShape(
    layers=30, width=576, vocab=49152, mlp_width=1536, kv_width=192, gated_mlp=True
)


def tiny_llama(attention: str) -> tuple[LlamaForCausalLM, TeacherShape]:
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        attn_implementation=attention,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    return model, TeacherShape.from_hf_config(config)


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_the_forward_count_is_torchs_on_an_eager_llama():
    # Eager attention multiplies the whole (T, T) square, masked or not: torch counts the
    # pairs without the causal triangle, so the count to compare is causal=False.
    model, shape = tiny_llama("eager")
    ids = torch.randint(0, 100, (BATCH, TOKENS))
    torch_count = counted(lambda: model(input_ids=ids, logits_to_keep=LOGITS, use_cache=False))
    ours = flops.forward_parts(shape, TOKENS, LOGITS, causal=False)
    assert torch_count == BATCH * ours.total
    assert ours.attention == 4 * 2 * 64 * TOKENS * TOKENS


def test_the_backward_to_the_inputs_count_is_torchs():
    # The frozen teacher's backward on the gist side: the inputs' gradient alone.
    model, shape = tiny_llama("eager")
    embeds = torch.randn(BATCH, TOKENS, 64, requires_grad=True)
    out = model(inputs_embeds=embeds, logits_to_keep=LOGITS, use_cache=False)
    torch_count = counted(lambda: out.logits.float().sum().backward())
    assert embeds.grad is not None
    ours = flops.input_backward_parts(shape, TOKENS, LOGITS, causal=False)
    assert torch_count == BATCH * ours.total


def test_with_sdpa_torch_counts_the_weight_products_and_at_most_the_attention_square():
    # On the CPU torch's counter has no formula for the SDPA kernel it runs: it counts the
    # weight products exactly, and the attention as 0 (or, where it counts it, the square).
    model, shape = tiny_llama("sdpa")
    ids = torch.randint(0, 100, (BATCH, TOKENS))
    torch_count = counted(lambda: model(input_ids=ids, logits_to_keep=LOGITS, use_cache=False))
    ours = flops.forward_parts(shape, TOKENS, LOGITS)
    attention = torch_count - BATCH * ours.matrices
    square = BATCH * flops.forward_parts(shape, TOKENS, LOGITS, causal=False).attention
    assert attention in (0, square)
    assert flops.forward_flops(shape, TOKENS, LOGITS) == ours.matrices + 4 * 2 * 64 * 820


@pytest.mark.parametrize(
    "config",
    [
        GistNetConfig.preset("substitution", hidden_size=64, block_size=8, num_heads=4),
        GistNetConfig(hidden_size=64, block_size=8, num_heads=4, gists_per_block=2, num_layers=2),
    ],
    ids=["shipped preset", "two layers, two gists"],
)
def test_gistnets_weight_products_are_torchs_count(config):
    model = GistNet(config)
    inputs = {"hidden": torch.randn(3, 8, 64)}
    if config.token_embeddings:
        inputs["embeddings"] = torch.randn(3, 8, 64)
    if config.teacher_layers:
        inputs["layer_states"] = torch.randn(3, 8, len(config.teacher_layers), 64)
    with torch.no_grad():
        torch_count = counted(lambda: model(**inputs))
    assert torch_count == 3 * flops.gistnet_parts(config).matrices  # SDPA uncounted on the CPU


def test_a_smollm2_substitution_example_costs_issue_22s_33_gflop():
    config = GistNetConfig(hidden_size=576, block_size=32)
    step = flops.substitution_step(SMOLLM2, config, horizon=64, batch=8)
    per_layer = 2 * 576**2 + 2 * 576 * 192 + 3 * 576 * 1536  # q, o; k, v; gate, up, down
    assert flops.layer_matrix_parameters(SMOLLM2) == 30 * per_layer
    assert 32e9 < step["total"] / 8 < 35e9
    assert step["total"] == step["full"] + step["gist_side"] + step["gistnet"]
    # The gist side reads one vector where the full side reads the 32-token block.
    assert step["gist_side"] > step["full"]
    # reconstruct_weight: the block read after its gist, a second gist side as large as
    # the horizon's here (32 tokens scored either way): 17 GFLOP an example on top.
    both = flops.substitution_step(SMOLLM2, config, horizon=64, batch=8, reconstruct=True)
    assert both["total"] == step["total"] + both["reconstruct"]
    assert both["reconstruct"] == step["gist_side"]


def _figures(value, path=""):
    """Every number under `value` with where it is, bools and error counts aside."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "errors":
                yield from _figures(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _figures(item, f"{path}[{i}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, value


def test_the_smoke_run_reports_every_path_with_finite_positive_figures(tmp_path):
    docs = ROOT / "docs" / "benchmarks.md"
    before = docs.read_bytes() if docs.exists() else None
    out = tmp_path / "speed.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.speed", "--smoke", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    results, markdown = report["results"], report["markdown"]

    expected = {"bound", "training", "evaluation", "gist_raw", "gist_http", "preparation"}
    expected |= {"memory", "checkpointing", "horizon_loss", "large", "verdicts"}
    assert set(results) == expected
    runs = {(r["model"], r["dtype"]) for r in results["training"]}
    assert runs == {(m, d) for m in ("default", "shipped") for d in ("float32", "bfloat16")}
    assert [e["dtype"] for e in results["evaluation"]] == ["float32", "bfloat16"]
    assert results["gist_raw"]["raw_bf16_blocks_per_s"] > 0
    assert [r["clients"] for r in results["gist_http"]] == [1, 8, 64]
    assert all(r["errors"] == 0 for r in results["gist_http"])
    assert [p["states"] for p in results["preparation"]] == ["none", "cache"]
    assert [m["checkpointing"] for m in results["checkpointing"]] == [False, True]
    assert [r["formula"] for r in results["horizon_loss"]][0].startswith("fused")
    assert results["large"] and results["verdicts"]
    assert all(isinstance(v["met"], bool) for v in results["verdicts"])
    figures = list(_figures(results))
    assert len(figures) > 100
    bad = [(path, v) for path, v in figures if not (math.isfinite(v) and v > 0)]
    assert not bad

    for heading in ("The bound", "Hot paths", "Memory", "Large random shapes", "Verdicts"):
        assert f"### {heading}" in markdown
    assert "Command: `python -m bench.speed --smoke" in markdown
    assert markdown.count("**met**") + markdown.count("**NOT met**") == len(results["verdicts"])
    assert (docs.read_bytes() if docs.exists() else None) == before  # smoke writes no docs
