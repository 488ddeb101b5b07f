"""The geometric table's data: corpus -> tokenizer -> context windows, and the frozen geometry built from them.

N windows . C context . V classes (incl. UNK) . k coordinate dim . K graph neighbours

One tokenizer, vocabulary, split and UNK policy for all models; every model is scored on the same validation
targets (every position of every validation story, PAD left-padded context, no end-of-story target).
Geometry (train stories only): symmetric window counts -> PPMI -> rank-k SVD -> unit sphere X [V,k]; top-K PPMI graph
(nbr [V,K], A); successor geometry: directed window-1 counts -> PPMI -> out-role coordinates Xout (--successor-dim).
Under MPI the counts are computed on shards of the stories and summed (exact integers); the SVD runs on rank 0 and
is broadcast.
"""
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import scipy.sparse as sp

from ..core.errors import ConfigError, DataError
from ..data.batches import context_windows
from ..data.corpus import load_corpus, read_stories
from ..data.tokenizer import get_tokenizer
from ..geometry.coords import sphere_coords, successor_coords
from ..geometry.graph import neighbour_graph, topk_graph
from ..geometry.pmi import cooccurrence, directed_cooccurrence, ppmi
from ..models import geometric as G


def log(msg, comm):
    """One progress line on stderr from rank 0 (one write per line, so parallel model processes do not
    interleave mid-line)."""
    if comm.rank == 0:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()


@dataclass(frozen=True, eq=False)
class GeoData:
    """Everything the models of one table share: the tokenizer, the windows (X* [N,C] int32 contexts, y* [N] int32
    targets; Xho/yho the held-out kappa-fit windows or None), the geometry (build_geometry) and the data record
    written to results.json."""

    tok: Any
    Xtr: np.ndarray
    ytr: np.ndarray
    Xva: np.ndarray
    yva: np.ndarray
    Xho: Optional[np.ndarray]
    yho: Optional[np.ndarray]
    geo: dict
    info: dict


