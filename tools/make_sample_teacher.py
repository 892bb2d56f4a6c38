"""Make the offline sample: the synthetic corpus, its tokenizer and the tiny teacher.

python -m tools.make_sample_teacher [--out samples/teacher] [--steps N] [--seed S]
python -m tools.make_sample_teacher --corpus-only --train-docs 20000 --corpus-out DIR
python -m tools.make_sample_teacher --corpus-only --long-documents --corpus-out DIR

With --corpus-only it writes the corpus and nothing else. The generator is seeded per
split and its first k stories of n are those of k, so with the default seed a larger
--train-docs extends the shipped train split (samples/sample_text) and the validation
split is the shipped one, story for story. --long-documents writes long documents instead
(gistnet.sample.corpus.LongShape: a story, a second story, the first resumed, so its opening
facts recur only hundreds of tokens later), and with --positions and --seq-len of 1024 or
more trains a teacher whose context covers them.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from tqdm import tqdm

from gistnet.sample.corpus import LongShape, write_corpus
from gistnet.sample.teacher import SampleTeacherConfig, TeacherProgress, build_sample_teacher

DEFAULTS = SampleTeacherConfig()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="samples/teacher", help="folder for teacher + tokenizer")
    parser.add_argument(
        "--corpus-out", default="samples/sample_text", help="folder for train/validation.jsonl"
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps, help="training steps")
    parser.add_argument("--train-docs", type=int, default=DEFAULTS.train_docs)
    parser.add_argument("--validation-docs", type=int, default=DEFAULTS.validation_docs)
    parser.add_argument("--vocab-size", type=int, default=DEFAULTS.vocab_size)
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--seq-len", type=int, default=DEFAULTS.seq_len, help="training window")
    parser.add_argument("--layers", type=int, default=DEFAULTS.n_layer)
    parser.add_argument(
        "--positions", type=int, default=DEFAULTS.n_positions, help="the teacher's context"
    )
    parser.add_argument(
        "--long-documents",
        action="store_true",
        help="long documents whose opening facts recur after a long interlude, not stories",
    )
    parser.add_argument(
        "--interlude",
        type=int,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=DEFAULTS.interlude,
        help="with --long-documents: the interlude's sentences, drawn in LOW ... HIGH "
        "(18 24: the first story resumes about 350 tokens in; 34 42: about 520)",
    )
    parser.add_argument("--width", type=int, default=DEFAULTS.n_embd, help="hidden size D")
    parser.add_argument("--heads", type=int, default=DEFAULTS.n_head)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--corpus-only", action="store_true", help="write the corpus only: no tokenizer, no teacher"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.corpus_only:
        files = write_corpus(
            args.corpus_out,
            seed=args.seed,
            n_train=args.train_docs,
            n_validation=args.validation_docs,
            long=LongShape(interlude=tuple(args.interlude)) if args.long_documents else None,
        )
        print(
            f"corpus written: {files.n_train:,} stories to {files.train_path}, "
            f"{files.n_validation:,} to {files.validation_path}"
        )
        return 0
    config = SampleTeacherConfig(
        seed=args.seed,
        steps=args.steps,
        train_docs=args.train_docs,
        validation_docs=args.validation_docs,
        vocab_size=args.vocab_size,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        n_layer=args.layers,
        n_embd=args.width,
        n_head=args.heads,
        n_positions=args.positions,
        long_documents=args.long_documents,
        interlude=tuple(args.interlude),
    )
    command = shlex.join(["python", "-m", "tools.make_sample_teacher", *(argv or sys.argv[1:])])
    bar = tqdm(total=config.steps, desc="training teacher", disable=args.no_progress)

    def on_progress(progress: TeacherProgress) -> None:
        if progress.stage == "train":
            bar.update(1)
            bar.set_postfix(loss=f"{progress.loss:.3f}")
        elif not args.no_progress:
            tqdm.write(f"{progress.stage}: done")

    try:
        result = build_sample_teacher(
            out_dir=args.out,
            corpus_dir=args.corpus_out,
            config=config,
            command=command,
            on_progress=on_progress,
        )
    finally:
        bar.close()
    print(
        f"teacher written to {result.teacher_dir}: vocab {result.vocab_size}, "
        f"{result.n_parameters:,} parameters, validation perplexity "
        f"{result.validation_perplexity:.2f} (uniform {result.vocab_size}), "
        f"entity words whole {result.entity_words_whole}/{result.entity_words_total}, "
        f"trained in {result.train_seconds:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
