"""Random Llama shapes of about 1B and 8B parameters on a GPU, for bench/speed.py: the
substitution step in bfloat16 against the GPU's published dense bfloat16 peak (MFU) and
against the matmul rate measured in the same run. The shapes are built from their
configs with random weights: nothing is downloaded, and speed does not depend on the
weights."""

from __future__ import annotations

import statistics

import torch

from bench import flops
from bench.trainer_steps import step_times

# Dense bfloat16 peaks as published, FLOP/s, by a word of the device's name.
PUBLISHED_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
LARGE_SHAPES = {
    "Llama ~1B (Llama-3.2-1B's shape)": {
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "tie_word_embeddings": True,
    },
    "Llama ~8B (Llama-3.1-8B's shape)": {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "tie_word_embeddings": False,
    },
}  # fmt: skip


def published_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for word, peak in PUBLISHED_BF16_PEAK.items() if word in name), None)


def large_shape_training(
    name: str, settings: dict, *, device, batch: int, steps: int, compiled: bool, bound
) -> dict:
    """Substitution steps on a random bfloat16 Llama of this shape with the shipped
    preset's GistNet: the objective's pieces as `gistnet.train._Objective` calls them
    (its loader needs the teacher saved to disk, 16 GB at 8B parameters)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from gistnet.config import GistNetConfig
    from gistnet.memory import TeacherShape
    from gistnet.model import GistNet
    from gistnet.substitution import SubstitutionLoss
    from gistnet.teacher import compile_for_training, gistnet_inputs

    config = AutoConfig.for_model("llama", **settings)
    torch.manual_seed(0)
    with torch.device(device):
        teacher = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    teacher.eval().requires_grad_(False)
    block, horizon = 32, 64
    model_config = GistNetConfig.preset(
        "substitution",
        hidden_size=config.hidden_size,
        block_size=block,
        num_heads=config.num_attention_heads,
    )
    gistnet = GistNet(model_config).to(device)
    optimizer = gistnet.optimizer(lr=3e-3, weight_decay=0.0)
    objective = SubstitutionLoss(
        teacher, block_size=block, nll_weight=0.3, bos_sink=True, rest_weight=2.5
    )
    if compiled:
        compile_for_training(teacher, gistnet, backend="inductor", mode=None)
    windows = torch.randint(0, config.vocab_size, (batch, horizon), device=device)
    layers = model_config.teacher_layers

    def step(_i: int) -> None:
        full, states, layer_states = objective.full_and_states(windows, layers)
        inputs = gistnet_inputs(
            teacher, windows[:, :block], model_config, states=states, layer_states=layer_states
        )
        loss, _ = objective(gistnet(**inputs), windows, full=full)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gistnet.parameters(), 1.0)
        optimizer.step()

    times = step_times(step, steps, device)
    shape = TeacherShape.from_hf_config(config)
    counted = flops.substitution_step(shape, model_config, horizon=horizon, batch=batch)["total"]
    step_s = statistics.median(times[1:])
    peak = published_peak(device)
    figures = {
        "shape": name,
        "parameters_b": sum(p.numel() for p in teacher.parameters()) / 1e9,
        "batch": batch,
        "step_s": step_s,
        "examples_per_s": batch / step_s,
        "tflop": counted / 1e12,
        "tflop_per_s": counted / step_s / 1e12,
        "mfu_measured": counted / step_s / bound["bfloat16"],
    }
    if peak is not None:
        figures["mfu_published"] = counted / step_s / peak
    if compiled:
        figures["compile_s"] = max(times[0] - step_s, 1e-9)
    return figures
