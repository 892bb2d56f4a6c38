"""ΔNLL@H: the conditions' numbers and the report's arithmetic, on cases with known answers.

The teacher is a tiny randomly initialised GPT-2 built with a fixed seed; what it
predicts does not matter, only that every condition is scored the same way.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gistnet.errors import Cancelled, ConfigError
from gistnet.eval.conditions import evaluate_conditions, swap_partners
from gistnet.eval.report import format_table, write_report
from gistnet.eval.stats import summarize
from gistnet.substitution import horizon_nll, mean_block_embedding
from tests.gistnet.evaluation import evaluate
from tests.gistnet.test_substitution import make_teacher

VOCAB = 61
BOS, EOS = 1, 2
BLOCK = 8
HORIZON = 24
EXAMPLES = 10


@pytest.fixture(scope="module")
def teacher():
    return make_teacher()


@pytest.fixture(scope="module")
def context():
    rng = np.random.default_rng(0)
    return rng.integers(3, VOCAB, size=(EXAMPLES, HORIZON)).astype(np.int32)


@pytest.fixture(scope="module")
def gists():
    return torch.randn(EXAMPLES, 32, generator=torch.Generator().manual_seed(2))


def score(teacher, context, **kwargs):
    return evaluate_conditions(teacher, context, block_size=BLOCK, batch_size=4, **kwargs)


# --- the conditions ---------------------------------------------------------------------


def test_a_gist_equal_to_the_block_mean_gives_exactly_the_mean_numbers(teacher, context):
    block_means = mean_block_embedding(teacher, torch.from_numpy(context[:, :BLOCK]).long())

    nll = score(teacher, context, gist_vectors=block_means)
    report = summarize(nll, bootstrap_samples=200)

    assert np.array_equal(nll["gist"], nll["mean"])
    assert report["conditions"]["gist"] == report["conditions"]["mean"]
    assert report["comparisons"]["gist_minus_mean_gap_recovered"]["value"] == 0.0


def test_full_nll_equals_the_teachers_causal_lm_loss_over_the_horizon(teacher, context):
    ids = torch.from_numpy(context).long()
    labels = ids.clone()
    labels[:, :BLOCK] = -100
    expected = teacher(ids, labels=labels).loss.item()

    nll = score(teacher, context)

    assert nll["full"].shape == (EXAMPLES, HORIZON - BLOCK)
    assert float(nll["full"].mean()) == pytest.approx(expected, rel=1e-5)


def test_drop_reads_the_bos_embedding_in_place_of_the_block(teacher, context):
    ids = torch.from_numpy(context).long()
    bos = teacher.get_input_embeddings().weight[BOS].expand(EXAMPLES, -1)
    expected = horizon_nll(teacher, ids, block_size=BLOCK, vectors=bos).numpy()

    nll = score(teacher, context)  # no drop token given: the teacher's BOS is used

    np.testing.assert_allclose(nll["drop"], expected, rtol=1e-5, atol=1e-6)


def test_only_the_conditions_with_inputs_are_scored(teacher, context, gists):
    assert set(score(teacher, context)) == {"full", "drop", "mean"}
    assert set(score(teacher, context, gist_vectors=gists)) == {"full", "drop", "mean", "gist"}


def test_swapped_reads_the_partners_gist_with_its_own_horizon(teacher, context, gists):
    partner = np.roll(np.arange(EXAMPLES), 3)

    nll = score(teacher, context, gist_vectors=gists, swap_partner=partner)
    borrowed = score(teacher, context, gist_vectors=gists[torch.from_numpy(partner)])

    np.testing.assert_array_equal(nll["swapped"], borrowed["gist"])
    assert not np.array_equal(nll["swapped"], nll["gist"])


def test_swap_partners_come_from_another_document():
    doc_ids = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 3])
    partner = swap_partners(doc_ids, seed=0)
    assert partner.shape == doc_ids.shape
    assert np.all(doc_ids[partner] != doc_ids)
    assert np.array_equal(partner, swap_partners(doc_ids, seed=0))  # seeded


def test_swap_partners_need_two_documents():
    with pytest.raises(ConfigError, match="one document"):
        swap_partners(np.zeros(5, dtype=np.int64))


def test_progress_counts_examples_and_cancel_stops_between_batches(teacher, context):
    seen = []
    score(teacher, context, on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(4, EXAMPLES), (8, EXAMPLES), (10, EXAMPLES)]

    with pytest.raises(Cancelled):
        score(
            teacher,
            context,
            should_cancel=lambda: len(seen) >= 4,
            on_progress=lambda done, total: seen.append(done),
        )
    assert len(seen) == 4  # one batch ran, then the check stopped the work


# --- the report's arithmetic ------------------------------------------------------------


def constructed_nll(examples: int = 50, tokens: int = 16) -> dict[str, np.ndarray]:
    """Known answers: full 1.0, drop 3.0, mean 2.5, gist 2.0 on the first 8 tokens, 1.0 after."""
    gist = np.ones((examples, tokens))
    gist[:, :8] = 2.0
    return {
        "full": np.full((examples, tokens), 1.0),
        "drop": np.full((examples, tokens), 3.0),
        "mean": np.full((examples, tokens), 2.5),
        "gist": gist,
        "swapped": np.full((examples, tokens), 2.8),
    }


def test_gap_recovered_and_delta_nll_on_constructed_cases():
    report = summarize(constructed_nll(), bootstrap_samples=100)
    conditions = report["conditions"]

    def value(name, key):
        return conditions[name][key]["value"]

    assert value("full", "gap_recovered") == 1.0
    assert value("drop", "gap_recovered") == 0.0
    assert value("drop", "delta_nll") == 2.0
    assert value("mean", "gap_recovered") == pytest.approx(0.25)  # (3 - 2.5) / (3 - 1)
    assert value("gist", "nll") == pytest.approx(1.5)
    assert value("gist", "gap_recovered") == pytest.approx(0.75)  # (3 - 1.5) / (3 - 1)
    assert value("gist", "delta_nll_early") == pytest.approx(1.0)
    assert value("gist", "delta_nll_late") == pytest.approx(0.0)
    assert conditions["gist"]["nll_per_position"] == [2.0] * 8 + [1.0] * 8
    comparisons = report["comparisons"]
    assert comparisons["gist_minus_mean_gap_recovered"]["value"] == pytest.approx(0.5)
    assert comparisons["swapped_over_gist_gap_recovered"]["value"] == pytest.approx(0.1 / 0.75)
    # Every example is the same, so every resample gives the same numbers.
    assert conditions["gist"]["gap_recovered"]["ci95"] == pytest.approx([0.75, 0.75])
    assert report["quality_bars"] == {
        "drop_delta_nll_at_least_0.1": True,
        "gist_gap_recovered_at_least_0.5": True,
        "gist_gap_recovered_at_least_0.7": True,
        "gist_gap_recovered_rest_at_least_0.4": True,
        "gist_above_mean_ci_excludes_0": True,
        "swapped_below_half_of_gist": True,
        "swapped_below_third_of_gist": True,
    }


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_examples():
    rng = np.random.default_rng(3)

    def noisy(examples):
        nll = constructed_nll(examples)
        return {name: values + rng.normal(0, 0.5, values.shape) for name, values in nll.items()}

    small = summarize(noisy(40), bootstrap_samples=500, seed=1)["conditions"]["gist"]["nll"]
    large = summarize(noisy(1000), bootstrap_samples=500, seed=1)["conditions"]["gist"]["nll"]
    for entry in (small, large):
        low, high = entry["ci95"]
        assert low < entry["value"] < high
    assert large["ci95"][1] - large["ci95"][0] < small["ci95"][1] - small["ci95"][0]


def test_gap_recovered_is_undefined_when_drop_loses_nothing():
    nll = constructed_nll()
    nll["drop"] = nll["full"].copy()
    report = summarize(nll, bootstrap_samples=50)
    assert report["conditions"]["gist"]["gap_recovered"]["value"] is None
    json.dumps(report, allow_nan=False)  # still valid JSON


def test_report_is_written_as_json_and_a_plot_and_printed_as_a_table(tmp_path):
    report = summarize(constructed_nll(), bootstrap_samples=50)

    paths = write_report(report, tmp_path / "eval")
    table = format_table(report)

    assert json.loads(paths["json"].read_text()) == report
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("full", "gist", "drop", "mean", "swapped"):
        assert name in table
    assert "GR(gist) - GR(mean): 0.500" in table


# --- from a checkpoint and a prepared dataset --------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, teacher):
    """A saved tiny teacher + tokenizer, a dataset prepared with it, and a GistNet checkpoint."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    from gistnet.checkpoint import save_checkpoint
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset
    from gistnet.model import GistNet, GistNetConfig

    root = tmp_path_factory.mktemp("quality")
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(VOCAB - 3)]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")

    rng = np.random.default_rng(5)
    documents = [" ".join(f"w{i}" for i in rng.integers(0, VOCAB - 3, 40)) for _ in range(4)]
    config = validate_dataset_config(
        {
            "dataset_name": "tiny",
            "tokenizer": str(root / "teacher"),
            "teacher_model": str(root / "teacher"),
            "block_size": BLOCK,
            "horizon": 2 * BLOCK,
            "teacher_device": "cpu",
            "splits": {"validation": {"documents": documents}},
        }
    )
    prepare_dataset(config, output_dir=root / "data")

    torch.manual_seed(0)
    model = GistNet(GistNetConfig(hidden_size=32, block_size=BLOCK, num_heads=2))
    checkpoint = save_checkpoint(
        root / "model" / "gistnet.pt",
        model=model,
        training_config={},
        metrics={},
        dataset={"name": "tiny"},
        teacher={"model": str(root / "teacher"), "dtype": "float32"},
        tokenizer=str(root / "teacher"),
    )
    return {"root": root, "data": root / "data", "checkpoint": checkpoint}


