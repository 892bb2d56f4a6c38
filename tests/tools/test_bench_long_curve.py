"""bench.long_curve: the long-document evaluation over a grid of C and R, written as a table,
a plot and a section of a page, on the sample teacher with a random GistNet."""

from __future__ import annotations

import json

import pytest
import torch

from bench.long_curve import grid, main
from tests.conftest import SAMPLE_TEACHER, small_dataset_config


@pytest.fixture(scope="module")
def long_windows(tmp_path_factory):
    from gistnet.checkpoint import save_checkpoint
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset
    from gistnet.model import GistNet, GistNetConfig

    root = tmp_path_factory.mktemp("long_curve")
    config = small_dataset_config(horizon=192, teacher_states="none")
    config["splits"] = {"validation": config["splits"]["validation"]}
    prepare_dataset(validate_dataset_config(config), output_dir=root / "data")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        root / "gistnet.pt", model=GistNet(GistNetConfig(hidden_size=128, block_size=32)),
        training_config={}, metrics={}, dataset={"name": "small"},
        teacher={"model": str(SAMPLE_TEACHER), "dtype": "float32"}, tokenizer=str(SAMPLE_TEACHER),
    )  # fmt: skip
    return root, checkpoint


def test_the_grid_keeps_points_with_whole_blocks_to_compress():
    points = grid([64, 128], [16, 32, 64, 128], at_context=128, at_recent=32, block_size=32)
    assert points == [(64, 32), (128, 32), (128, 64)]  # 128 - 16 and 128 - 128 cannot be cut


def test_the_curve_is_written_as_json_plot_and_a_docs_section(long_windows, tmp_path, capsys):
    root, checkpoint = long_windows
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- long-curve:t -->\nold\n<!-- /long-curve:t -->\nafter\n")
    argv = ["--dataset", str(root / "data"), "--model", f"random={checkpoint}",
            "--contexts", "128", "--recents", "32", "64", "--at-context", "128",
            "--at-recent", "32", "--score-tokens", "64", "--max-examples", "6",
            "--bootstrap-samples", "20", "--device", "cpu", "--json", str(tmp_path / "c.json"),
            "--plot", str(tmp_path / "c.png"), "--section", "t", "--docs", str(page)]  # fmt: skip
    assert main(argv) == 0
    reports = json.loads((tmp_path / "c.json").read_text())["random"]
    assert [(r["context_tokens"], r["recent_tokens"]) for r in reports] == [(128, 32), (128, 64)]
    assert all(r["n_examples"] == 6 and r["mode"] == "long" for r in reports)
    assert (tmp_path / "c.png").stat().st_size > 0
    text = page.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    assert "| random | 128 | 64 | 66 |" in text  # 2 blocks as 2 gists, then 64 raw tokens
    assert "python -m bench.long_curve --dataset" in text and "c.png" in text
    assert "GR_long(compressed) " in capsys.readouterr().out
