"""Byte-level BPE (HF `tokenizers`) trained on the training stories, and the one model vocabulary every model shares.

V vocab (output classes) . N tokens

BPE: ByteLevel pre-tokenizer and decoder (no prefix space), trained on the training stories only, `vocab_size`
(BPE ids, incl. the 256 byte symbols and the specials) and `min_frequency` (default 5); specials <unk>, <pad>,
<|endoftext|>. Stories are encoded without specials.

Model vocabulary and the UNK policy (one policy, shared by every model; spec 2.2):
- ids 0 .. V-3: the BPE tokens seen at least `min_count` (default 5) times in the encoded training stories, ordered
  by count (descending; ties by BPE id), at most `vocab_size - 2` of them, so V <= vocab_size;
- EOS = V-2: end of story (appended by `with_eos` / `batches.stream_with_eos` where a model predicts it);
- UNK = V-1: every other BPE token (rare merges, unused bytes), in inputs *and* targets. UNK is an ordinary output
  class: perplexity counts it (and reports its rate), nothing is dropped or renormalised;
- PAD = V: input-only (left padding of short contexts); never a target, so there are V output classes.

Cache: a trained tokenizer lives in `<cache_dir>/tokenizers/<key>/`, key = sha256 of (sha256 of the training text,
vocab_size, min_frequency, min_count, tokenizers version, format). A cached tokenizer is reused only if its stored
settings and text hash equal the requested ones; a changed text or setting gives another key, never a stale file.
`Tok.hash` = sha256 of the tokenizer JSON + the model vocabulary; checkpoints store it to detect a mismatch.
Default cache_dir: $GEOLM_CACHE, else ~/.cache/geolm.
"""
import hashlib
import itertools
import json
import os
from pathlib import Path

import numpy as np

from ..core.errors import ConfigError, DataError
from ..core.io import atomic_dir

SPECIALS = ("<unk>", "<pad>", "<|endoftext|>")
UNK_TOKEN, PAD_TOKEN, EOS_TOKEN = SPECIALS
FORMAT = 1


def default_cache_dir():
    return Path(os.environ.get("GEOLM_CACHE") or Path.home() / ".cache" / "geolm")


def text_hash(texts):
    """sha256 over the stories, each length-prefixed (so story boundaries count)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _settings(vocab_size, min_frequency, min_count):
    import tokenizers

    return {"vocab_size": int(vocab_size), "min_frequency": int(min_frequency), "min_count": int(min_count),
            "tokenizers": tokenizers.__version__, "format": FORMAT}


def cache_key(text_sha, settings):
    blob = json.dumps({"text": text_sha, **settings}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _check_settings(vocab_size, min_frequency, min_count):
    for flag, v in (("vocab-size", vocab_size), ("min-frequency", min_frequency), ("min-count", min_count)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ConfigError(f"--{flag}: must be a positive integer, got {v!r}")
    if vocab_size <= len(SPECIALS):
        raise ConfigError(f"--vocab-size: must exceed the {len(SPECIALS)} special tokens {', '.join(SPECIALS)} "
                          f"(got {vocab_size}); use e.g. 4096")


def train_bpe(texts, vocab_size, min_frequency):
    """Byte-level BPE tokenizer trained on texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), min_frequency=int(min_frequency),
                                  special_tokens=list(SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(texts, trainer, length=len(texts))
    return bpe


def _bpe_encode(bpe, texts):
    """BPE ids of many texts -> (flat int64 [N], lengths [len(texts)])."""
    enc = getattr(bpe, "encode_batch_fast", bpe.encode_batch)(list(texts), add_special_tokens=False)
    ids = [e.ids for e in enc]
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lens.sum()))
    return flat, lens


def model_vocab(bpe, texts, vocab_size, min_count):
    """BPE ids kept as model ids 0..: count >= min_count, by count desc then id, at most vocab_size - 2."""
    flat, _ = _bpe_encode(bpe, texts)
    counts = np.bincount(flat, minlength=bpe.get_vocab_size())
    for s in SPECIALS:
        counts[bpe.token_to_id(s)] = 0
    ids = np.flatnonzero(counts >= min_count)
    ids = ids[np.lexsort((ids, -counts[ids]))]  # count desc, ties by BPE id
    return ids[: vocab_size - 2].astype(np.int64)