def test_evaluate_gistnet_scores_a_checkpoint_on_a_prepared_split(prepared):
    from gistnet.shards import open_shard

    shard = open_shard(prepared["data"] / "validation.arrow")
    progress = []

    report = evaluate(
        prepared["checkpoint"],
        prepared["data"],
        split="validation",
        device="cpu",
        batch_size=8,
        bootstrap_samples=100,
        on_progress=lambda done, total: progress.append((done, total)),
    )

    assert report["n_examples"] == shard.num_examples == 16  # 4 documents x 4 windows
    assert set(report["conditions"]) == {"full", "gist", "drop", "mean", "swapped"}
    assert report["horizon_tokens"] == BLOCK
    assert report["drop_token_id"] == BOS
    assert report["swapped_rule"].endswith("another document")
    assert report["conditions"]["full"]["gap_recovered"]["value"] == 1.0
    assert report["checkpoint"]["info"]["block_size"] == BLOCK
    assert len(report["checkpoint"]["sha256"]) == 64
    assert progress[-1] == (16, 16)
    json.dumps(report, allow_nan=False)


def test_a_bfloat16_teacher_scores_near_the_float32_one_and_a_bad_dtype_is_refused(prepared):
    def nlls(**options) -> dict[str, float]:
        report = evaluate(
            prepared["checkpoint"], prepared["data"], split="validation", device="cpu",
            batch_size=8, bootstrap_samples=0, **options,
        )  # fmt: skip
        return {name: c["nll"]["value"] for name, c in report["conditions"].items()}

    float32, bfloat16 = nlls(), nlls(teacher_dtype="bfloat16")
    assert float32 != bfloat16  # the teacher really computed in bfloat16
    for name, value in float32.items():
        assert bfloat16[name] == pytest.approx(value, rel=0.02), name
    with pytest.raises(ConfigError, match="teacher_dtype must be float32, bfloat16 or float16"):
        nlls(teacher_dtype="int8")


