"""The data of a Riemannian run: corpus -> BPE tokenizer -> stories of ids -> EOS-joined [M, T+1] chunks -> batches.

B batch . T time (= seq_len) . M chunks

The tokenizer is cached in the run directory (DIR/tokenizers/<key>/), so a resumed run and the tools that load a
checkpoint (geolm.apps.riemann_load) rebuild the same one. Validation chunks keep the stream's tail, PAD-ed;
PAD targets become -1 (ignored by the loss).
"""
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..data.batches import sequence_chunks
from ..data.corpus import DEFAULT_HUB, load_corpus
from ..data.tokenizer import get_tokenizer


def prepare_data(cfg, rc, seed=0, quiet=False):
    """-> dict(corpus, tok, train_ids, val_ids (lists of int arrays), train_chunks, val_chunks [M, T+1] int32)."""
    corpus = load_corpus(rc.data, rc.val_data, rc.max_train_stories, rc.max_val_stories, seed=seed, quiet=quiet)
    out_dir = Path(rc.resume or rc.output)
    tok = get_tokenizer(corpus.train, cfg.vocab_size, rc.min_count, cache_dir=out_dir,  # -> DIR/tokenizers/<key>/
                        min_count=rc.min_count)
    train_ids = tok.encode_stories(corpus.train)
    val_ids = tok.encode_stories(corpus.val)
    tr = sequence_chunks(train_ids, cfg.seq_len, eos_id=tok.eos_id)
    va = sequence_chunks(val_ids, cfg.seq_len, eos_id=tok.eos_id, pad_id=tok.pad_id)  # keep the tail, PAD-ed
    if len(tr) == 0:
        raise DataError(f"the training stories give no chunk of {cfg.seq_len + 1} tokens; pass more --data or a "
                        f"smaller --seq-len")
    if len(va) == 0:
        raise DataError(f"the validation stories give no chunk of {cfg.seq_len + 1} tokens; pass more --val-data "
                        f"or a smaller --seq-len")
    return dict(corpus=corpus, tok=tok, train_ids=train_ids, val_ids=val_ids, train_chunks=tr, val_chunks=va)


def split_chunk(chunks, pad_id=None):
    """chunks [b, T+1] -> (ids [b,T], targets [b,T] int64 with PAD targets -> -1, i.e. ignored)."""
    tg = chunks[:, 1:].astype(np.int64)
    if pad_id is not None:
        tg[tg == pad_id] = -1
    return chunks[:, :-1], tg


def batches_of(chunks, bs, limit=0, pad_id=None):
    """Consecutive (ids [b,T], targets [b,T]) batches over chunks [M, T+1] (first `limit` batches; 0 = all)."""
    stops = range(0, len(chunks), bs)
    if limit:
        stops = list(stops)[:limit]
    return [split_chunk(chunks[i:i + bs], pad_id) for i in stops]


def where(data):
    """A data argument as recorded in checkpoints: local paths made absolute, None -> the default hub name."""
    if data is None:
        return DEFAULT_HUB
    p = Path(data).expanduser()
    return str(p.resolve()) if p.exists() else str(data)
