from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from gistnet.config import load_dataset_config, validate_dataset_config
from gistnet.data import prepare_dataset
from gistnet.datasets import read_metadata
from gistnet.errors import Cancelled, ConfigError, TeacherLoadError
from gistnet.examples import document_examples
from gistnet.shards import open_shard
from tests.conftest import SAMPLE_TEACHER, small_dataset_config


def test_shard_has_exactly_the_documented_fixed_size_columns(small_dataset):
    meta = read_metadata(small_dataset)
    d = meta["teacher_hidden_size"]
    schema = pa.ipc.open_file(pa.memory_map(str(small_dataset / "train.arrow"))).schema
    assert schema.names == [
        "input_ids",
        "attention_mask",
        "context_input_ids",
        "context_attention_mask",
        "teacher_hidden",
        "gist_target",
    ]
    assert schema.field("input_ids").type == pa.list_(pa.int32(), 32)
    assert schema.field("context_input_ids").type == pa.list_(pa.int32(), 64)
    assert schema.field("teacher_hidden").type == pa.list_(pa.list_(pa.float32(), d), 32)
    assert schema.field("gist_target").type == pa.list_(pa.float32(), d)

    table = pa.ipc.open_file(pa.memory_map(str(small_dataset / "train.arrow"))).read_all()
    masks = np.stack(table.column("attention_mask").to_numpy(zero_copy_only=False))
    assert masks.shape == (table.num_rows, 32) and masks.min() == 1
    ctx_masks = np.stack(table.column("context_attention_mask").to_numpy(zero_copy_only=False))
    assert ctx_masks.shape == (table.num_rows, 64) and ctx_masks.min() == 1


def test_teacher_states_equal_a_plain_full_window_forward(small_dataset):
    from transformers import AutoModelForCausalLM

    shard = open_shard(small_dataset / "validation.arrow")
    lm = AutoModelForCausalLM.from_pretrained(SAMPLE_TEACHER).eval()
    idx = np.arange(min(16, shard.num_examples))
    with torch.no_grad():
        out = lm(
            input_ids=torch.from_numpy(shard.context_input_ids[idx]).long(),
            output_hidden_states=True,
        )
    expected = out.hidden_states[-1][:, :32].numpy()
    np.testing.assert_allclose(shard.teacher_hidden[idx], expected, atol=1e-5, rtol=0)


def test_gist_target_is_the_mean_of_the_block_states(small_dataset):
    shard = open_shard(small_dataset / "train.arrow")
    states = np.asarray(shard.teacher_hidden)  # gathers the record batches into one array
    np.testing.assert_allclose(shard.gist_target, states.mean(axis=1), atol=1e-6)


def test_prepared_windows_are_contiguous_slices_of_their_document(small_dataset):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SAMPLE_TEACHER)
    docs = small_dataset_config()["splits"]["validation"]["documents"]
    token_docs = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    expected = np.concatenate([document_examples(ids, 32, 64) for ids in token_docs])
    shard = open_shard(small_dataset / "validation.arrow")
    np.testing.assert_array_equal(shard.context_input_ids, expected)
    np.testing.assert_array_equal(shard.input_ids, expected[:, :32])
    counts = [len(document_examples(ids, 32, 64)) for ids in token_docs]
    np.testing.assert_array_equal(shard.document_ids(), np.repeat(np.arange(len(counts)), counts))


def test_metadata_records_the_dataset(small_dataset):
    meta = yaml.safe_load((small_dataset / "metadata.yaml").read_text())
    assert meta["block_size"] == 32 and meta["horizon"] == 64
    assert meta["teacher_model"] == str(SAMPLE_TEACHER.resolve())
    assert meta["tokenizer"] == str(SAMPLE_TEACHER.resolve())
    assert meta["teacher_dtype"] == "float32"
    assert meta["teacher_hidden_size"] == open_shard(small_dataset / "train.arrow").hidden_size
    assert len(meta["fingerprint"]) == 16
    for name in ("train", "validation"):
        split = meta["splits"][name]
        assert split["path"] == f"{name}.arrow"
        assert split["examples"] == open_shard(small_dataset / split["path"]).num_examples
        assert split["blocks"] >= split["examples"] and split["tokens"] >= 32 * split["blocks"]
        assert split["bytes"] == (small_dataset / split["path"]).stat().st_size
        assert split["documents"] > 0 and split["seconds"] > 0


