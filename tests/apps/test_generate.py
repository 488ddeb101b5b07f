"""Sampling: temperature / top-k distributions, greedy, context cropping, empty prompts -> DataError."""
import numpy as np
import pytest

from geolm.apps import generate as gen
from geolm.core.errors import ConfigError, DataError


def test_top_k_keeps_only_k_largest(rng):
    logits = np.array([0.1, 3.0, -1.0, 2.0, 2.5, 0.0])
    pr = gen.sampling_probs(logits, temperature=1.0, top_k=2)
    assert set(np.nonzero(pr)[0]) == {1, 4}
    np.testing.assert_allclose(pr[[1, 4]], np.exp([3.0, 2.5]) / np.exp([3.0, 2.5]).sum())
    draws = {gen.sample_next(logits, rng, 1.0, 2) for _ in range(200)}
    assert draws == {1, 4}


def test_temperature_sharpens_and_flattens():
    logits = np.array([1.0, 2.0, 0.0])
    p1 = gen.sampling_probs(logits, 1.0)
    np.testing.assert_allclose(p1, np.exp(logits) / np.exp(logits).sum())
    cold = gen.sampling_probs(logits, 0.1)
    hot = gen.sampling_probs(logits, 10.0)
    assert cold.max() > p1.max() > hot.max()
    np.testing.assert_allclose(gen.sampling_probs(logits, 2.0), np.exp(logits / 2) / np.exp(logits / 2).sum())
    greedy = gen.sampling_probs(logits, 0.0)
    np.testing.assert_array_equal(greedy, [0.0, 1.0, 0.0])


def test_sample_frequencies_match_probs(rng):
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    draws = np.array([gen.sample_next(logits, rng, 1.0, 0) for _ in range(4000)])
    freq = np.bincount(draws, minlength=3) / draws.size
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.03)


def test_generate_crops_context_and_stops_at_eos(rng):
    seen = []

    def logits_fn(ids):
        seen.append(ids.shape)
        out = np.zeros(5)
        out[(int(ids[0, -1]) + 1) % 5] = 10.0  # next = last + 1
        return out

    new = gen.generate(logits_fn, [0], 10, rng, temperature=0.0, top_k=0, max_context=3, stop_id=4)
    np.testing.assert_array_equal(new, [1, 2, 3, 4])
    assert max(s[1] for s in seen) <= 3 and all(s[0] == 1 for s in seen)


@pytest.mark.parametrize("kw", [dict(temperature=-1.0), dict(top_k=-2), dict(temperature=float("nan"))])
def test_bad_sampling_flags(kw, rng):
    with pytest.raises(ConfigError):
        gen.generate(lambda ids: np.zeros(3), [0], 2, rng, **{**dict(temperature=1.0, top_k=0), **kw})


class _Tok:
    """Whitespace tokenizer over a fixed word list; "x" -> UNK, other unknown words dropped; appends EOS."""
    words = ["<eos>", "once", "upon", "a", "time", "<unk>"]
    eos_id, unk_id = 0, 5

    def encode_stories(self, texts):
        return [np.array([self.words.index(w) if w != "x" else 5 for w in t.lower().split()
                          if w in self.words or w == "x"] + [0], np.int32) for t in texts]

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids)


@pytest.mark.parametrize("prompt", ["", "   ", "zzz qqq", "x x"])
def test_prompt_that_tokenizes_to_nothing(prompt, rng):
    with pytest.raises(DataError) as e:
        gen.generate_text(lambda ids: np.zeros(5), _Tok(), prompt, 3, rng)
    assert "--prompt" in str(e.value)


def test_generate_text_roundtrip(rng):
    def logits_fn(ids):
        out = np.full(5, -5.0)
        out[min(int(ids[0, -1]) + 1, 4)] = 5.0
        return out[None]  # [1,V] is accepted too

    text, new = gen.generate_text(logits_fn, _Tok(), "once upon", 2, rng, temperature=0.0)
    assert text == "once upon a time"
    np.testing.assert_array_equal(new, [3, 4])
