"""geolm.apps.riemann_data: chunks -> (ids, targets) batches with PAD targets ignored."""
import numpy as np

from geolm.apps.riemann_data import batches_of, split_chunk, where
from geolm.data.corpus import DEFAULT_HUB


def test_split_chunk_masks_pad():
    ch = np.array([[1, 2, 3, 9], [4, 5, 9, 9]], np.int32)
    ids, tg = split_chunk(ch, pad_id=9)
    np.testing.assert_array_equal(ids, [[1, 2, 3], [4, 5, 9]])
    np.testing.assert_array_equal(tg, [[2, 3, -1], [5, -1, -1]])


def test_batches_of_covers_the_chunks_in_order_and_limits():
    ch = np.arange(5 * 4, dtype=np.int32).reshape(5, 4)
    bs = batches_of(ch, 2)
    assert [b[0].shape[0] for b in bs] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in bs]), ch[:, :-1])
    assert len(batches_of(ch, 2, limit=2)) == 2


def test_where_records_absolute_paths_and_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.txt").write_text("x")
    assert where("d.txt") == str(tmp_path / "d.txt")
    assert where(None) == DEFAULT_HUB and where("builtin") == "builtin"
