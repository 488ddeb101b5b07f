"""Autoregressive sampling with temperature and top-k, for any model given as a next-token logits function.

V vocab . T context

    p(v) = softmax(logits / temperature) restricted to the top_k largest logits (top_k = 0: all V)
    temperature = 0 is greedy (argmax); ties in the top-k cut keep every logit equal to the k-th largest.
The model enters only through `logits_fn(ids [1,T] int) -> [V] or [1,V]`, e.g.
    logits_fn = lambda ids: riemann.logits_last(p, ids, cfg)
The context is cropped to the last `max_context` ids (the model's --seq-len) before each call.
"""
import math

import numpy as np

from ..core.errors import ConfigError, DataError


def check_sampling(temperature, top_k, n_new=0):
    if not (temperature >= 0.0 and math.isfinite(temperature)):
        raise ConfigError(f"--temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if int(top_k) != top_k or top_k < 0:
        raise ConfigError(f"--top-k must be an integer >= 0 (0 = no cut), got {top_k}")
    if int(n_new) != n_new or n_new < 0:
        raise ConfigError(f"the number of tokens to generate must be an integer >= 0, got {n_new}")


def sampling_probs(logits, temperature=1.0, top_k=0):
    """logits [V] -> float64 probabilities [V] after temperature and top-k (a one-hot argmax at temperature 0)."""
    check_sampling(temperature, top_k)
    z = np.asarray(logits, dtype=np.float64).reshape(-1)  # [V]
    if temperature == 0.0:
        out = np.zeros_like(z)
        out[int(np.argmax(z))] = 1.0
        return out
    z = z / temperature
    if 0 < top_k < z.size:
        kth = np.partition(z, z.size - top_k)[z.size - top_k]  # k-th largest
        z = np.where(z >= kth, z, -np.inf)
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def sample_next(logits, rng, temperature=1.0, top_k=0):
    """One token id drawn from sampling_probs(logits, temperature, top_k)."""
    pr = sampling_probs(logits, temperature, top_k)
    if temperature == 0.0:
        return int(np.argmax(pr))
    return int(rng.choice(pr.size, p=pr))


def generate(logits_fn, prompt_ids, n_new, rng, temperature=0.8, top_k=40, max_context=None, stop_id=None):
    """Extend prompt_ids (1-D int, non-empty) by up to n_new sampled ids -> new ids (int32 [<= n_new]).

    Stops early after emitting stop_id (which is included in the output)."""
    check_sampling(temperature, top_k, n_new)
    ids = [int(i) for i in np.asarray(prompt_ids).reshape(-1)]
    if not ids:
        raise DataError("the prompt is empty after tokenisation; pass a --prompt with some words")
    new = []
    for _ in range(int(n_new)):
        ctx = ids[-max_context:] if max_context else ids
        logits = np.asarray(logits_fn(np.asarray([ctx], dtype=np.int64)))  # [1,T] -> [V] or [1,V]
        nxt = sample_next(logits.reshape(-1), rng, temperature, top_k)
        ids.append(nxt)
        new.append(nxt)
        if stop_id is not None and nxt == stop_id:
            break
    return np.asarray(new, dtype=np.int32)


def encode_prompt(tok, prompt):
    """Model ids of a prompt string (no end-of-story appended); DataError if it tokenizes to nothing or to UNK only."""
    if prompt is None or not str(prompt).strip():
        raise DataError("the prompt is empty; pass --prompt with some words, e.g. --prompt 'Once upon a time'")
    ids = np.asarray(tok.encode_stories([str(prompt)])[0]).reshape(-1)
    eos = getattr(tok, "eos_id", None)
    while ids.size and eos is not None and ids[-1] == eos:
        ids = ids[:-1]  # a tokenizer that closes every story with EOS
    if ids.size == 0:
        raise DataError(f"the prompt {prompt!r} tokenizes to nothing; pass a --prompt with ordinary words")
    unk = getattr(tok, "unk_id", None)
    if unk is not None and np.all(ids == unk):
        raise DataError(f"the prompt {prompt!r} tokenizes only to unknown tokens (<unk>); pass a --prompt with "
                        f"words from the training stories")
    return ids


def generate_text(logits_fn, tok, prompt, n_new, rng, temperature=0.8, top_k=40, max_context=None,
                  stop_at_eos=True):
    """prompt string -> (prompt + sampled continuation as text, new ids)."""
    ids = encode_prompt(tok, prompt)
    eos = getattr(tok, "eos_id", None) if stop_at_eos else None
    new = generate(logits_fn, ids, n_new, rng, temperature, top_k, max_context, stop_id=eos)
    body = new[:-1] if (eos is not None and new.size and new[-1] == eos) else new
    return tok.decode(np.concatenate([ids, body]).astype(np.int32)), new