def test_evaluate_gistnet_on_a_subset_stops_when_cancelled(prepared):
    shard_path = prepared["data"] / "validation.arrow"
    report = evaluate(
        prepared["checkpoint"],
        shard_path,
        device="cpu",
        max_examples=6,
        bootstrap_samples=20,
    )
    assert report["n_examples"] == 6

    with pytest.raises(Cancelled):
        evaluate(
            prepared["checkpoint"],
            shard_path,
            device="cpu",
            should_cancel=lambda: True,
        )


def test_evaluate_cli_prints_the_table_and_writes_the_report(prepared, capsys):
    from tools.evaluate_gistnet import main

    out = prepared["root"] / "eval"
    code = main(
        [
            "--checkpoint", str(prepared["checkpoint"]),
            "--dataset", str(prepared["data"]),
            "--split", "validation",
            "--out", str(out),
            "--device", "cpu",
            "--bootstrap-samples", "50",
        ]
    )  # fmt: skip

    assert code == 0
    printed = capsys.readouterr().out
    assert "swapped" in printed and "GR(gist) - GR(mean)" in printed
    assert json.loads((out / "evaluation.json").read_text())["n_examples"] == 16
    assert (out / "evaluation_nll_per_position.png").is_file()


def test_evaluate_cli_names_a_missing_split(prepared, capsys):
    from tools.evaluate_gistnet import main

    code = main(["--checkpoint", str(prepared["checkpoint"]), "--dataset", str(prepared["data"]),
                 "--split", "test", "--device", "cpu"])  # fmt: skip
    assert code == 2
    assert "no split 'test'" in capsys.readouterr().err


