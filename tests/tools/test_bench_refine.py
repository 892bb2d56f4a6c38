"""`bench.refine`: refined gists beside the gist and the oracle, and the table the docs show."""

from __future__ import annotations

import argparse
import json

import pytest

from bench.refine import main, parse_setting, report_section
from gistnet.refine import RefineSettings
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings
from tests.gistnet.test_substitution import short_substitution_run


def test_a_setting_is_samples_steps_and_optionally_lr_and_temperature():
    assert parse_setting("8:50") == RefineSettings(samples=8, steps=50)
    assert parse_setting("64:200:0.02:0.8") == RefineSettings(
        samples=64, steps=200, lr=0.02, temperature=0.8
    )
    with pytest.raises(argparse.ArgumentTypeError, match="samples:steps"):
        parse_setting("8")


def test_the_bench_scores_each_setting_on_the_oracles_subset(small_dataset, tmp_path, capsys):
    result = train_gistnet(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=tmp_path / "model",
            settings=TrainSettings(run=short_substitution_run(bos_sink=True)),
        )
    )
    out = tmp_path / "refine.jsonl"
    argv = ["--checkpoint", str(result.checkpoint_path), "--dataset", str(small_dataset),
            "--examples", "4", "--settings", "1:2", "2:3:0.05:0.8", "--bootstrap", "20",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["refine"]["samples"] for r in rows] == [1, 2]
    assert rows[1]["refine"]["temperature"] == 0.8 and rows[0]["examples"] == 4
    for row in rows:
        # the gist and the oracle are the same for every setting: one fit, one scoring pass
        assert row["gr_gist"] == rows[0]["gr_gist"] and row["gr_oracle"] == rows[0]["gr_oracle"]
        assert row["gr_oracle"]["value"] >= row["gr_gist"]["value"] - 1e-6
        share = row["refined_over_oracle"]["value"]
        assert share == pytest.approx(row["gr_refined"]["value"] / row["gr_oracle"]["value"])
    table = report_section(out)
    assert "| 2 | 3 | 0.05 | 0.8 | 6 |" in table
    assert table in capsys.readouterr().out