def test_fingerprint_changes_with_the_input_text(tmp_path):
    from gistnet.data import dataset_fingerprint

    a = validate_dataset_config(small_dataset_config())
    changed = small_dataset_config()
    changed["splits"]["train"]["documents"][0] += " more"
    b = validate_dataset_config(changed)
    assert dataset_fingerprint(a, tmp_path) == dataset_fingerprint(a, tmp_path)
    assert dataset_fingerprint(a, tmp_path) != dataset_fingerprint(b, tmp_path)


def test_yaml_config_reads_files_relative_to_itself_and_caps_tokens(tmp_path):
    (tmp_path / "text").mkdir()
    docs = small_dataset_config()["splits"]["train"]["documents"]
    (tmp_path / "text" / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs[:6]))
    (tmp_path / "text" / "b.txt").write_text(docs[6])
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "data.yaml").write_text(
        yaml.safe_dump(
            {
                "dataset_name": "files",
                "tokenizer": str(SAMPLE_TEACHER),
                "teacher_model": str(SAMPLE_TEACHER),
                "teacher_device": "cpu",
                "splits": {
                    "train": {
                        "name": "train",
                        "source": "../text/*",
                        "output_path": "../out/train.arrow",
                    },
                    "capped": {
                        "source": "../text/a.jsonl",
                        "output_path": "../out/capped.arrow",
                        "max_tokens": 200,
                    },
                },
            }
        )
    )
    path = tmp_path / "cfg" / "data.yaml"
    meta = prepare_dataset(load_dataset_config(path), config_dir=path.parent)
    assert (tmp_path / "out" / "train.arrow").is_file()
    assert (tmp_path / "out" / "metadata.yaml").is_file()
    assert meta["splits"]["train"]["documents"] == 7
    assert meta["splits"]["capped"]["tokens"] == 200
    assert open_shard(tmp_path / "out" / "capped.arrow").num_examples == 200 // 32 - 1


def test_missing_source_fails_before_any_work(tmp_path):
    config = validate_dataset_config(
        small_dataset_config(
            splits={"train": {"source": "nowhere/*.jsonl", "output_path": "o.arrow"}}
        )
    )
    with pytest.raises(ConfigError, match="source 'nowhere/\\*.jsonl' matches no file"):
        prepare_dataset(config, config_dir=tmp_path)


def test_missing_teacher_folder_says_so(tmp_path):
    config = validate_dataset_config(
        small_dataset_config(teacher_model=str(tmp_path / "no-such-teacher"))
    )
    with pytest.raises(TeacherLoadError, match="no-such-teacher' does not exist"):
        prepare_dataset(config, output_dir=tmp_path / "out")


def test_a_tokenizer_with_more_tokens_than_the_teacher_embeds_is_refused(tmp_path):
    # The sample teacher's config with a smaller embedding table: its ids would not fit.
    teacher_config = json.loads((SAMPLE_TEACHER / "config.json").read_text())
    teacher_config["vocab_size"] = 16
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text(json.dumps(teacher_config))
    config = validate_dataset_config(
        small_dataset_config(teacher_model=str(tmp_path / "teacher"), teacher_states="none")
    )
    with pytest.raises(ConfigError, match="embeds only 16: they do not belong together"):
        prepare_dataset(config, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unreachable_hub_id_fails_at_once_with_advice(monkeypatch):
    from gistnet.teacher import load_teacher

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TeacherLoadError, match="point the config at the local folder"):
        load_teacher("some-org/some-model-that-is-not-cached")


def test_cancelled_preparation_leaves_no_shard_that_looks_finished(tmp_path):
    config = validate_dataset_config(small_dataset_config(teacher_batch_size=8))
    calls = []

    def cancel_after_two_batches() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        prepare_dataset(config, output_dir=tmp_path, should_cancel=cancel_after_two_batches)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
