"""Build the sample teacher: a byte-level BPE tokenizer and a tiny GPT-2 trained on the
sample corpus, saved so that `AutoTokenizer` / `AutoModelForCausalLM.from_pretrained`
load them from one folder like any other Hugging Face model.

The teacher is trained on windows cut anywhere in the stream of stories (each followed by
`<|endoftext|>`), with position ids starting at 0 in every window, because evaluation
shows it a block taken from the middle of a story at positions 0..31.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from gistnet.errors import Cancelled, ConfigError
from gistnet.sample.corpus import ENTITY_WORDS, LongShape, read_corpus, write_corpus

END_OF_TEXT = "<|endoftext|>"
README_CHECK_BEGIN = "<!-- sample-check:begin -->"
README_CHECK_END = "<!-- sample-check:end -->"


@dataclass(frozen=True)
class SampleTeacherConfig:
    """Everything that decides the sample teacher; the same values give the same files."""

    seed: int = 0  # seeds the corpus, the weight init and the order of training windows
    train_docs: int = 1300  # ~9.7k (block, next block) examples at block size 32
    validation_docs: int = 200  # ~1.5k examples, above the 1,000 the quality bar asks for
    vocab_size: int = 2048  # an upper bound: BPE runs out of merges just below it on this corpus
    n_embd: int = 128  # the hidden size D a gist vector lives in; small keeps CPU work cheap
    n_layer: int = 4  # enough depth for copy (induction) heads to form
    n_head: int = 4  # 32 dims per head
    n_positions: int = 512  # a whole story (at most ~430 tokens) fits; evaluation needs 64
    seq_len: int = 512  # training window, cut anywhere in the stream of stories
    batch_size: int = 8  # 4k tokens a step
    steps: int = 1200  # about 10 minutes on 2 otherwise idle CPU cores
    learning_rate: float = 2e-3  # high, as tiny models tolerate; cosine-decayed to 10%
    warmup_steps: int = 50  # a short linear warm-up keeps the first Adam steps stable
    weight_decay: float = 0.01  # light: the model is far from overfitting 370k tokens
    threads: int = 2  # torch threads; the build machine has 2 cores
    # Long documents (gistnet.sample.corpus.LongShape) instead of stories: for a teacher
    # whose context must cover facts stated hundreds of tokens earlier (with n_positions
    # and seq_len of 1024 or more).
    long_documents: bool = False
    # With long_documents: the second story's sentences (LongShape.interlude), which set
    # where the first story resumes: (18, 24) about 350 tokens in, (34, 42) about 520.
    interlude: tuple[int, int] = LongShape.interlude


@dataclass(frozen=True)
class TeacherProgress:
    """A progress report: `stage` is "corpus", "tokenizer", "train" or "evaluate"."""

    stage: str
    step: int
    total_steps: int
    loss: float | None = None


@dataclass(frozen=True)
class SampleTeacherResult:
    """What was built and how well the teacher predicts held-out text."""

    teacher_dir: Path
    corpus_dir: Path
    vocab_size: int
    n_parameters: int
    train_tokens: int
    validation_tokens: int
    entity_words_whole: int  # entity words that the tokenizer keeps as one token
    entity_words_total: int
    final_train_loss: float
    validation_nll: float  # nats per token over the validation stream
    validation_perplexity: float
    train_seconds: float  # wall clock; on a shared machine this grows with other load
    train_cpu_seconds: float  # CPU time of this process while training, all threads
    total_seconds: float


def train_tokenizer(texts: list[str], *, vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) trained on `texts`.

    `<|endoftext|>` is bos, eos and pad, as in GPT-2.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
    )


def count_whole_entity_words(tokenizer: PreTrainedTokenizerFast) -> int:
    """How many entity words (with their leading space) encode to exactly one token."""
    return sum(
        len(tokenizer.encode(" " + word, add_special_tokens=False)) == 1 for word in ENTITY_WORDS
    )


def token_stream(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """All texts as one 1-D tensor of token ids, each text followed by `<|endoftext|>`."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def _learning_rate(step: int, config: SampleTeacherConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _new_model(config: SampleTeacherConfig, *, vocab_size: int, eos_id: int) -> GPT2LMHeadModel:
    model_config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        # No dropout: the model is small next to its data, and this keeps training exact.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return GPT2LMHeadModel(model_config)


