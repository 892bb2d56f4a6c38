from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from gistnet.checkpoint import load_checkpoint, read_checkpoint_info
from gistnet.config import validate_run_config
from gistnet.datasets import read_metadata
from gistnet.distributed import Ranks
from gistnet.errors import Cancelled, ConfigError, DeviceError, ShardError
from gistnet.inference import GistEncoder
from gistnet.model import GistNet, GistNetConfig
from gistnet.pretrained import teacher_weights_sha256
from gistnet.shards import open_shard
from gistnet.train import _open_run, _train_step, batch_indices, model_config_for, train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings


def run_config(**training):
    base = {
        "batch_size": 16,
        "lr": 3e-3,
        "max_steps": 30,
        "warmup": 3,
        "device": "cpu",
        "eval_every": 15,
    }
    return validate_run_config({"model": {"num_heads": 4}, "training": {**base, **training}})


def test_training_on_the_sample_lowers_the_loss(small_dataset, tmp_path):
    result = train_gistnet(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=tmp_path,
            settings=TrainSettings(run=run_config(max_steps=60)),
        )
    )
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    assert result.val_loss is not None and result.val_loss < losses[0]
    assert [h["step"] for h in result.history if "val_loss" in h] == [15, 30, 45, 60]


def test_same_seed_and_data_give_the_same_losses(small_dataset, tmp_path):
    a = train_gistnet(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=tmp_path / "a",
            settings=TrainSettings(run=run_config()),
        )
    )
    b = train_gistnet(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=tmp_path / "b",
            settings=TrainSettings(run=run_config()),
        )
    )
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    c = train_gistnet(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=tmp_path / "c",
            settings=TrainSettings(run=run_config(seed=1)),
        )
    )
    assert [h["loss"] for h in a.history] != [h["loss"] for h in c.history]


def test_checkpoint_round_trips_and_reproduces_the_gists(small_dataset, tmp_path):
    result = train_gistnet(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=tmp_path,
            settings=TrainSettings(run=run_config()),
        )
    )
    shard = open_shard(small_dataset / "validation.arrow")
    model, info = load_checkpoint(result.checkpoint_path)
    meta = read_metadata(small_dataset)
    assert info["dataset"]["fingerprint"] == meta["fingerprint"]
    assert info["teacher"] == {
        "model": meta["teacher_model"],
        "dtype": "float32",
        "weights_sha256": teacher_weights_sha256(meta["teacher_model"]),
    }
    assert info["tokenizer"] == meta["tokenizer"]
    assert info["training_config"]["max_steps"] == 30
    assert info["metrics"]["final_loss"] == result.final_loss
    states = torch.from_numpy(shard.teacher_hidden[:8].copy())
    with torch.no_grad():
        from_checkpoint = model(states)
    # the engine runs the teacher itself on the token ids and must give the same vectors
    encoder = GistEncoder.from_checkpoint(result.checkpoint_path)
    from_tokens = encoder.encode(torch.from_numpy(shard.input_ids[:8].copy()).long())
    torch.testing.assert_close(from_tokens, from_checkpoint, atol=1e-5, rtol=1e-5)
    assert encoder.dim == shard.hidden_size and encoder.block_size == 32