def test_evaluate_gistnet_refuses_gists_of_another_width(prepared):
    from gistnet.checkpoint import save_checkpoint
    from gistnet.model import GistNet, GistNetConfig

    wide = save_checkpoint(
        prepared["root"] / "wide" / "gistnet.pt",
        model=GistNet(GistNetConfig(hidden_size=64, block_size=BLOCK, num_heads=2)),
        training_config={},
        metrics={},
        dataset={"name": "tiny"},
        teacher={"model": "another-teacher", "dtype": "float32"},
        tokenizer="another-teacher",
    )
    with pytest.raises(ConfigError, match="width 64"):
        evaluate(wide, prepared["data"], device="cpu")


# --- document resampling, GR past the first tokens, the oracle ---------------------------


def test_document_bootstrap_widens_the_interval_when_a_documents_windows_agree():
    # 8 documents of 25 windows each; windows of one document share their error exactly,
    # as overlapping windows of a story share its facts.
    rng = np.random.default_rng(0)
    doc_effect = np.repeat(rng.normal(0.0, 0.5, 8), 25)[:, None]
    full = np.full((200, 4), 1.0)
    nll = {"full": full, "drop": full + 1.0, "gist": full + 0.5 + doc_effect}
    doc_ids = np.repeat(np.arange(8), 25)

    by_example = summarize(nll, bootstrap_samples=400)
    by_document = summarize(nll, bootstrap_samples=400, doc_ids=doc_ids)

    def width(report):
        low, high = report["conditions"]["gist"]["gap_recovered"]["ci95"]
        return high - low

    assert by_example["resampling"] == "examples" and by_example["n_documents"] is None
    assert by_document["resampling"] == "documents" and by_document["n_documents"] == 8
    # the point estimate is the same; only the interval honestly widens (by ~sqrt(25))
    assert by_document["conditions"]["gist"]["gap_recovered"]["value"] == pytest.approx(
        by_example["conditions"]["gist"]["gap_recovered"]["value"]
    )
    assert width(by_document) > 3 * width(by_example)
    low, high = by_document["conditions"]["gist"]["gap_recovered"]["ci95"]
    assert low <= by_document["conditions"]["gist"]["gap_recovered"]["value"] <= high


