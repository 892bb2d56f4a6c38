"""Check that the sample makes a good GistNet task: a block matters for the text after
it, the cheap stand-ins for it (nothing, the mean of its embeddings) lose much of that,
and one vector in the teacher's input space can carry most of it.

For every validation block b (32 tokens) whose next block h lies in the same story, the
teacher scores h under:

- full:  b at positions 0..31, then h at 32..63
- drop:  one position 31 holding the `<|endoftext|>` embedding, then h at 32..63
- mean:  position 31 holding the mean of b's input embeddings, then h
- free:  position 31 holding a vector optimised for that one example (Adam on the KL
         from the full to the substituted distributions over h, through the frozen
         teacher): an upper bound on what any encoder of b could give

Gap recovered GR = (NLL_drop - NLL_x) / (NLL_drop - NLL_full).

    python -m bench.sample_check [--teacher samples/teacher] [--write-readme]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from gistnet.sample.corpus import read_corpus
from gistnet.sample.teacher import README_CHECK_BEGIN, README_CHECK_END


@dataclass(frozen=True)
class Examples:
    blocks: torch.Tensor  # (N, T) token ids of b
    horizons: torch.Tensor  # (N, T) token ids of h, the block after b


def make_examples(tokenizer, texts: list[str], *, block_size: int) -> Examples:
    """One example per block whose next block is complete and in the same story."""
    blocks, horizons = [], []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids = torch.tensor(ids, dtype=torch.long)
        n_blocks = ids.numel() // block_size
        chunks = ids[: n_blocks * block_size].view(n_blocks, block_size)
        blocks.append(chunks[:-1])
        horizons.append(chunks[1:])
    return Examples(torch.cat(blocks), torch.cat(horizons))


def horizon_logits_full(teacher, blocks: torch.Tensor, horizons: torch.Tensor) -> torch.Tensor:
    """Logits that predict each token of h after reading b then h: (N, T, V)."""
    t = blocks.shape[1]
    ids = torch.cat([blocks, horizons], dim=1)  # (N, 2T)
    logits = teacher(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    return logits[:, t - 1 : 2 * t - 1]


def horizon_logits_substituted(
    teacher, substitute: torch.Tensor, horizons: torch.Tensor
) -> torch.Tensor:
    """Logits for h when one vector (N, D) at b's last position stands in for b: (N, T, V)."""
    n, t = horizons.shape
    embed = teacher.get_input_embeddings()
    inputs = torch.cat([substitute[:, None, :], embed(horizons)], dim=1)  # (N, 1+T, D)
    positions = torch.arange(t - 1, 2 * t, device=horizons.device).expand(n, -1)
    mask = torch.ones(n, t + 1, dtype=torch.long, device=horizons.device)
    logits = teacher(inputs_embeds=inputs, position_ids=positions, attention_mask=mask).logits
    return logits[:, :t]


def per_example_nll(logits: torch.Tensor, horizons: torch.Tensor) -> torch.Tensor:
    """Mean NLL over the tokens of h, for each example: (N,)."""
    nll = F.cross_entropy(logits.flatten(0, 1), horizons.flatten(), reduction="none")
    return nll.view_as(horizons).float().mean(dim=1)


@torch.no_grad()
def condition_nlls(
    teacher, examples: Examples, *, batch_size: int = 128
) -> dict[str, torch.Tensor]:
    """Per-example NLL of h under full, drop and mean."""
    embed = teacher.get_input_embeddings()
    eos = embed.weight[teacher.config.eos_token_id]
    out: dict[str, list[torch.Tensor]] = {"full": [], "drop": [], "mean": []}
    for start in range(0, examples.blocks.shape[0], batch_size):
        b = examples.blocks[start : start + batch_size]
        h = examples.horizons[start : start + batch_size]
        out["full"].append(per_example_nll(horizon_logits_full(teacher, b, h), h))
        drop = eos.expand(b.shape[0], -1)
        out["drop"].append(per_example_nll(horizon_logits_substituted(teacher, drop, h), h))
        mean = embed(b).mean(dim=1)  # (N, T, D) -> (N, D)
        out["mean"].append(per_example_nll(horizon_logits_substituted(teacher, mean, h), h))
    return {name: torch.cat(parts) for name, parts in out.items()}


