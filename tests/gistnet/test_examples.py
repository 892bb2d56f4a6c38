"""gistnet.examples: the windows a document is cut into, and one shard written whole or not
at all (a cancel mid-shard leaves neither the shard nor its temporary)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from gistnet.config import validate_dataset_config
from gistnet.errors import Cancelled
from gistnet.examples import (
    PrepResources,
    _chunks,
    document_examples,
    shard_schema_of,
    write_shard,
)
from tests.conftest import small_dataset_config


def test_windows_are_cut_from_one_document_and_never_cross(tmp_path):
    # two documents of distinct token ranges: a window mixing them would hold both
    doc_a, doc_b = np.arange(0, 150), np.arange(1000, 1100)
    wa, wb = document_examples(doc_a, 32, 64), document_examples(doc_b, 32, 64)
    assert wa.shape == (150 // 32 - 1, 64) and wb.shape == (100 // 32 - 1, 64)
    for w in wa:
        assert w[0] % 32 == 0 and np.array_equal(w, np.arange(w[0], w[0] + 64))
    assert (wb >= 1000).all()
    assert document_examples(np.arange(40), 32, 64).shape == (0, 64)  # shorter than the horizon


def test_a_stride_cuts_a_window_every_stride_tokens_inside_the_document():
    doc = np.arange(100, 300)  # 200 tokens
    windows = document_examples(doc, 32, 64, stride=8)
    assert windows.shape == ((200 - 64) // 8 + 1, 64)
    for e, w in enumerate(windows):
        np.testing.assert_array_equal(w, np.arange(100 + 8 * e, 100 + 8 * e + 64))
    # the default stride is one block
    np.testing.assert_array_equal(document_examples(doc, 32, 64), windows[::4])
    np.testing.assert_array_equal(document_examples(doc, 32, 64, stride=32), windows[::4])
    assert document_examples(np.arange(63), 32, 64, stride=4).shape == (0, 64)


def _write(tmp_path, windows, *, should_cancel=None):
    config = validate_dataset_config(small_dataset_config(teacher_states="none"))
    resources = PrepResources(tokenizer=None, teacher=None, hidden_size=128, vocab_size=512)
    counters = {"documents": 0, "tokens": 0, "blocks": 0, "examples": 0}
    out = tmp_path / "train.arrow"
    write_shard(
        what="split 'train'",
        split="train",
        windows=iter(windows),
        out_path=out,
        config=config,
        resources=resources,
        counters=counters,
        on_batch=lambda: None,
        should_cancel=should_cancel,
    )
    return out, counters, config


def test_a_token_only_shard_holds_every_window_in_order(tmp_path):
    windows = [document_examples(np.arange(i * 1000, i * 1000 + 200), 32, 64) for i in range(3)]
    out, counters, config = _write(tmp_path, windows)
    table = pa.ipc.open_file(pa.memory_map(str(out))).read_all()
    assert table.schema.equals(shard_schema_of(config, "train", 128), check_metadata=True)
    expected = np.concatenate(windows)
    assert counters["examples"] == len(expected) == table.num_rows
    np.testing.assert_array_equal(np.stack(table["context_input_ids"].to_numpy(False)), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["train.arrow"]


def test_a_cancel_while_a_shard_is_written_leaves_no_shard_and_no_temporary(tmp_path):
    windows = [document_examples(np.arange(0, 400), 32, 64)]
    with pytest.raises(Cancelled, match="split 'train'"):
        _write(tmp_path, windows, should_cancel=lambda: True)
    assert list(tmp_path.iterdir()) == []


def test_documents_reach_the_tokenizer_in_chunks_bounded_by_count_and_by_text():
    texts = ["a" * 10] * 7 + ["b" * 100] + ["c" * 5] * 3
    chunks = list(_chunks(iter(texts), 4, 25))
    assert [len(c) for c in chunks] == [2, 2, 2, 1, 1, 3]  # 20 chars each, the long one alone
    assert sum(chunks, []) == texts
    assert [len(c) for c in _chunks(iter(["x"] * 9), 4, 1000)] == [4, 4, 1]
