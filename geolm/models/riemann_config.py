"""Configuration of the Riemannian neural-ODE LM (geolm.models.riemann): architecture, metric and loss weights.

D model (= dim) . R metric rank (= rank) . V vocab . S ODE steps (= ode_steps)

RiemannConfig is frozen and validated in __post_init__ (ConfigError names the flag and the fix). ODE_FIELDS are
the fields that only mean something when the ODE runs (the CLI rejects --no-ode given with any of them).
"""
import dataclasses
import math

from ..core.config import opt, positive, require
from ..core.errors import ConfigError

METRICS = ("lowrank", "identity", "dense")
PENALTIES = ("point", "batch_mean")
ODE_FIELDS = ("rank", "eps", "alpha", "hidden", "field_hidden", "ode_steps", "lambda_field", "lambda_metric",
              "metric", "metric_penalty")


@dataclasses.dataclass(frozen=True)
class RiemannConfig:
    """Architecture and loss of the Riemannian ODE LM (training/data flags live elsewhere)."""
    vocab_size: int = opt(4096, "BPE vocabulary size (the model keeps tokens seen >= 5 times, at most this many "
                                "incl. EOS and UNK)")
    dim: int = opt(128, "model width d (embeddings, encoder, ODE state)")
    layers: int = opt(2, "Transformer encoder blocks")
    heads: int = opt(4, "attention heads (must divide --dim)")
    ff_mult: int = opt(4, "encoder feed-forward hidden = ff_mult * dim")
    seq_len: int = opt(128, "context length T (learned positions)")
    rank: int = opt(16, "metric rank r (1 <= r <= dim)")
    eps: float = opt(0.1, "base stiffness eps of g = eps I + alpha U^T U (> 0)")
    alpha: float = opt(1.0, "scale alpha of the low-rank part (>= 0)")
    hidden: int = opt(64, "U-MLP hidden width h_U (d -> h_U -> r*d)")
    field_hidden: int = opt(256, "f-MLP hidden width h_f (d -> h_f -> d)")
    ode_steps: int = opt(4, "fixed RK4 steps on [0, 1]")
    lambda_field: float = opt(1e-3, "weight of mean_tok sum_stages |f|^2")
    # Default below spec 1.3's 1e-5: at eps 0.1 that weight lets the volume term dominate early training (it pulls
    # log det g towards 0 and the model ends worse than the g = I control); 1e-6 keeps the term without that
    # (the runs, with the lambda_metric = 0 and alpha = 0 controls, are in the README's Riemann results).
    lambda_metric: float = opt(1e-6, "weight of the (log det g)^2 penalty")
    metric_penalty: str = opt("point", "(log det g)^2 per point, or the squared batch mean", choices=PENALTIES)
    metric: str = opt("lowrank", "metric: lowrank (Woodbury), identity (g = I control), dense (benchmark baseline)",
                      choices=METRICS)
    no_ode: bool = opt(False, "skip the ODE (z_T = z0): the plain-Transformer control")
    tie_head: bool = opt(True, "tie the output head to the token embedding")
    n_vocab: int = opt(0, "model vocabulary size (set from the tokenizer)", flag=False)

    def __post_init__(self):
        positive(self, "vocab_size", "dim", "layers", "heads", "ff_mult", "seq_len", "hidden", "field_hidden",
                 "ode_steps")
        require(self.dim % self.heads == 0, "heads", f"must divide --dim {self.dim}, got {self.heads}")
        require(self.eps > 0 and math.isfinite(self.eps), "eps", f"must be > 0, got {self.eps}")
        require(self.alpha >= 0 and math.isfinite(self.alpha), "alpha", f"must be >= 0, got {self.alpha}")
        if not self.no_ode:  # the plain-Transformer control ignores every metric/ODE field
            require(1 <= self.rank <= self.dim, "rank", f"must be in [1, --dim={self.dim}], got {self.rank}; "
                    f"lower --rank or raise --dim")
        require(self.lambda_field >= 0, "lambda_field", f"must be >= 0, got {self.lambda_field}")
        require(self.lambda_metric >= 0, "lambda_metric", f"must be >= 0, got {self.lambda_metric}")
        require(self.metric in METRICS, "metric", f"choose one of {', '.join(METRICS)}, got {self.metric!r}")
        require(self.metric_penalty in PENALTIES, "metric_penalty",
                f"choose one of {', '.join(PENALTIES)}, got {self.metric_penalty!r}")
        require(self.n_vocab >= 0, "vocab_size", f"model vocabulary must be >= 0, got {self.n_vocab}")
        if self.no_ode and self.metric != "lowrank":
            raise ConfigError(f"--no-ode contradicts --metric {self.metric}: the plain Transformer has no ODE or "
                              f"metric; drop one of the two")

    @property
    def V(self):
        """Model vocabulary (n_vocab once set from the tokenizer, else vocab_size)."""
        return self.n_vocab or self.vocab_size
