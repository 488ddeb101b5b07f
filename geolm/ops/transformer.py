"""Pre-LN Transformer block and encoder stack (GPT-2 layout, no final LayerNorm).

B batch . T time . D model . H heads . F feed-forward width . V vocab . L layers

    block:   x1 = x + attn(ln1(x));  y = x1 + mlp(ln2(x1))       (mlp = linear -> GELU -> linear)
    encoder: h0 = wte[ids] + wpe[:T];  h_l = block_l(h_{l-1});  returns h_L   ids [B,T] -> h [B,T,D]
The models put their own final LayerNorm / head on h_L. Residual adds copy their gradient to both
branches: dx = dy + d(branch)/dx.
Init (encoder_init_): wte, wpe ~ N(0, 0.02); Glorot weights; LayerNorm w = 1, b = 0; zero biases.
Reference: llm.c `gpt2_forward/gpt2_backward`; picoGPT `transformer_block`.
"""
import numpy as np

from .attention import attention_backward, attention_forward, attention_init_, attention_shapes
from .embedding import embedding_backward, embedding_forward
from ..core.errors import ConfigError
from .layernorm import layernorm_backward, layernorm_forward
from .mlp import mlp_backward, mlp_forward, mlp_init_, mlp_shapes
from ..core.params import normal_


def block_shapes(D, ff):
    return {"ln1": {"w": (D,), "b": (D,)}, "attn": attention_shapes(D),
            "ln2": {"w": (D,), "b": (D,)}, "mlp": mlp_shapes(D, ff, D)}


def block_init_(p, rng):
    """LayerNorm w = 1, b = 0; Glorot attention and MLP weights, zero biases (in place)."""
    for ln in ("ln1", "ln2"):
        p[ln]["w"][...] = 1.0
        p[ln]["b"][...] = 0.0
    attention_init_(p["attn"], rng)
    mlp_init_(p["mlp"], rng)


def block_forward(x, p, n_heads, causal=True):
    """x [B,T,D] -> (y [B,T,D], cache)."""
    h, c_ln1 = layernorm_forward(x, **p["ln1"])  # [B,T,D]
    a, c_attn = attention_forward(h, p["attn"], n_heads, causal)  # [B,T,D]
    x1 = x + a
    h2, c_ln2 = layernorm_forward(x1, **p["ln2"])  # [B,T,D]
    m, c_mlp = mlp_forward(h2, p["mlp"], "gelu")  # [B,T,D] -> [B,T,F] -> [B,T,D]
    m += x1  # y = x1 + mlp(ln2(x1))
    return m, (c_ln1, c_attn, c_ln2, c_mlp)


def block_backward(dy, cache):
    """-> (dx [B,T,D], dp with block_shapes' nesting)."""
    c_ln1, c_attn, c_ln2, c_mlp = cache
    # y = x1 + mlp(ln2(x1))
    dh2, dmlp = mlp_backward(dy, c_mlp)
    dx1, dw2, db2 = layernorm_backward(dh2, c_ln2)
    dx1 += dy
    # x1 = x + attn(ln1(x))
    dh, dattn = attention_backward(dx1, c_attn)
    dx, dw1, db1 = layernorm_backward(dh, c_ln1)
    dx += dx1
    return dx, {"ln1": {"w": dw1, "b": db1}, "attn": dattn, "ln2": {"w": dw2, "b": db2}, "mlp": dmlp}


def encoder_shapes(V, T_max, D, n_layers, ff):
    return {"wte": (V, D), "wpe": (T_max, D), "blocks": {str(i): block_shapes(D, ff) for i in range(n_layers)}}


def encoder_init_(p, rng):
    """wte, wpe ~ N(0, 0.02); every block via block_init_ (in place)."""
    normal_(p["wte"], rng, 0.02)
    normal_(p["wpe"], rng, 0.02)
    for i in range(len(p.get("blocks", {}))):  # a 0-layer spec has no "blocks" key
        block_init_(p["blocks"][str(i)], rng)


def encoder_forward(ids, p, n_heads, causal=True):
    """ids int [B,T] -> (h [B,T,D] after the last block, no final LayerNorm; cache)."""
    if np.ndim(ids) != 2:
        raise ConfigError(f"encoder ids must be [B,T], got shape {np.shape(ids)}; add a batch axis with ids[None]")
    T, T_max = ids.shape[1], p["wpe"].shape[0]
    if T > T_max:
        raise ConfigError(f"sequence length {T} exceeds the {T_max} learned positions; raise --n-ctx to >= {T} "
                          f"or feed shorter sequences")
    h, c_emb = embedding_forward(ids, p["wte"])  # [B,T] -> [B,T,D]
    h += p["wpe"][:T]  # + [T,D]
    caches = []
    for i in range(len(p.get("blocks", {}))):  # a 0-layer spec has no "blocks" key
        h, c = block_forward(h, p["blocks"][str(i)], n_heads, causal)  # [B,T,D]
        caches.append(c)
    return h, (c_emb, T, p["wpe"].shape, caches)


def encoder_backward(dh, cache):
    """dh [B,T,D] -> dp {"wte", "wpe", "blocks"} with encoder_shapes' nesting."""
    c_emb, T, wpe_shape, caches = cache
    dblocks = [None] * len(caches)
    for i in reversed(range(len(caches))):
        dh, dblocks[i] = block_backward(dh, caches[i])
    # h0 = wte[ids] + wpe[:T]
    dwte = embedding_backward(dh, c_emb)  # [B,T,D] -> [V,D]
    dwpe = np.zeros(wpe_shape, dtype=dh.dtype)
    dwpe[:T] = dh.sum(axis=0)  # [B,T,D] -> [T,D]
    dp = {"wte": dwte, "wpe": dwpe}
    if dblocks:
        dp["blocks"] = {str(i): d for i, d in enumerate(dblocks)}
    return dp
