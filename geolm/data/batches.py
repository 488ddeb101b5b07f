"""Training examples from encoded stories: fixed-context windows, EOS-joined streams cut into chunks, and an
epoch sampler that resumes exactly.

M examples . C context length (n_ctx) . T chunk length . N tokens

- `context_windows` (geographdb models, spec 2.8): one example per token of every story; its context is the up to
  n_ctx previous tokens *of the same story*, left-padded with PAD (so the first token of a story is predicted from
  an all-PAD context); no context crosses a story boundary; no end-of-story target.
- `stream_with_eos` + `sequence_chunks` (Transformer models, spec 1.4): stories joined into one stream
  [EOS, s0..., EOS, s1..., EOS, ...]; chunks of T+1 tokens with stride T, so inputs = chunk[:, :T],
  targets = chunk[:, 1:] and every story token and every end-of-story EOS is a target exactly once
  (context does cross stories here, as in GPT-style training; EOS marks the boundary).
- `EpochSampler`: minibatch indices; epoch e visits `default_rng([seed, e]).permutation(n)` in order; its state is
  a few ints, so a checkpoint resumes the exact sequence of batches.
"""
import math

import numpy as np

from ..core.errors import CheckpointError, ConfigError


def _lengths(stories):
    return np.fromiter(map(len, stories), dtype=np.int64, count=len(stories))


def context_windows(stories, n_ctx, pad_id, targets_filter=None):
    """(X [M,n_ctx] int32, y [M] int32): y = every token of every story, X = its n_ctx predecessors in that story,
    left-padded with pad_id. targets_filter: optional callable y [N] -> bool mask [N] of rows to keep."""
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, (int, np.integer)) or n_ctx <= 0:
        raise ConfigError(f"--n-ctx: context length must be a positive integer, got {n_ctx!r}")
    lens = _lengths(stories)
    n = int(lens.sum())
    if n == 0:
        return np.zeros((0, n_ctx), np.int32), np.zeros(0, np.int32)
    flat = np.concatenate([np.asarray(s, dtype=np.int32) for s in stories if len(s)])  # [N]
    pos = np.arange(n, dtype=np.int64)  # [N] global index of each target
    in_story = pos - np.repeat(np.cumsum(lens) - lens, lens)  # [N] its index within its story
    X = np.empty((n, n_ctx), dtype=np.int32)  # [N,C]
    for k in range(n_ctx):  # one pass per context slot (C passes), none per token
        back = n_ctx - k  # slot k holds the token `back` steps before the target
        X[:, k] = np.where(in_story >= back, flat[np.maximum(pos - back, 0)], np.int32(pad_id))  # [N]
    y = flat
    if targets_filter is not None:
        keep = np.asarray(targets_filter(y), dtype=bool)
        if keep.shape != y.shape:
            raise ValueError(f"targets_filter must return a bool mask of shape {y.shape}, got {keep.shape}")
        X, y = X[keep], y[keep]
    return X, y


def stream_with_eos(stories, eos_id):
    """One int32 stream: EOS, then each story followed by EOS. Length sum(len) + len(stories) + 1."""
    lens = _lengths(stories)
    out = np.full(int(lens.sum()) + len(stories) + 1, eos_id, dtype=np.int32)
    if len(stories):
        body = np.ones(out.size, dtype=bool)  # True where a story token goes
        body[0] = False
        body[np.cumsum(lens + 1)] = False  # each story's trailing EOS
        out[body] = np.concatenate([np.asarray(s, dtype=np.int32) for s in stories])
    return out


def sequence_chunks(stream, T, eos_id=None, pad_id=None):
    """[M, T+1] int32 chunks of a 1-D stream with stride T: chunk m = stream[m*T : m*T + T + 1].
    A list of stories is joined first with `stream_with_eos` (needs eos_id). The tail that does not fill a chunk is
    dropped, unless pad_id is given: then it becomes a last chunk right-padded with pad_id (mask targets == pad_id)."""
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T <= 0:
        raise ConfigError(f"--seq-len: chunk length must be a positive integer, got {T!r}")
    if not isinstance(stream, np.ndarray) or stream.ndim != 1:
        if eos_id is None:
            raise ValueError("sequence_chunks got a list of stories; pass eos_id (or a stream from stream_with_eos)")
        stream = stream_with_eos(stream, eos_id)
    stream = np.asarray(stream, dtype=np.int32)
    n_tgt = stream.size - 1
    M = n_tgt // T
    if pad_id is not None and n_tgt % T:
        M += 1
        stream = np.concatenate([stream, np.full(M * T + 1 - stream.size, pad_id, np.int32)])
    if M <= 0:
        return np.zeros((0, T + 1), np.int32)
    idx = np.arange(M)[:, None] * T + np.arange(T + 1)[None, :]  # [M,T+1]
    return stream[idx]


class EpochSampler:
    """Minibatches of indices into n examples. Epoch e uses default_rng([seed, e]).permutation(n) (or arange when
    shuffle=False), cut into ceil(n / batch_size) batches, the last one possibly smaller. After the last batch of an
    epoch, `epoch` advances and `pos` returns to 0. State = ints only (exact resume)."""

    def __init__(self, n, batch_size, seed=0, shuffle=True):
        for flag, v in (("n", n), ("batch-size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ConfigError(f"--{flag}: must be a positive integer, got {v!r}"
                                  + ("; the data gave no training examples" if flag == "n" else ""))
        self.n, self.batch_size, self.seed, self.shuffle = int(n), int(batch_size), int(seed), bool(shuffle)
        self.epoch, self.pos = 0, 0
        self._perm_epoch, self._perm = None, None

    @property
    def steps_per_epoch(self):
        return math.ceil(self.n / self.batch_size)

    def permutation(self, epoch):
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.n)

    def next(self):
        """Indices of the next batch (int64 array)."""
        if self._perm_epoch != self.epoch:
            self._perm, self._perm_epoch = self.permutation(self.epoch), self.epoch
        idx = self._perm[self.pos: self.pos + self.batch_size]
        self.pos += idx.size
        if self.pos >= self.n:
            self.epoch, self.pos = self.epoch + 1, 0
        return idx

    __next__ = next

    def __iter__(self):
        return self

    def state_dict(self):
        return {"n": self.n, "batch_size": self.batch_size, "seed": self.seed, "shuffle": int(self.shuffle),
                "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, d):
        d = {k: int(v) for k, v in d.items()}  # also accepts 0-d arrays from an .npz
        for k in ("n", "batch_size", "seed", "shuffle"):
            if d[k] != int(getattr(self, k)):
                raise CheckpointError(f"sampler {k} is {d[k]} in the checkpoint but {int(getattr(self, k))} now; "
                                      f"resume with the same data and flags (or start a new run)")
        if not (0 <= d["pos"] < self.n and d["epoch"] >= 0):
            raise CheckpointError(f"sampler state epoch={d['epoch']} pos={d['pos']} is invalid for n={self.n}; "
                                  f"the checkpoint is corrupt, start a new run")
        self.epoch, self.pos = d["epoch"], d["pos"]
        self._perm_epoch = None
