import json

import numpy as np
import pytest

from geolm.data.batches import EpochSampler, context_windows, sequence_chunks, stream_with_eos
from geolm.core.errors import CheckpointError, ConfigError


def _stories(rng, lens, V=20):
    return [rng.integers(0, V, n).astype(np.int32) for n in lens]


def _naive_windows(stories, n_ctx, pad):
    X, y = [], []
    for s in stories:
        for i in range(len(s)):
            ctx = [pad] * n_ctx + list(s[:i])
            X.append(ctx[len(ctx) - n_ctx:])
            y.append(s[i])
    return np.array(X, dtype=np.int32).reshape(-1, n_ctx), np.array(y, dtype=np.int32)


@pytest.mark.parametrize("n_ctx", [1, 2, 3, 8])
def test_context_windows_match_naive(rng, n_ctx):
    stories = _stories(rng, [1, 0, 5, 2, 12, 3, 1])
    X, y = context_windows(stories, n_ctx, pad_id=99)
    Xn, yn = _naive_windows(stories, n_ctx, 99)
    assert X.dtype == np.int32 and y.dtype == np.int32
    assert X.shape == (sum(map(len, stories)), n_ctx)
    np.testing.assert_array_equal(X, Xn)
    np.testing.assert_array_equal(y, yn)


def test_context_windows_never_cross_stories():
    stories = [np.array([1, 2, 3], np.int32), np.array([4, 5], np.int32)]
    X, y = context_windows(stories, 4, pad_id=0)
    np.testing.assert_array_equal(y, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(X[3], [0, 0, 0, 0])  # first token of story 2: all PAD, nothing from story 1
    np.testing.assert_array_equal(X[4], [0, 0, 0, 4])
    np.testing.assert_array_equal(X[2], [0, 0, 1, 2])


def test_context_windows_filter_and_empty(rng):
    stories = _stories(rng, [6, 4])
    X, y = context_windows(stories, 3, 99, targets_filter=lambda t: t != stories[0][0])
    Xa, ya = context_windows(stories, 3, 99)
    keep = ya != stories[0][0]
    np.testing.assert_array_equal(X, Xa[keep])
    np.testing.assert_array_equal(y, ya[keep])
    X0, y0 = context_windows([], 3, 99)
    assert X0.shape == (0, 3) and y0.shape == (0,)
    with pytest.raises(ConfigError):
        context_windows(stories, 0, 99)


def test_stream_with_eos_layout():
    s = stream_with_eos([np.array([1, 2], np.int32), np.array([3], np.int32)], eos_id=7)
    np.testing.assert_array_equal(s, [7, 1, 2, 7, 3, 7])
    assert s.dtype == np.int32
    np.testing.assert_array_equal(stream_with_eos([], 7), [7])


@pytest.mark.parametrize("T", [1, 3, 5, 64])
def test_sequence_chunks_cover_every_target_once(rng, T):
    stories = _stories(rng, [5, 9, 1, 7])
    stream = stream_with_eos(stories, eos_id=20)
    C = sequence_chunks(stream, T)
    M = (stream.size - 1) // T
    assert C.shape == (M, T + 1) and C.dtype == np.int32
    if M:
        np.testing.assert_array_equal(C[:, 1:].ravel(), stream[1:M * T + 1])  # targets: contiguous, no overlap
        np.testing.assert_array_equal(C[:, :-1].ravel(), stream[:M * T])  # inputs likewise
    P = sequence_chunks(stories, T, eos_id=20, pad_id=21)  # padded tail keeps every target
    tg = P[:, 1:].ravel()
    np.testing.assert_array_equal(tg[tg != 21], stream[1:])
    assert (P[:, 0] != 21).all()


def test_sequence_chunks_bad_args():
    with pytest.raises(ConfigError):
        sequence_chunks(np.arange(10), 0)
    with pytest.raises(ValueError):
        sequence_chunks([np.arange(3)], 2)


def test_sampler_epochs_are_seeded_permutations():
    s = EpochSampler(10, 4, seed=3)
    assert s.steps_per_epoch == 3
    for e in range(3):
        batches = [s.next() for _ in range(s.steps_per_epoch)]
        assert [len(b) for b in batches] == [4, 4, 2]
        np.testing.assert_array_equal(np.concatenate(batches), np.random.default_rng([3, e]).permutation(10))
        assert s.epoch == e + 1 and s.pos == 0
    ns = EpochSampler(5, 2, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([ns.next() for _ in range(3)]), np.arange(5))


@pytest.mark.parametrize("k", [0, 1, 2, 3, 7])
def test_sampler_exact_resume(k):
    a = EpochSampler(11, 3, seed=5)
    for _ in range(k):
        a.next()
    state = json.loads(json.dumps(a.state_dict()))  # ints only
    b = EpochSampler(11, 3, seed=5)
    b.load_state_dict(state)
    for _ in range(10):  # crosses epoch boundaries
        np.testing.assert_array_equal(a.next(), b.next())
    assert a.state_dict() == b.state_dict()


def test_sampler_bad_state_and_args():
    a = EpochSampler(11, 3, seed=5)
    with pytest.raises(CheckpointError, match="same data"):
        EpochSampler(12, 3, seed=5).load_state_dict(a.state_dict())
    with pytest.raises(CheckpointError):
        EpochSampler(11, 3, seed=6).load_state_dict(a.state_dict())
    bad = dict(a.state_dict(), pos=11)
    with pytest.raises(CheckpointError):
        EpochSampler(11, 3, seed=5).load_state_dict(bad)
    for n, bs in ((0, 3), (5, 0), (5, -1)):
        with pytest.raises(ConfigError):
            EpochSampler(n, bs)