def test_document_bootstrap_of_one_example_per_document_matches_the_example_bootstrap():
    rng = np.random.default_rng(1)
    full = rng.normal(1.0, 0.1, (300, 4))
    nll = {"full": full, "drop": full + 1.0, "gist": full + rng.uniform(0, 1, (300, 4))}
    a = summarize(nll, bootstrap_samples=500)["conditions"]["gist"]["gap_recovered"]["ci95"]
    b = summarize(nll, bootstrap_samples=500, doc_ids=np.arange(300))
    b = b["conditions"]["gist"]["gap_recovered"]["ci95"]
    assert a == pytest.approx(b, abs=0.02)


def test_gap_recovered_from_token_2_and_over_the_rest_leave_out_the_first_tokens():
    # drop pays 9 nats on the first token alone (a teacher that reads BOS as a start)
    # and 1 nat on every other; the gist recovers all of the first token, half elsewhere.
    full = np.zeros((4, 12))
    drop = np.ones((4, 12))
    drop[:, 0] = 9.0
    gist = np.full((4, 12), 0.5)
    gist[:, 0] = 0.0
    report = summarize({"full": full, "drop": drop, "gist": gist}, bootstrap_samples=0)
    entry = report["conditions"]["gist"]
    assert entry["gap_recovered"]["value"] == pytest.approx((20 - 5.5) / 20)
    assert entry["gap_recovered_from_2"]["value"] == pytest.approx(0.5)
    assert entry["gap_recovered_rest"]["value"] == pytest.approx(0.5)  # tokens 9..12
    assert "GR from token 2" in format_table(report) and "GR tokens 9+" in format_table(report)


def test_the_oracle_lowers_the_kl_below_its_start_and_stops_on_a_plateau(teacher, context):
    from gistnet.eval.oracle import fit_oracle_vectors
    from gistnet.substitution import horizon_log_probs

    def kl(vectors):
        with torch.no_grad():
            full = horizon_log_probs(teacher, ctx, block_size=BLOCK)
            sub = horizon_log_probs(teacher, ctx, block_size=BLOCK, vectors=vectors)
            return (
                torch.nn.functional.kl_div(sub, full, reduction="none", log_target=True)
                .sum(-1)
                .mean(-1)
            )

    ctx = torch.from_numpy(context[:4]).long()
    start = mean_block_embedding(teacher, ctx[:, :BLOCK])
    fitted, search = fit_oracle_vectors(
        teacher, ctx, block_size=BLOCK, init=start, max_steps=60, patience=10, batch_size=2
    )
    assert fitted.shape == start.shape
    assert torch.all(kl(fitted) < kl(start))  # each example's own vector improved
    assert search["steps_per_batch"] == [60, 60] or all(s <= 60 for s in search["steps_per_batch"])

    # From vectors the search cannot improve (lr 0: nothing moves) it stops after `patience`.
    _, stuck = fit_oracle_vectors(
        teacher, ctx, block_size=BLOCK, init=start, max_steps=200, patience=5, lr=1e-12
    )
    assert stuck["steps_per_batch"] == [6]