class Tok:
    """BPE + model vocabulary. V output classes (kept tokens, EOS, UNK); PAD = V is input-only."""

    def __init__(self, bpe, kept_bpe_ids, settings, text_sha=""):
        self.bpe = bpe
        self.kept = np.asarray(kept_bpe_ids, dtype=np.int64)
        self.settings = dict(settings)
        self.text_sha = text_sha
        n = len(self.kept)
        self.V = n + 2
        self.eos_id, self.unk_id, self.pad_id = n, n + 1, n + 2
        b_unk, b_pad, b_eos = (bpe.token_to_id(s) for s in SPECIALS)
        self._to_model = np.full(bpe.get_vocab_size(), self.unk_id, dtype=np.int32)  # BPE id -> model id
        self._to_model[self.kept] = np.arange(n, dtype=np.int32)
        self._to_model[b_eos] = self.eos_id
        self._to_bpe = np.concatenate([self.kept, [b_eos, b_unk, b_pad]]).astype(np.int64)  # model id -> BPE id
        self.hash = hashlib.sha256(bpe.to_str().encode() + b"\0" + json.dumps(self.kept.tolist()).encode()).hexdigest()
        self._id_to_token = None

    def __repr__(self):
        return f"Tok(V={self.V}, bpe={self.bpe.get_vocab_size()}, hash={self.hash[:12]})"

    def encode_stories(self, texts):
        """Model ids of each story (int32 arrays, no EOS appended)."""
        if isinstance(texts, str):
            raise TypeError("encode_stories takes a list of stories; use encode(text) for one")
        if len(texts) == 0:
            return []
        flat, lens = _bpe_encode(self.bpe, texts)
        ids = self._to_model[flat]  # [N] int32
        return np.split(ids, np.cumsum(lens)[:-1])

    def encode(self, text):
        return self.encode_stories([text])[0]

    def decode(self, ids):
        """Text of model ids; EOS and UNK appear as <|endoftext|> and <unk>; PAD is dropped."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() > self.pad_id):
            raise ValueError(f"model ids must lie in 0..{self.pad_id}")
        ids = ids[ids != self.pad_id]
        return self.bpe.decode(self._to_bpe[ids].tolist(), skip_special_tokens=False)

    @property
    def id_to_token(self):
        """Readable string of each model id (list of length V); byte fragments of a character show as U+FFFD."""
        if self._id_to_token is None:
            toks = self.bpe.decode_batch([[int(b)] for b in self.kept], skip_special_tokens=False)
            self._id_to_token = list(toks) + [EOS_TOKEN, UNK_TOKEN]
        return self._id_to_token

    def unk_rate(self, stories):
        """Fraction of tokens that are UNK in a list of model-id arrays."""
        n = sum(len(s) for s in stories)
        return 0.0 if n == 0 else float(sum(int((s == self.unk_id).sum()) for s in stories)) / n

    # -- persistence
    def save(self, directory):
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.bpe.save(str(d / "tokenizer.json"))
        meta = {"format": FORMAT, "kept_bpe_ids": self.kept.tolist(), "settings": self.settings,
                "text_sha256": self.text_sha, "hash": self.hash, "V": self.V}
        (d / "vocab.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory):
        from tokenizers import Tokenizer

        d = Path(directory)
        try:
            bpe = Tokenizer.from_file(str(d / "tokenizer.json"))
            meta = json.loads((d / "vocab.json").read_text())
            tok = cls(bpe, meta["kept_bpe_ids"], meta["settings"], meta.get("text_sha256", ""))
        except Exception as e:  # noqa: BLE001 - missing / corrupt files
            raise DataError(f"cannot load tokenizer from {d} ({type(e).__name__}); delete that directory "
                            f"(it is rebuilt from the training stories)") from None
        if meta.get("format") != FORMAT or meta.get("hash") != tok.hash:
            raise DataError(f"tokenizer in {d} does not match its recorded hash (edited or another format); "
                            f"delete that directory (it is rebuilt from the training stories)")
        return tok


def with_eos(stories, eos_id):
    """Each story with EOS appended (list of int32 arrays)."""
    tail = np.array([eos_id], dtype=np.int32)
    return [np.concatenate([np.asarray(s, dtype=np.int32), tail]) for s in stories]


def get_tokenizer(train_texts, vocab_size=4096, min_frequency=5, cache_dir=None, *, min_count=5, use_cache=True):
    """Tokenizer for these training stories and settings: from the cache when the key matches, else trained."""
    _check_settings(vocab_size, min_frequency, min_count)
    if not train_texts or not any(t.strip() for t in train_texts):
        raise DataError("no training stories to train the tokenizer on; pass --data PATH to a file with stories")
    settings = _settings(vocab_size, min_frequency, min_count)
    sha = text_hash(train_texts)
    key = cache_key(sha, settings)
    path = Path(cache_dir or default_cache_dir()) / "tokenizers" / key
    if use_cache and (path / "vocab.json").is_file():
        try:
            tok = Tok.load(path)
            if tok.settings == settings and tok.text_sha == sha:
                return tok
        except DataError:
            pass  # corrupt entry: rebuild below
    bpe = train_bpe(train_texts, vocab_size, min_frequency)
    tok = Tok(bpe, model_vocab(bpe, train_texts, vocab_size, min_count), settings, sha)
    if use_cache:
        _save_atomic(tok, path)
    return tok


def _save_atomic(tok, path):
    """Write into a temporary sibling, then rename, so a reader never sees half a tokenizer."""
    try:
        atomic_dir(path, tok.save)  # replaces a corrupt entry (a valid one was returned before training)
    except OSError:  # read-only cache, or another process renamed first: the tokenizer is still usable
        pass
