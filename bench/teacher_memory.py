"""The memory a teacher of each size needs to train, evaluate and serve with, estimated from
its shapes (no weights are loaded: each model is built on torch's meta device, so the
parameter counts are exact), beside the estimate POST /train refuses a run by.

    python -m bench.teacher_memory [--batch 8] [--eval-batch 64] [--gist-batch 64]
    python -m bench.teacher_memory --measure SmolLM2-135M [--batch 4] [--eval-batch 16]

`--measure` checks the estimate against the peak RSS of a randomly initialised model of
that shape on the CPU: one substitution step (the teacher's two forwards, the backward
into GistNet, an AdamW step) and one evaluation forward, each in a process of its own,
its peak over what the process held before building the model.

The shapes are those of the public config.json of each model. The activations are counted
as below, per example of horizon H = 64 (a block of T = 32, then L = 32 horizon tokens),
in the teacher's dtype (b bytes) unless said:

- training (substitution, one gist a block): the gist forward keeps for backward, per fed
  token (L of them) and layer, the two norms' inputs and outputs, q, k, v and the rotated
  q and k, the attention output, and the MLP's up, gate, activation and product (about
  7 D + 3 D_kv + 4 F values), and the attention weights of the unfused kernel (heads x L);
  the logits over the horizon (L x V) in b, with their float32 copy's log-softmax, the
  `full` log-probabilities, the KL's temporaries and their gradient (about 16 bytes per
  logit). The frozen teacher has no gradients nor optimizer state; GistNet (as the
  `substitution` preset builds it, width D) has both, in float32.
- evaluation (inference mode, one condition a forward): the horizon's logits in b, their
  float32 copy and log-softmax (b + 8 bytes a logit), and one layer's transient
  activations at a time.
- /gist and cached preparation: the base model only (no logits), one layer's transient
  activations at a time over the block's T tokens.

An estimate: allocator slack, the framework's workspace and the process itself come on top.
Results go to docs/teachers.md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

BLOCK, HORIZON = 32, 64
GIB = 1024**3

# name: (family, config keyword arguments), from each model's config.json
TEACHERS = {
    "sample teacher": ("gpt2", {
        "n_embd": 128, "n_layer": 4, "n_head": 4, "vocab_size": 1971, "bos_token_id": 0,
        "eos_token_id": 0,
    }),
    "GPT-2 124M": ("gpt2", {"n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257}),
    "OPT-125m": ("opt", {
        "hidden_size": 768, "ffn_dim": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "vocab_size": 50272, "word_embed_proj_dim": 768,
    }),
    "Pythia-160M": ("gpt_neox", {
        "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "vocab_size": 50304, "tie_word_embeddings": False,
    }),
    "SmolLM2-135M": ("llama", {
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
        "tie_word_embeddings": True,
    }),
    "Qwen2.5-0.5B": ("qwen2", {
        "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
        "tie_word_embeddings": True,
    }),
    "Llama-3.2-1B": ("llama", {
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "tie_word_embeddings": True,
    }),
    "Gemma-2B": ("gemma", {
        "hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
        "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
        "vocab_size": 256000,
    }),
    "Phi-3-mini": ("phi3", {
        "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
    }),
    "Mistral-7B": ("mistral", {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
    }),
}  # fmt: skip


def gistnet_config(width: int):
    """The GistNet the shipped substitution configs train for a teacher this wide: the
    `substitution` preset (one layer, 4 queries a gist, the gist MLP, the block's token
    embeddings and hidden state 0 read beside the last layer's states, gists after BOS)."""
    import dataclasses

    from gistnet.config import validate_run_config

    preset = validate_run_config({"preset": "substitution"}).model
    return dataclasses.replace(preset, hidden_size=width, block_size=BLOCK)


@dataclass(frozen=True)
class Shape:
    parameters: int
    layers: int
    width: int
    kv_width: int
    mlp_width: int
    heads: int
    vocab: int
    config: object


def shape_of(family: str, settings: dict) -> Shape:
    """The exact parameter count (the model built on the meta device) and the shapes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(family, **settings)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    width = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or width // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    mlp = next(
        (getattr(config, a) for a in ("intermediate_size", "ffn_dim", "n_inner") if getattr(config, a, None)),
        4 * width,
    )
    return Shape(
        parameters=sum(p.numel() for p in model.parameters()),
        layers=config.num_hidden_layers,
        width=width,
        kv_width=kv_heads * head_dim,
        mlp_width=mlp,
        heads=heads,
        vocab=config.vocab_size,
        config=config,
    )


def training_bytes(shape: Shape, *, batch: int, dtype_bytes: int) -> int:
    """Teacher weights, the gist forward's kept activations and the horizon's logits for a
    batch, and GistNet with its gradients and AdamW moments (gistnet.memory's count)."""
    from gistnet.memory import training_memory

    tokens = HORIZON - BLOCK
    d, kv, f = shape.width, shape.kv_width, shape.mlp_width
    per_token_layer = (7 * d + 3 * kv + 4 * f + shape.heads * tokens) * dtype_bytes
    kept = batch * tokens * shape.layers * per_token_layer
    logits = batch * tokens * shape.vocab * (16 + dtype_bytes)
    gistnet = training_memory(gistnet_config(d), batch_size=batch)
    return shape.parameters * dtype_bytes + kept + logits + gistnet.total


def evaluation_bytes(shape: Shape, *, batch: int, dtype_bytes: int) -> int:
    tokens = HORIZON - BLOCK
    layer = batch * tokens * (4 * shape.width + 2 * shape.mlp_width + shape.heads * tokens)
    logits = batch * tokens * shape.vocab * (8 + dtype_bytes)
    return shape.parameters * dtype_bytes + layer * dtype_bytes + logits


def serving_bytes(shape: Shape, *, blocks: int, dtype_bytes: int) -> int:
    layer = blocks * BLOCK * (4 * shape.width + 2 * shape.mlp_width + shape.heads * BLOCK)
    states = blocks * BLOCK * shape.width * 4  # the float32 states GistNet reads
    return shape.parameters * dtype_bytes + layer * dtype_bytes + states


def platform_estimate(shape: Shape, *, batch: int) -> int:
    """What POST /train compares with a worker's memory (gistnet.memory.training_memory)."""
    from gistnet.memory import TeacherShape, training_memory

    estimate = training_memory(
        gistnet_config(shape.width),
        batch_size=batch,
        objective="substitution",
        horizon=HORIZON,
        teacher=TeacherShape.from_hf_config(shape.config),
    )
    return estimate.total


def gib(count: int) -> str:
    value = count / GIB
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def table(*, batch: int, eval_batch: int, gist_batch: int) -> str:
    lines = [
        f"| teacher | family | parameters | weights f32 / bf16 | training, batch {batch} "
        f"f32 / bf16 | evaluation, batch {eval_batch} f32 / bf16 | /gist, {gist_batch} "
        f"blocks f32 / bf16 | POST /train's estimate, batch {batch} |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (family, settings) in TEACHERS.items():
        shape = shape_of(family, settings)
        pairs = [
            (shape.parameters * 4, shape.parameters * 2),
            (training_bytes(shape, batch=batch, dtype_bytes=4),
             training_bytes(shape, batch=batch, dtype_bytes=2)),
            (evaluation_bytes(shape, batch=eval_batch, dtype_bytes=4),
             evaluation_bytes(shape, batch=eval_batch, dtype_bytes=2)),
            (serving_bytes(shape, blocks=gist_batch, dtype_bytes=4),
             serving_bytes(shape, blocks=gist_batch, dtype_bytes=2)),
        ]  # fmt: skip
        cells = " | ".join(f"{gib(a)} / {gib(b)}" for a, b in pairs)
        lines.append(
            f"| {name} | `{family}` | {shape.parameters / 1e6:,.1f}M | {cells} | "
            f"{gib(platform_estimate(shape, batch=batch))} |"
        )
    return "\n".join(lines)


def _measured_child(name: str, kind: str, batch: int, dtype: str) -> None:
    """In a fresh process: build the model, run `kind` once, print the peak RSS growth."""
    import resource

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from gistnet.model import GistNet
    from gistnet.substitution import SubstitutionLoss, horizon_log_probs
    from gistnet.teacher import gistnet_inputs

    family, settings = TEACHERS[name]
    config = AutoConfig.for_model(family, **settings)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    teacher = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval()
    teacher.requires_grad_(False)
    context = torch.randint(0, config.vocab_size, (batch, HORIZON))
    if kind == "training":
        model_config = gistnet_config(config.hidden_size)
        gistnet = GistNet(model_config)
        optimizer = gistnet.optimizer(lr=1e-3, weight_decay=0.0)
        objective = SubstitutionLoss(teacher, block_size=BLOCK, bos_sink=model_config.bos_sink)
        layers = tuple(model_config.teacher_layers)
        full, states, layer_states = objective.full_and_states(context, layers)
        inputs = gistnet_inputs(
            teacher, context[:, :BLOCK], model_config, states=states, layer_states=layer_states
        )
        loss, _ = objective(gistnet(**inputs), context, full=full)
        loss.backward()
        optimizer.step()
    else:
        with torch.inference_mode():
            horizon_log_probs(teacher, context, block_size=BLOCK)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(peak - before)


def measure(name: str, *, batch: int, eval_batch: int) -> str:
    import subprocess
    import sys

    shape = shape_of(*TEACHERS[name])
    rows = ["| run | dtype | measured peak | estimate |", "| --- | --- | ---: | ---: |"]
    for kind, rows_of, dtype in (
        ("training", batch, "float32"),
        ("training", batch, "bfloat16"),
        ("evaluation", eval_batch, "float32"),
    ):
        child = subprocess.run(
            [sys.executable, "-m", "bench.teacher_memory", "--child", name, kind, str(rows_of), dtype],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        measured = int(child.stdout.split()[-1])
        width = 4 if dtype == "float32" else 2
        if kind == "training":
            estimate = training_bytes(shape, batch=rows_of, dtype_bytes=width)
        else:
            estimate = evaluation_bytes(shape, batch=rows_of, dtype_bytes=width)
        rows.append(f"| {kind}, batch {rows_of} | {dtype} | {gib(measured)} | {gib(estimate)} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="training batch (examples)")
    parser.add_argument("--eval-batch", type=int, default=64, help="evaluation batch (examples)")
    parser.add_argument("--gist-batch", type=int, default=64, help="blocks a /gist forward")
    parser.add_argument("--measure", choices=sorted(TEACHERS), help="measure one teacher's peak")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, kind, batch, dtype = args.child
        _measured_child(name, kind, int(batch), dtype)
        return
    if args.measure:
        print(f"{args.measure}, GiB, peak RSS growth on the CPU against the estimate:\n")
        print(measure(args.measure, batch=args.batch, eval_batch=args.eval_batch))
        return
    print("GiB, estimated from the shapes:\n")
    print(table(batch=args.batch, eval_batch=args.eval_batch, gist_batch=args.gist_batch))


if __name__ == "__main__":
    main()
