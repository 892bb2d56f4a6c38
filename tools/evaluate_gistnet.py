"""Measure how well a GistNet checkpoint's gists stand in for their blocks (ΔNLL@H).

    python -m tools.evaluate_gistnet --checkpoint artifacts/gistnet/gistnet.pt \
        --dataset data/sample_text --split validation --out artifacts/eval

With --mode long it scores the tokens after a long context instead, read whole,
truncated, or with its oldest blocks as gists (gistnet.eval.long):

    python -m tools.evaluate_gistnet --checkpoint ... --dataset ... --mode long \
        --context-tokens 512 --recent-tokens 64 --score-tokens 64

Each of --checkpoint, --dataset and --out may be an object-store URL (s3://...).
--mlflow URI --mlflow-run-id ID adds the report (and its headline figures) to the MLflow
run that trained the model.
"""

from __future__ import annotations

import argparse
import sys

from gistnet.errors import GistNetError
from gistnet.eval.report import format_table, write_report
from gistnet.eval.request import EvalRequest, EvalSettings
from gistnet.eval.run import evaluate_gistnet
from gistnet.refine import RefineSettings
from gistnet.storage import is_url, join, open_local, open_local_dataset, writing_to
from gistnet.tracking import log_evaluation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="gistnet.pt written by training")
    parser.add_argument(
        "--dataset",
        required=True,
        help="a shard file, a quoted glob of a split's shards, or a dataset folder (see --split)",
    )
    parser.add_argument(
        "--split", help="split to score when --dataset is a folder (default: validation)"
    )
    parser.add_argument("--out", default="artifacts/eval", help="folder for the JSON and the plot")
    parser.add_argument("--max-examples", type=int, help="score a seeded random subset this large")
    parser.add_argument(
        "--oracle-examples",
        type=int,
        help="add the oracle condition: free vectors fitted to each of a seeded subset of "
        "this many examples (the ceiling of what the gist's vectors can carry)",
    )
    parser.add_argument(
        "--refine-samples",
        type=int,
        help="add the refined condition: every gist refined from its block alone against "
        "this many continuations the teacher samples (gistnet.refine; e.g. 8)",
    )
    parser.add_argument(
        "--refine-steps", type=int, default=50, help="Adam steps per refined gist (default 50)"
    )
    parser.add_argument("--refine-lr", type=float, default=0.05)
    parser.add_argument("--refine-temperature", type=float, default=0.8)
    parser.add_argument(
        "--mode",
        choices=("blocks", "long"),
        default="blocks",
        help="blocks: each example's block read as its gist (default); long: the tokens after "
        "a long context, whole, truncated or compressed",
    )
    parser.add_argument("--context-tokens", type=int, help="long mode: C, the context's tokens")
    parser.add_argument(
        "--recent-tokens", type=int, help="long mode: R, the latest tokens kept raw (default 64)"
    )
    parser.add_argument(
        "--score-tokens", type=int, help="long mode: S, tokens scored after it (default 64)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bootstrap-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--teacher",
        help="teacher model (hub id or folder) the shard's states came from "
        "(default: the dataset's, else the checkpoint's)",
    )
    parser.add_argument(
        "--tokenizer", help="tokenizer (default: the dataset's, else the checkpoint's)"
    )
    parser.add_argument(
        "--teacher-dtype",
        choices=("float32", "bfloat16", "float16"),
        help="the dtype the teacher computes in (default: the dataset's; bfloat16 is faster "
        "on a GPU or a CPU with bfloat16 units; scores are float32 either way)",
    )
    parser.add_argument(
        "--mlflow", metavar="URI", help="also log the report to an MLflow run (with --mlflow-run-id)"
    )
    parser.add_argument(
        "--mlflow-run-id", help="the run: the one tools.train_gistnet --mlflow made for the model"
    )
    args = parser.parse_args(argv)
    if (args.mlflow is None) != (args.mlflow_run_id is None):
        parser.error("--mlflow and --mlflow-run-id go together")

    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(unit="ex", dynamic_ncols=True, desc="scoring")

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    try:
        refine = None
        if args.refine_samples is not None:
            refine = RefineSettings(
                samples=args.refine_samples,
                steps=args.refine_steps,
                lr=args.refine_lr,
                temperature=args.refine_temperature,
                seed=args.seed,
            )
        settings = EvalSettings(
            max_examples=args.max_examples,
            bootstrap_samples=args.bootstrap_samples,
            seed=args.seed,
            oracle_examples=args.oracle_examples,
            refine=refine,
            mode=args.mode,
            context_tokens=args.context_tokens,
            recent_tokens=args.recent_tokens,
            score_tokens=args.score_tokens,
        )
        request = EvalRequest(
            checkpoint=open_local(args.checkpoint),
            dataset=open_local_dataset(args.dataset, splits=[args.split or "validation"]),
            split=args.split,
            settings=settings,
            device=args.device,
            batch_size=args.batch_size,
            tokenizer=args.tokenizer,
            teacher_model=args.teacher,
            teacher_dtype=args.teacher_dtype,
        )
        report = evaluate_gistnet(request, on_progress=progress)
    except GistNetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    try:
        with writing_to(args.out) as output:
            paths = write_report(report, output)
            if args.mlflow is not None:
                log_evaluation(
                    args.mlflow, report=report, files=list(paths.values()),
                    run_id=args.mlflow_run_id,
                )  # fmt: skip
    except GistNetError as err:  # the bucket refused the report: say so, keep the table
        print(format_table(report))
        print(f"error: {err}", file=sys.stderr)
        return 2
    if is_url(args.out):
        paths = {kind: join(args.out, path.name) for kind, path in paths.items()}
    print(format_table(report))
    print(f"report -> {paths['json']}\nplot   -> {paths['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