def load_data(cfg, comm):
    """-> dict(tok, train/val/heldout id lists, source line, provenance fields).

    Training stories: the first N (--max-train-stories), then any --extra-data stories; held out: the next
    --kappa-holdout stories; tokenizer and vocabulary: the first --tokenizer-stories stories, else the training
    stories."""
    n, n_ho = cfg.max_train_stories, cfg.kappa_holdout
    corpus = load_corpus(cfg.data, cfg.val_data, max_train=max(n + n_ho, cfg.tokenizer_stories),
                         max_val=cfg.max_val_stories, seed=cfg.seed, quiet=comm.rank != 0,
                         allow_builtin=cfg.builtin_fallback)
    if len(corpus.train) < cfg.tokenizer_stories:
        raise ConfigError(f"--tokenizer-stories: the data has only {len(corpus.train)} training stories, "
                          f"asked for {cfg.tokenizer_stories}; pass a smaller number (or 0)")
    train = corpus.train[:n]
    heldout = corpus.train[n:n + n_ho]
    ho_src = f"training stories {n}..{n + len(heldout) - 1}"
    if not heldout and n_ho:  # file too small: hold out the last 5 % of train (not trained on)
        k = max(1, len(train) // 20) if len(train) > 1 else 0
        train, heldout = train[: len(train) - k], train[len(train) - k:]
        ho_src = f"last {k} of the training stories (held out of training: the file has no more)"
    tok_texts = corpus.train[:cfg.tokenizer_stories] if cfg.tokenizer_stories else train
    source = corpus.source
    n_first = len(train)
    if cfg.extra_data:
        extra = read_stories(cfg.extra_data)
        train = train + extra
        source += f"; + {len(extra)} extra training stories from {cfg.extra_data}"
    if cfg.tokenizer_stories:
        source += f"; tokenizer and vocabulary from the first {cfg.tokenizer_stories} training stories"
    tok = get_tokenizer(tok_texts, cfg.vocab_size, min_frequency=cfg.min_count, cache_dir=Path(cfg.output),
                        min_count=cfg.min_count)
    tr, va, ho = tok.encode_stories(train), tok.encode_stories(corpus.val), tok.encode_stories(heldout)
    return dict(tok=tok, train=tr, val=va, heldout=ho, source=source, heldout_source=ho_src,
                n_train=len(train), n_first=n_first, n_val=len(corpus.val), n_heldout=len(heldout))


def _allgather_obj(comm, obj):
    raw = getattr(comm, "comm", None)
    if raw is not None and hasattr(raw, "allgather"):
        return raw.allgather(obj)
    return [obj]


def shard_counts(fn, stories, V, comm, **kw):
    """Counts of this rank's stories, summed over ranks (exact int64) -> CSR [V,V]."""
    C = fn(stories[comm.rank::comm.size], V, **kw).tocoo()
    if comm.size == 1:
        return C.tocsr()
    allp = _allgather_obj(comm, (C.row, C.col, C.data))
    r = np.concatenate([p[0] for p in allp])
    c = np.concatenate([p[1] for p in allp])
    d = np.concatenate([p[2] for p in allp])
    out = sp.coo_matrix((d, (r, c)), shape=C.shape).tocsr()
    out.sum_duplicates()
    return out


def build_geometry(cfg, tok, train, comm):
    """Symmetric coords X [V,k], graph (nbr, A), successor coords Xout, their permutation controls, info."""
    V, unk = tok.V, tok.unk_id
    sm = cfg.ppmi_smoothing or None
    C = shard_counts(cooccurrence, train, V, comm, window=cfg.window, exclude=(unk,))
    D = shard_counts(directed_cooccurrence, train, V, comm, window=1, exclude=(unk,))

    def svd():
        P = ppmi(C, sm)
        X, info = sphere_coords(P, cfg.coord_dim, seed=cfg.seed, fill_rows=(unk,))
        nbr, _ = topk_graph(P, cfg.k)
        Xout, _, sinfo = successor_coords(ppmi(D, sm), cfg.successor_dim, seed=cfg.seed, fill_rows=(unk,))
        return X, nbr, Xout, info, sinfo

    if comm.size == 1:
        X, nbr, Xout, info, sinfo = svd()
    else:
        X, nbr, Xout, info, sinfo = comm.bcast_obj(svd() if comm.rank == 0 else None)
    A = neighbour_graph(nbr, V)
    rng = np.random.default_rng([cfg.seed, 7])
    perm, perm2 = rng.permutation(V), rng.permutation(V)
    pad = tok.pad_id
    tables = {"sym": G.build_tables(X, nbr, pad, Xout, cfg.successor_context),
              "sym_shuffled": G.build_tables(X[perm], nbr[perm], pad, Xout, cfg.successor_context),
              "succ": G.build_tables(X, nbr, pad, Xout, cfg.successor_context),
              "succ_shuffled": G.build_tables(X, nbr, pad, Xout[perm2], cfg.successor_context)}
    ginfo = {"spectrum_kept": info["spectrum_kept"], "coord_dim": cfg.coord_dim, "filled_rows": info["filled_rows"],
             "successor_spectrum_kept": sinfo["spectrum_kept"], "successor_dim": cfg.successor_dim,
             "graph_edges": int(A.nnz // 2), "nnz_ppmi_counts": int(C.nnz)}
    return dict(X=X, nbr=nbr, A=A, tables=tables, info=ginfo)


def windows(stories, C, pad):
    """Every next-token position of every story -> (contexts [N,C] int32, targets [N] int32)."""
    X, y = context_windows(stories, C, pad)
    return np.ascontiguousarray(X, dtype=np.int32), np.ascontiguousarray(y, dtype=np.int32)


def prepare_data(cfg, comm):
    """Corpus, tokenizer, windows and geometry of the table -> GeoData (progress lines on rank 0)."""
    t0 = time.perf_counter()
    d = load_data(cfg, comm)
    tok, V, pad = d["tok"], d["tok"].V, d["tok"].pad_id
    Xtr, ytr = windows(d["train"], cfg.context, pad)
    Xva, yva = windows(d["val"], cfg.context, pad)
    Xho, yho = windows(d["heldout"], cfg.context, pad) if d["heldout"] else (None, None)
    scored = d["val"]
    if cfg.eval_on == "heldout":  # choosing hyper-parameters: every "val" number below is the held-out stories'
        if Xho is None:
            raise DataError("--eval-on heldout: no held-out training stories; pass --kappa-holdout N > 0 with a "
                            "file that has more than --max-train-stories stories")
        Xva, yva, scored = Xho, yho, d["heldout"]
    n_tok_val = int(len(yva))
    info = {"source": d["source"], "train_stories": d["n_train"], "val_stories": len(scored), "vocab_size": V,
            "eval_on": "validation" if cfg.eval_on == "val" else "held-out " + d["heldout_source"],
            "first_train_stories": d["n_first"], "val_tokens": n_tok_val, "unk_rate": tok.unk_rate(scored), "train_unk_rate": tok.unk_rate(d["train"]),
            "train_tokens": int(len(ytr)), "heldout_stories": d["n_heldout"], "heldout_source": d["heldout_source"],
            "tokenizer_hash": tok.hash, "seconds": time.perf_counter() - t0}
    log(f"data: {d['source']}; {d['n_train']} train / {len(scored)} scored ({info['eval_on']}) stories, V={V}, "
        f"{len(ytr)} train / {n_tok_val} scored targets, UNK rate {info['unk_rate']:.4f}", comm)

    t0 = time.perf_counter()
    geo = build_geometry(cfg, tok, d["train"], comm)
    info["geometry"] = dict(geo["info"], seconds=time.perf_counter() - t0)
    log(f"geometry: {cfg.coord_dim}-D sphere keeps {geo['info']['spectrum_kept']:.3%} of the PPMI spectrum, "
        f"successor {cfg.successor_dim}-D keeps {geo['info']['successor_spectrum_kept']:.3%}, "
        f"{geo['info']['graph_edges']} graph edges ({info['geometry']['seconds']:.1f} s)", comm)
    return GeoData(tok=tok, Xtr=Xtr, ytr=ytr, Xva=Xva, yva=yva, Xho=Xho, yho=yho, geo=geo, info=info)