@torch.no_grad()
def stream_nll(model: GPT2LMHeadModel, stream: torch.Tensor, *, window: int) -> float:
    """Mean NLL (nats/token) over non-overlapping `window`-token windows of `stream`."""
    model.eval()
    n_windows = (stream.numel() - 1) // window
    inputs = stream[: n_windows * window].view(n_windows, window)
    targets = stream[1 : n_windows * window + 1].view(n_windows, window)
    total, count = 0.0, 0
    for start in range(0, n_windows, 32):
        batch = inputs[start : start + 32]
        logits = model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits
        total += torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), targets[start : start + 32].flatten(), reduction="sum"
        ).item()
        count += targets[start : start + 32].numel()
    return total / count


def train_teacher(
    model: GPT2LMHeadModel,
    stream: torch.Tensor,
    config: SampleTeacherConfig,
    *,
    on_progress: Callable[[TeacherProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> float:
    """Train `model` in place on random windows of `stream`; returns the last step's loss."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        betas=(0.9, 0.95),
        weight_decay=config.weight_decay,
    )
    offsets = torch.arange(config.seq_len + 1)
    loss_value = float("nan")
    model.train()
    for step in range(config.steps):
        if should_cancel is not None and should_cancel():
            raise Cancelled("sample teacher training was cancelled")
        starts = torch.randint(
            0, stream.numel() - config.seq_len - 1, (config.batch_size,), generator=generator
        )
        window = stream[starts[:, None] + offsets]  # (B, L+1)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        inputs = window[:, :-1]  # (B, L+1) -> (B, L)
        logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_value = loss.item()
        if on_progress is not None:
            on_progress(TeacherProgress("train", step + 1, config.steps, loss_value))
    model.eval()
    return loss_value


def name_portable_tokenizer_class(folder: Path) -> None:
    """Record the tokenizer class as `PreTrainedTokenizerFast`, which every transformers
    release since 4.x resolves, rather than the 5.x-only name that `save_pretrained` writes."""
    path = folder / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8"))
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_sample_teacher(
    *,
    out_dir: str | Path,
    corpus_dir: str | Path,
    config: SampleTeacherConfig | None = None,
    command: str | None = None,
    on_progress: Callable[[TeacherProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> SampleTeacherResult:
    """Write the corpus into `corpus_dir`, then the tokenizer, the trained teacher and a
    README into `out_dir`. `command` is recorded in the README as the way to remake it."""
    config = config or SampleTeacherConfig()
    if config.seq_len > config.n_positions:
        raise ConfigError(f"seq_len {config.seq_len} exceeds n_positions {config.n_positions}")
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    out, corpus_out = Path(out_dir), Path(corpus_dir)
    out.mkdir(parents=True, exist_ok=True)

    files = write_corpus(
        corpus_out,
        seed=config.seed,
        n_train=config.train_docs,
        n_validation=config.validation_docs,
        long=LongShape(interlude=config.interlude) if config.long_documents else None,
    )
    if on_progress is not None:
        on_progress(TeacherProgress("corpus", 1, 1))
    train_texts = read_corpus(files.train_path)
    validation_texts = read_corpus(files.validation_path)

    tokenizer = train_tokenizer(train_texts, vocab_size=config.vocab_size)
    if on_progress is not None:
        on_progress(TeacherProgress("tokenizer", 1, 1))
    train_stream = token_stream(tokenizer, train_texts)
    validation_stream = token_stream(tokenizer, validation_texts)
    if min(train_stream.numel(), validation_stream.numel()) <= config.seq_len:
        raise ConfigError(
            f"the corpus is too small for training windows of {config.seq_len} tokens: "
            f"ask for more documents or a shorter seq_len"
        )
    tokenizer.model_max_length = config.n_positions

    torch.manual_seed(config.seed)
    model = _new_model(config, vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id)
    train_started, train_cpu_started = time.perf_counter(), time.process_time()
    final_loss = train_teacher(
        model, train_stream, config, on_progress=on_progress, should_cancel=should_cancel
    )
    train_seconds = time.perf_counter() - train_started
    train_cpu_seconds = time.process_time() - train_cpu_started

    validation_nll = stream_nll(model, validation_stream, window=config.seq_len)
    if on_progress is not None:
        on_progress(TeacherProgress("evaluate", 1, 1))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    name_portable_tokenizer_class(out)

    result = SampleTeacherResult(
        teacher_dir=out,
        corpus_dir=corpus_out,
        vocab_size=len(tokenizer),
        n_parameters=sum(p.numel() for p in model.parameters()),
        train_tokens=train_stream.numel(),
        validation_tokens=validation_stream.numel(),
        entity_words_whole=count_whole_entity_words(tokenizer),
        entity_words_total=len(ENTITY_WORDS),
        final_train_loss=final_loss,
        validation_nll=validation_nll,
        validation_perplexity=math.exp(validation_nll),
        train_seconds=train_seconds,
        train_cpu_seconds=train_cpu_seconds,
        total_seconds=time.perf_counter() - started,
    )
    corpus_hashes = {p.name: _sha256(p) for p in (files.train_path, files.validation_path)}
    (out / "README.md").write_text(
        _readme(result, config, command=command, corpus_hashes=corpus_hashes), encoding="utf-8"
    )
    return result


def _readme(
    result: SampleTeacherResult,
    config: SampleTeacherConfig,
    *,
    command: str | None,
    corpus_hashes: dict[str, str],
) -> str:
    settings = "\n".join(f"| `{key}` | {value} |" for key, value in asdict(config).items())
    hashes = "\n".join(f"- `{name}`: sha256 `{digest}`" for name, digest in corpus_hashes.items())
    return f"""# Sample teacher

A tiny GPT-2 and its byte-level BPE tokenizer, trained from scratch on the synthetic
stories of `gistnet/sample/corpus.py`, so that GistNet can be trained and evaluated
end to end without downloading anything. Load it like any Hugging Face model:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
teacher = AutoModelForCausalLM.from_pretrained("{result.teacher_dir.as_posix()}")
tokenizer = AutoTokenizer.from_pretrained("{result.teacher_dir.as_posix()}")
```

## How it was made

```
{command or "python -m tools.make_sample_teacher"}
```

Deterministic given the seed (same files on the same torch / tokenizers versions and
thread count). The corpus went to `{result.corpus_dir.as_posix()}`:

{hashes}

| setting | value |
| --- | --- |
{settings}

## What came out

| | |
| --- | --- |
| vocabulary | {result.vocab_size} tokens (uniform perplexity {result.vocab_size}) |
| entity words kept as one token | {result.entity_words_whole} / {result.entity_words_total} |
| parameters | {result.n_parameters:,} (float32) |
| training tokens | {result.train_tokens:,} ({config.train_docs} stories) |
| validation tokens | {result.validation_tokens:,} ({config.validation_docs} stories) |
| last training loss | {result.final_train_loss:.3f} nats/token |
| validation NLL | {result.validation_nll:.3f} nats/token |
| validation perplexity | **{result.validation_perplexity:.2f}** (uniform: {result.vocab_size}) |
| training time | {result.train_seconds:.0f} s wall, {result.train_cpu_seconds:.0f} s CPU ({config.steps} steps, {config.threads} threads) |
| total build time | {result.total_seconds:.0f} s |

## Does a block matter, and can one vector carry it?

{README_CHECK_BEGIN}
Not measured yet: run `python -m bench.sample_check --write-readme`.
{README_CHECK_END}
"""
