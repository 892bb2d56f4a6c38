"""The probe names of `bench.probes` and their table: what a sweep's reader relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.probes import probe_changes, probe_train_dataset, probes_section


def test_a_probe_name_spells_its_changes():
    assert probe_changes("base") == {"model": {}, "training": {}, "data": {}}
    assert probe_changes("emb+pq4+mlp+L2+lr3e-3+floor0+ds4+s2400") == {
        "model": {"token_embeddings": True, "pool_queries": 4, "gist_mlp": True, "num_layers": 2},
        "training": {"lr": 3e-3, "final_lr_ratio": 0.0, "max_steps": 2400},
        "data": {"stride": 4},
    }
    # teacher layers one digit each; the weight on tokens 9+
    assert probe_changes("tl02+rw2.5+nll0.3") == {
        "model": {"teacher_layers": (0, 2)},
        "training": {"rest_weight": 2.5, "nll_weight": 0.3},
        "data": {},
    }


def test_a_probe_trains_on_the_dataset_its_data_tokens_name():
    data = Path("data/sample_text")
    assert probe_train_dataset(data, probe_changes("emb+s300")) == data
    assert probe_train_dataset(data, probe_changes("ds4")) == Path("data/sample_text_ds4")
    assert probe_train_dataset(data, probe_changes("n20+sink")) == Path("data/sample_text_n20")
    both = probe_changes("sink+n20+ds8+nll0.1")
    assert both["model"] == {"bos_sink": True} and both["training"] == {"nll_weight": 0.1}
    assert probe_train_dataset(data, both) == Path("data/sample_text_n20_ds8")


@pytest.mark.parametrize(
    ("name", "message"),
    [("s300+s3x", "'s3x' is not one of"), ("emb+emb", "sets token_embeddings twice"),
     ("L2+L3", "sets num_layers twice"), ("zz", "'zz' is not one of"),
     ("tl", "'tl' is not one of"), ("tl0x", "'tl0x' is not one of")],
)  # fmt: skip
def test_a_bad_probe_name_is_refused_naming_the_token(name, message):
    with pytest.raises(SystemExit, match=message):
        probe_changes(name)


def test_the_probe_table_orders_by_gr_and_shows_what_did_not_run(tmp_path):
    line = {
        "probe": "base", "changes": probe_changes("base"), "steps": 300, "device": "cpu",
        "examples": 384, "gr": 0.5, "gr_ci95": [0.4, 0.6], "gr_from_2": 0.3, "gr_rest": 0.1,
        "swapped_over_gist": 0.1, "gr_oracle": None, "gist_over_oracle": None,
    }  # fmt: skip
    better = {**line, "probe": "ds4", "changes": probe_changes("ds4"), "gr": 0.7}
    path = tmp_path / "probes.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in (line, better)) + "\n")
    table = probes_section(path)
    rows = [r for r in table.splitlines() if r.startswith("| none")]
    # best first: training stories, then stride
    assert [r.split(" | ")[1:3] for r in rows] == [["1,300", "4"], ["1,300", "one block"]]
    assert "384 validation examples" in table and "| - | - |" in table