def test_evaluate_gistnet_reports_the_oracle_on_a_seeded_subset(prepared):
    def run(oracle_examples=5):
        return evaluate(
            prepared["checkpoint"], prepared["data"], device="cpu", batch_size=8,
            bootstrap_samples=50, oracle_examples=oracle_examples,
        )  # fmt: skip

    report = run()

    oracle = report["oracle"]
    assert oracle["n_examples"] == 5
    assert set(oracle["conditions"]) == {"full", "gist", "drop", "mean", "oracle"}
    assert oracle["resampling"] == "documents" and report["resampling"] == "documents"
    # the example bootstrap's intervals ride along, for comparison
    assert set(report["example_bootstrap_gap_recovered_ci95"]) == set(report["conditions"])
    # the untrained gist is a poor vector: the fitted one recovers more of the gap
    gr = {name: oracle["conditions"][name]["gap_recovered"]["value"] for name in ("gist", "oracle")}
    assert gr["oracle"] > gr["gist"]
    share = oracle["comparisons"]["gist_over_oracle_gap_recovered"]["value"]
    assert share == pytest.approx(gr["gist"] / gr["oracle"])
    assert report["quality_bars"]["gist_at_least_90pct_of_oracle"] is (share >= 0.9)
    assert "oracle" in format_table(report) and "GR(gist) / GR(oracle)" in format_table(report)
    json.dumps(report, allow_nan=False)
    # seeded: the same subset and the same vectors again
    again = run()["oracle"]["conditions"]["oracle"]["nll"]["value"]
    assert again == oracle["conditions"]["oracle"]["nll"]["value"]
    with pytest.raises(ConfigError, match="oracle_examples"):
        run(oracle_examples=0)


def test_evaluate_cli_takes_the_oracle_size(prepared, capsys):
    from tools.evaluate_gistnet import main

    out = prepared["root"] / "eval-oracle"
    code = main(["--checkpoint", str(prepared["checkpoint"]), "--dataset", str(prepared["data"]),
                 "--out", str(out), "--device", "cpu", "--bootstrap-samples", "20",
                 "--oracle-examples", "3"])  # fmt: skip
    assert code == 0
    assert "GR(gist) / GR(oracle)" in capsys.readouterr().out
    assert json.loads((out / "evaluation.json").read_text())["oracle"]["n_examples"] == 3


def test_evaluate_gistnet_scores_k_vectors_per_block(prepared):
    from gistnet.checkpoint import save_checkpoint
    from gistnet.model import GistNet, GistNetConfig

    torch.manual_seed(0)
    model = GistNet(GistNetConfig(hidden_size=32, block_size=BLOCK, num_heads=2, gists_per_block=2))
    checkpoint = save_checkpoint(
        prepared["root"] / "two" / "gistnet.pt",
        model=model,
        training_config={},
        metrics={},
        dataset={"name": "tiny"},
        teacher={"model": str(prepared["root"] / "teacher"), "dtype": "float32"},
        tokenizer=str(prepared["root"] / "teacher"),
    )
    one = evaluate(prepared["checkpoint"], prepared["data"],
                           device="cpu", bootstrap_samples=20)  # fmt: skip
    two = evaluate(checkpoint, prepared["data"],
                           device="cpu", bootstrap_samples=20, oracle_examples=2)  # fmt: skip
    assert two["gists_per_block"] == 2 and two["compression"] == "4:1"
    assert one["gists_per_block"] == 1 and one["compression"] == "8:1"
    assert set(two["conditions"]) == {"full", "gist", "drop", "mean", "swapped"}
    # the baselines read one vector whatever k is, so they score exactly as before
    for name in ("full", "drop", "mean"):
        assert two["conditions"][name]["nll"] == one["conditions"][name]["nll"]
    assert two["conditions"]["gist"]["nll"]["value"] != one["conditions"]["gist"]["nll"]["value"]
    assert "oracle" in two["oracle"]["conditions"]


def test_extra_vector_sets_of_k_vectors_are_scored_like_the_gist(teacher, context):
    vectors = torch.randn(EXAMPLES, 2, 32, generator=torch.Generator().manual_seed(3))
    nll = score(teacher, context, gist_vectors=vectors, extra_vectors={"oracle": vectors})
    np.testing.assert_array_equal(nll["oracle"], nll["gist"])
    with pytest.raises(ConfigError, match="new name"):
        score(teacher, context, extra_vectors={"mean": vectors})
