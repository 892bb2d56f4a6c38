"""Does a constant BOS before the vector raise what one vector can carry? A free vector per
example fitted with and without it, side by side.

    python -m bench.sink_check [--examples 32] [--steps 300]

For a seeded subset of the sample's validation examples, one free vector per example is
fitted by Adam (lr 0.05, from the mean of the block's embeddings) to the substitution KL,
once as the measurement places it (the vector alone at position T-1) and once with the
BOS embedding before it (at T-2: an attention sink, so the vector need not act as one).
It prints GR and GR over horizon tokens 9+ for both. A cruder search than the report's
oracle (fixed steps, from the block mean rather than the gist, the last vector rather than
the best), so its figures sit below the oracle's; what it compares is the two placements
under the same search. Not part of the measurement: it asks whether the protocol leaves
quality on the table (docs/quality.md, "Quality bars").
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from gistnet.shards import open_shard
from gistnet.substitution import drop_token_id, drop_vector, horizon_log_probs, horizon_targets
from gistnet.teacher import load_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="data/sample_text/validation.arrow")
    parser.add_argument("--teacher", default="samples/teacher")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    teacher = load_teacher(args.teacher, dtype="float32", device=torch.device("cpu"))
    teacher.requires_grad_(False)
    shard = open_shard(args.dataset)
    t = shard.block_size
    rows = np.sort(
        np.random.default_rng(args.seed).choice(shard.num_examples, args.examples, replace=False)
    )
    context = torch.from_numpy(np.asarray(shard.context_input_ids[rows])).long()
    targets = horizon_targets(context, block_size=t)
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    bos = drop_vector(teacher, drop_token_id(tokenizer, teacher)).expand(len(context), -1)

    def nll(log_probs: torch.Tensor) -> torch.Tensor:  # (B, L)
        return -log_probs.gather(-1, targets[..., None]).squeeze(-1)

    with torch.no_grad():
        full = horizon_log_probs(teacher, context, block_size=t)
        nll_full, nll_drop = (
            nll(full),
            nll(horizon_log_probs(teacher, context, block_size=t, vectors=bos)),
        )

    def gap_recovered(n: torch.Tensor, start: int = 0) -> float:
        d, f = nll_drop[:, start:].mean(), nll_full[:, start:].mean()
        return float((d - n[:, start:].mean()) / (d - f))

    start = teacher.get_input_embeddings()(context[:, :t]).mean(1).detach()
    for sink in (False, True):
        vector = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([vector], lr=0.05)

        def inputs(vector: torch.Tensor = vector, sink: bool = sink) -> torch.Tensor:
            return torch.stack([bos, vector], 1) if sink else vector

        for _ in range(args.steps):
            log_probs = horizon_log_probs(teacher, context, block_size=t, vectors=inputs())
            kl = F.kl_div(log_probs, full, reduction="none", log_target=True).sum(-1).mean(-1)
            optimizer.zero_grad()
            kl.sum().backward()  # each example's vector sees its own gradient
            optimizer.step()
        with torch.no_grad():
            n = nll(horizon_log_probs(teacher, context, block_size=t, vectors=inputs()))
        label = "BOS, then the vector" if sink else "the vector alone"
        print(
            f"{label:22s} free vector: GR {gap_recovered(n):.3f}  GR tokens 9+ {gap_recovered(n, 8):.3f}"
            f"  ({args.examples} examples, {args.steps} steps)",
            flush=True,
        )


if __name__ == "__main__":
    main()