def optimise_free_vectors(
    teacher, examples: Examples, *, steps: int, learning_rate: float
) -> torch.Tensor:
    """One vector per example that makes the substituted h distribution match the full one
    (KL(full || substituted), summed over h's tokens); returns their NLL of h: (N,)."""
    embed = teacher.get_input_embeddings()
    with torch.no_grad():
        target = F.log_softmax(
            horizon_logits_full(teacher, examples.blocks, examples.horizons), dim=-1
        )
        start = embed(examples.blocks).mean(dim=1)
    vectors = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.Adam([vectors], lr=learning_rate)
    for _ in range(steps):
        logits = horizon_logits_substituted(teacher, vectors, examples.horizons)
        log_probs = F.log_softmax(logits, dim=-1)
        kl = F.kl_div(log_probs, target, log_target=True, reduction="none").sum(dim=(1, 2))
        optimizer.zero_grad(set_to_none=True)
        kl.mean().backward()
        optimizer.step()
    with torch.no_grad():
        logits = horizon_logits_substituted(teacher, vectors, examples.horizons)
        return per_example_nll(logits, examples.horizons)


def gap_recovered(drop: float, x: float, full: float) -> float:
    return (drop - x) / (drop - full)


def run_check(
    *,
    teacher_dir: str,
    text_path: str,
    block_size: int,
    free_examples: int,
    free_steps: int,
    free_learning_rate: float,
) -> str:
    """Measure everything and return it as a Markdown section."""
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    teacher.requires_grad_(False)
    examples = make_examples(tokenizer, read_corpus(text_path), block_size=block_size)
    n = examples.blocks.shape[0]
    nll = condition_nlls(teacher, examples)
    means = {name: values.mean().item() for name, values in nll.items()}

    # The free vectors are costly, so they get evenly spaced examples across the split.
    chosen = torch.linspace(0, n - 1, free_examples).round().long()
    subset = Examples(examples.blocks[chosen], examples.horizons[chosen])
    free_nll = optimise_free_vectors(
        teacher, subset, steps=free_steps, learning_rate=free_learning_rate
    )
    sub = {name: values[chosen].mean().item() for name, values in nll.items()}
    sub["free"] = free_nll.mean().item()
    seconds = time.perf_counter() - started

    def row(name: str, values: dict[str, float]) -> str:
        gr = gap_recovered(values["drop"], values[name], values["full"])
        delta = values[name] - values["full"]
        return f"| {name} | {values[name]:.3f} | {delta:+.3f} | {gr:.3f} |"

    header = "| condition | NLL of h (nats/token) | minus full | GR |\n| --- | --- | --- | --- |"
    return "\n".join(
        [
            f"Measured by `python -m bench.sample_check` on `{text_path}` "
            f"(block {block_size}, h = the next {block_size} tokens at positions "
            f"{block_size}..{2 * block_size - 1}, substitutes at position {block_size - 1}).",
            "",
            f"All {n} validation examples:",
            "",
            header,
            *(row(name, means) for name in ("full", "drop", "mean")),
            "",
            f"Free vectors, one per example, optimised for {free_steps} Adam steps "
            f"(lr {free_learning_rate}, from the block mean) on the KL to the full "
            f"distributions over h, on {free_examples} evenly spaced examples:",
            "",
            header,
            *(row(name, sub) for name in ("full", "drop", "mean", "free")),
            "",
            f"ΔNLL(drop) = {means['drop'] - means['full']:.3f} nats/token; "
            f"GR(mean) = {gap_recovered(means['drop'], means['mean'], means['full']):.3f}; "
            f"GR(free) = {gap_recovered(sub['drop'], sub['free'], sub['full']):.3f}. "
            f"({seconds:.0f} s on {torch.get_num_threads()} CPU threads.)",
        ]
    )


def write_into_readme(readme: Path, section: str) -> None:
    from bench.report import replace_between_markers

    replace_between_markers(readme, README_CHECK_BEGIN, README_CHECK_END, section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure full / drop / mean / free on the sample.")
    parser.add_argument("--teacher", default="samples/teacher")
    parser.add_argument("--text", default="samples/sample_text/validation.jsonl")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--free-examples", type=int, default=64)
    parser.add_argument("--free-steps", type=int, default=600)
    parser.add_argument("--free-lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-readme", action="store_true", help="record in the teacher README")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    section = run_check(
        teacher_dir=args.teacher,
        text_path=args.text,
        block_size=args.block_size,
        free_examples=args.free_examples,
        free_steps=args.free_steps,
        free_learning_rate=args.free_lr,
    )
    print(section)
    if args.write_readme:
        write_into_readme(Path(args.teacher) / "README.md", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
