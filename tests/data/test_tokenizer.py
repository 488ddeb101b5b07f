import json

import numpy as np
import pytest

from geolm.data import tokenizer as tkm
from geolm.data.builtin import builtin_corpus
from geolm.core.errors import ConfigError, DataError
from geolm.data.tokenizer import Tok, get_tokenizer, with_eos


@pytest.fixture(scope="module")
def stories():
    train, val = builtin_corpus(300, 50, seed=2)
    return train, val


@pytest.fixture
def tok(stories, tmp_path):
    return get_tokenizer(stories[0], 600, 5, tmp_path)


def _entries(d):
    return sorted(p.name for p in (d / "tokenizers").iterdir() if not p.name.startswith("."))


def test_cache_hit_reuses_without_training(stories, tmp_path, monkeypatch):
    a = get_tokenizer(stories[0], 600, 5, tmp_path)
    assert len(_entries(tmp_path)) == 1

    def boom(*a, **k):
        raise AssertionError("retrained despite a cache hit")

    monkeypatch.setattr(tkm, "train_bpe", boom)
    b = get_tokenizer(stories[0], 600, 5, tmp_path)
    assert b.hash == a.hash and b.V == a.V


@pytest.mark.parametrize("change", ["text", "vocab_size", "min_frequency", "min_count", "order"])
def test_changed_text_or_setting_gives_new_key(stories, tmp_path, change):
    train = stories[0]
    base = dict(vocab_size=600, min_frequency=5, min_count=5)
    get_tokenizer(train, cache_dir=tmp_path, **base)
    kw, texts = dict(base), list(train)
    if change == "text":
        texts[7] = texts[7] + " The end."
    elif change == "order":
        texts[0], texts[1] = texts[1], texts[0]
    else:
        kw[change] += 1
    get_tokenizer(texts, cache_dir=tmp_path, **kw)
    assert len(_entries(tmp_path)) == 2


def test_tampered_cache_is_not_reused(stories, tmp_path):
    a = get_tokenizer(stories[0], 600, 5, tmp_path)
    (entry,) = _entries(tmp_path)
    meta_path = tmp_path / "tokenizers" / entry / "vocab.json"
    meta = json.loads(meta_path.read_text())
    meta["kept_bpe_ids"] = meta["kept_bpe_ids"][:-5]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="delete that directory"):
        Tok.load(meta_path.parent)
    b = get_tokenizer(stories[0], 600, 5, tmp_path)  # rebuilt, not the tampered one
    assert b.hash == a.hash and b.V == a.V


def test_unk_policy_and_vocab_order(stories, tok, tmp_path):
    train, val = stories
    assert (tok.eos_id, tok.unk_id, tok.pad_id) == (tok.V - 2, tok.V - 1, tok.V)
    assert tok.V <= 600 and len(tok.id_to_token) == tok.V
    ids = tok.encode_stories(train)
    assert len(ids) == len(train) and all(a.dtype == np.int32 for a in ids)
    flat = np.concatenate(ids)
    assert flat.min() >= 0 and flat.max() <= tok.unk_id  # no PAD, no EOS (not appended) in encodings
    assert not (flat == tok.eos_id).any()
    counts = np.bincount(flat, minlength=tok.V)
    kept = counts[: tok.V - 2]
    assert (kept >= 5).all()  # every kept token seen >= min_count times
    assert (np.diff(kept) <= 0).all()  # ordered by frequency
    # a character seen fewer than min_count times is UNK, in training and unseen text alike
    rare = get_tokenizer(train + ["Zoe found a \u03a9 and a \u03a9."], 600, 5, tmp_path / "rare")
    enc = rare.encode("\u03a9")
    assert (enc == rare.unk_id).all() and len(enc) >= 1
    assert (rare.encode("\u20ac") == rare.unk_id).all()
    assert 0.0 <= tok.unk_rate(tok.encode_stories(val)) < 0.05


def test_vocab_cap_and_decode_round_trip(stories, tmp_path):
    small = get_tokenizer(stories[0], 50, 5, tmp_path)
    assert small.V <= 50
    tok = get_tokenizer(stories[0], 600, 5, tmp_path)
    for s in stories[0][:20]:
        ids = tok.encode(s)
        if not (ids == tok.unk_id).any():
            assert tok.decode(ids) == s
    e = with_eos(tok.encode_stories(stories[0][:2]), tok.eos_id)
    assert e[0][-1] == tok.eos_id and e[0].dtype == np.int32
    assert tok.decode(e[0]).endswith("<|endoftext|>")
    assert tok.decode(np.r_[e[0], tok.pad_id]) == tok.decode(e[0])  # PAD dropped
    assert tok.id_to_token[tok.eos_id] == "<|endoftext|>" and tok.id_to_token[tok.unk_id] == "<unk>"


def test_save_load_round_trip(tok, stories, tmp_path):
    tok.save(tmp_path / "t")
    t2 = Tok.load(tmp_path / "t")
    assert t2.hash == tok.hash and t2.V == tok.V
    for a, b in zip(tok.encode_stories(stories[1]), t2.encode_stories(stories[1])):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError):
        Tok.load(tmp_path / "missing")


def test_hash_depends_on_vocabulary(stories, tmp_path):
    a = get_tokenizer(stories[0], 600, 5, tmp_path, min_count=5)
    b = get_tokenizer(stories[0], 600, 5, tmp_path, min_count=50)
    assert a.bpe.to_str() == b.bpe.to_str() and a.hash != b.hash and b.V < a.V


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GEOLM_CACHE", str(tmp_path / "c"))
    assert tkm.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("GEOLM_CACHE")
    assert tkm.default_cache_dir().name == "geolm"


@pytest.mark.parametrize("kw", [dict(vocab_size=3), dict(vocab_size=0), dict(vocab_size=-5), dict(min_frequency=0),
                                dict(min_count=0), dict(vocab_size=2.5)])
def test_bad_settings(stories, tmp_path, kw):
    args = dict(vocab_size=600, min_frequency=5, min_count=5) | kw
    with pytest.raises(ConfigError) as e:
        get_tokenizer(stories[0], cache_dir=tmp_path, **args)
    assert "\n" not in str(e.value) and "--" in str(e.value)


def test_no_stories(tmp_path):
    for texts in ([], ["   ", ""]):
        with pytest.raises(DataError, match="--data PATH"):
            get_tokenizer(texts, 600, 5, tmp_path)


@pytest.mark.data
def test_tinystories_vocab(tinystories, tmp_path):
    from geolm.data.corpus import load_corpus

    c = load_corpus(tinystories / "train.txt.gz")
    tok = get_tokenizer(c.train, 4096, 5, tmp_path)
    assert 2500 < tok.V <= 4096
    ids = tok.encode_stories(c.val)
    assert tok.unk_rate(ids) < 0.01
    assert tok.decode(tok.encode(c.train[0])) == c.train[0]