class _WritesAFile:
    """Unpickling this object creates `marker`: the side effect of running a payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_checkpoint_loading_never_unpickles_code(tmp_path, writer):
    marker = tmp_path / "payload_ran"
    payload = {"format": "gistnet-checkpoint/1", "x": _WritesAFile(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ShardError, match="not a GistNet checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ShardError, match="not a GistNet checkpoint"):
        read_checkpoint_info(path)
    assert not marker.exists()  # refused before anything in the file was run


def test_weight_decay_shrinks_the_matrices_only(small_dataset):
    model = GistNet(GistNetConfig(hidden_size=64, block_size=8, num_heads=4))
    optimizer = model.optimizer(lr=0.1, weight_decay=0.5)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient signal: only the decay moves a weight
    optimizer.step()
    for name, p in model.named_parameters():
        decayed = name.endswith("weight") and p.dim() == 2  # the nn.Linear matrices
        expected = before[name] * (1 - 0.1 * 0.5) if decayed else before[name]
        torch.testing.assert_close(p.detach(), expected, msg=name)
    assert {n for n, p in model.named_parameters() if p.dim() != 2} >= {
        "pool.query",
        "norm.weight",
        "norm.bias",
        "blocks.0.attn.qkv.bias",
    }


def test_run_config_model_section_is_the_model_config(small_dataset, tmp_path):
    run = validate_run_config({"model": {"num_heads": 2, "num_layers": 2}})
    assert isinstance(run.model, GistNetConfig)
    assert run.model.hidden_size is None  # filled in from the dataset
    config = model_config_for(run, read_metadata(small_dataset))
    assert (config.hidden_size, config.block_size, config.num_layers) == (128, 32, 2)
    with pytest.raises(ConfigError, match="model_config_for fills them in"):
        GistNet(run.model)


def test_resumed_training_gives_the_same_losses_as_an_uninterrupted_run(small_dataset, tmp_path):
    cfg = run_config(max_steps=24)
    whole = train_gistnet(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=tmp_path / "w",
            settings=TrainSettings(run=cfg),
        )
    )
    resume = tmp_path / "resume.pt"
    stop_at = {"step": 0}

    def crash_after_step_17():
        stop_at["step"] += 1
        return stop_at["step"] > 17

    with pytest.raises(Cancelled):
        train_gistnet(
            TrainRequest(
                dataset=small_dataset / "train.arrow",
                output_dir=tmp_path / "r",
                settings=TrainSettings(run=cfg),
                resume_path=resume,
                checkpoint_every=8,
            ),
            should_cancel=crash_after_step_17,
        )
    assert resume.is_file()
    resumed = train_gistnet(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=tmp_path / "r",
            settings=TrainSettings(run=cfg),
            resume_path=resume,
            checkpoint_every=8,
        )
    )
    assert resumed.resumed_from_step == 16
    assert [h["loss"] for h in resumed.history] == pytest.approx(
        [h["loss"] for h in whole.history], rel=1e-6
    )
    # The lr schedule picks up where it was: the same lr at every step.
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in whole.history]
    assert resume.is_file()  # the caller removes it once the result is recorded


def test_width_that_does_not_match_the_dataset_fails_with_both_numbers(small_dataset, tmp_path):
    d = read_metadata(small_dataset)["teacher_hidden_size"]
    cfg = validate_run_config({"model": {"hidden_size": d * 2}, "training": {"device": "cpu"}})
    with pytest.raises(
        ConfigError, match=f"hidden_size is {d * 2} but the dataset's teacher_hidden_size is {d}"
    ):
        train_gistnet(
            TrainRequest(
                dataset=small_dataset / "train.arrow",
                output_dir=tmp_path,
                settings=TrainSettings(run=cfg),
            )
        )
    cfg = validate_run_config({"model": {"block_size": 16}, "training": {"device": "cpu"}})
    with pytest.raises(
        ConfigError, match="block_size is 16 but the dataset was cut into blocks of 32"
    ):
        train_gistnet(
            TrainRequest(
                dataset=small_dataset / "train.arrow",
                output_dir=tmp_path,
                settings=TrainSettings(run=cfg),
            )
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_one_is_a_clear_error(small_dataset, tmp_path):
    with pytest.raises(DeviceError, match="CUDA is not available"):
        train_gistnet(
            TrainRequest(
                dataset=small_dataset / "train.arrow",
                output_dir=tmp_path,
                settings=TrainSettings(run=run_config(device="cuda")),
            )
        )


def test_batches_cover_every_example_once_per_epoch():
    seen = np.concatenate([batch_indices(s, 10, 50, seed=3) for s in range(5)])
    assert sorted(seen.tolist()) == list(range(50))
    assert not np.array_equal(batch_indices(0, 10, 50, seed=3), batch_indices(5, 10, 50, seed=3))


def _previous_lr(step: int, cfg) -> float:
    """The schedule the trainer had before transformers' (gistnet.train.lr_at, removed
    with this test's commit): warm-up from lr/warmup, then cosine to the floor."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.max_steps - cfg.warmup))
    floor = cfg.final_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _applied_lrs(request: TrainRequest) -> list[float]:
    """The lr of each optimizer step of a real run, read from the optimizer's param
    groups as it steps."""
    run = _open_run(request, Ranks())
    applied = []
    run.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: applied.append(optimizer.param_groups[0]["lr"])
    )
    for step in range(run.cfg.max_steps):
        _train_step(run, step)
    return applied


def test_the_trainer_steps_transformers_schedule_from_lr_over_warmup(small_dataset, tmp_path):
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    settings = TrainSettings(run=run_config(max_steps=12, warmup=3, final_lr_ratio=0.2))
    cfg = settings.run.training
    request = TrainRequest(
        dataset=small_dataset / "train.arrow", output_dir=tmp_path, settings=settings
    )
    applied = _applied_lrs(request)
    theirs = get_cosine_with_min_lr_schedule_with_warmup(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr),
        num_warmup_steps=3,
        num_training_steps=12,
        min_lr_rate=0.2,
    ).lr_lambdas[0]
    # Step s trains at transformers' position s + 1 in the warm-up (no step at its lr 0),
    # s after it (the peak twice): the schedule every shipped figure was trained with.
    positions = [s + 1 if s < 3 else s for s in range(12)]
    assert applied == [cfg.lr * theirs(p) for p in positions]
    assert applied == pytest.approx([_previous_lr(s, cfg) for s in range(12)], rel=1e-12)
    assert applied[0] == pytest.approx(cfg.lr / 3) and applied[2] == applied[3] == cfg.lr
    # What the run records is what it applied.
    history = train_gistnet(request).history
    assert [h["lr"] for h in history] == applied


def test_without_warmup_the_schedule_starts_at_the_peak_and_ends_at_its_floor(
    small_dataset, tmp_path
):
    for floor in (0.1, 0.0):
        settings = TrainSettings(run=run_config(max_steps=8, warmup=0, final_lr_ratio=floor))
        cfg = settings.run.training
        applied = _applied_lrs(
            TrainRequest(
                dataset=small_dataset / "train.arrow", output_dir=tmp_path, settings=settings
            )
        )
        assert applied[0] == cfg.lr  # no warm-up: the same lrs as before, to the last
        assert applied == pytest.approx([_previous_lr(s, cfg) for s in range(8)], rel=1e-12)
        last = cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
        assert applied[-1] == pytest.approx(last, abs=1e-15)
