"""The geometric-LM table's settings: GeoRunConfig (every flag of examples/train_geometric.py) and the model list.

Model names: the trained geometric models (geolm.models.geometric.MODELS), the count bigram, and the kappa variants
(KAPPA: inference-time angle/kappa weighting over a trained base model, scored with published and fitted
coefficients as NAME and NAME_fit). CONTROLS maps each permutation control to the model it controls: a control is
trained with its model's hyper-parameters (model_lrs) unless named itself.
"""
import math

from dataclasses import dataclass

from ..core.config import opt, positive, require
from ..core.errors import ConfigError
from ..models import geometric as G

TRAINED = tuple(G.MODELS)
KAPPA = {"geo_abs_kappa": "geo_abs", "hybrid_kappa": "hybrid"}
CONTROLS = {"geo_shuffled": "geo_abs", "geo_successor_shuffled": "geo_successor",
            "hybrid_successor_shuffled": "hybrid_successor"}
ALL_MODELS = ("bigram", "trigram", "neural_bigram", "geo_abs", "geo_rot", "geo_rot_nbrs", "hybrid", "hybrid_kappa",
              "geo_abs_kappa", "geo_attention", "geo_attention_full", "geo_shuffled", "geo_successor",
              "geo_successor_shuffled", "hybrid_successor", "hybrid_successor_shuffled")
EVAL_SETS = ("val", "heldout")
EVAL_BATCH = 512  # positions per evaluation forward: the [512, V] logits stay in cache for the exp pass


@dataclass(frozen=True)
class GeoRunConfig:
    data: str = opt("roneneldan/TinyStories", "hub dataset name, local training file/directory, or 'builtin' "
                                              "(--dataset, the write-up's spelling, is the same option)",
                    aliases=("dataset",))
    val_data: str = opt(None, "local validation file (default: the sibling valid* file or the hub split)")
    vocab_size: int = opt(4096, "BPE vocabulary size (model vocabulary = tokens seen >= --min-count times, capped)")
    min_count: int = opt(5, "keep tokens seen at least this often; the rest are UNK")
    dim: int = opt(64, "MLP hidden width and attention width")
    epochs: int = opt(5, "training epochs per model")
    lr: float = opt(1e-4, "Adam learning rate (constant)")
    model_lr: str = opt(None, "per-model learning rates overriding --lr, e.g. trigram=3e-3,geo_abs=1e-3 (a "
                              "permutation control takes its model's rate unless named)")
    batch_size: int = opt(128, "examples per Adam step (global under MPI)")
    clip: float = opt(1.0, "global gradient-norm clip (0 = off)")
    max_train_stories: int = opt(2000, "first N training stories")
    max_val_stories: int = opt(1000, "first N validation stories")
    kappa_holdout: int = opt(1000, "held-out training stories (after the first N) used to fit the kappa coefficients")
    eval_on: str = opt("val", "what every epoch is scored on: val (the validation stories) or heldout (the "
                              "--kappa-holdout training stories after the first N, never trained on: for choosing "
                              "hyper-parameters without touching validation)")
    tokenizer_stories: int = opt(0, "train the tokenizer and vocabulary on the first N training stories (0 = the "
                                    "training stories): one vocabulary for runs on different amounts of data")
    extra_data: str = opt(None, "a local file of extra training stories appended after the first N (e.g. "
                                "train_extra_gpt4.txt.gz: GPT-4-only stories, labelled so in the data line)")
    context: int = opt(8, "context tokens per prediction")
    k: int = opt(4, "graph neighbours per token")
    coord_dim: int = opt(3, "sphere dimension of the symmetric PPMI coordinates")
    window: int = opt(5, "co-occurrence window (tokens after each token, within a story)")
    ppmi_smoothing: float = opt(0.0, "context-distribution smoothing alpha for PPMI (0 = none, e.g. 0.75)")
    successor_dim: int = opt(32, "dimension of the successor (directed PPMI) coordinates")
    successor_context: int = opt(2, "last n context tokens whose successor coordinates geo_successor reads")
    models: str = opt("all", "comma-separated models (default all): " + ",".join(ALL_MODELS))
    seed: int = opt(0, "seed of initialisation, batch order, the geometry's SVD and permutation controls "
                       "(with --seeds: of the data and geometry only)")
    seeds: str = opt(None, "comma-separated seeds, e.g. 0,1,2: train the table once per seed (same data, tokenizer "
                           "and geometry; initialisation and batch order from each seed) and report mean +- sd")
    output: str = opt("runs/geometric", "output directory (results.json, curves.png, checkpoints, tokenizer)")
    threads: int = opt(0, "BLAS/Numba threads (0 = cores / MPI ranks on this node)")
    jobs: int = opt(0, "models trained in parallel processes, 1 thread each (0 = min(cores, 2); 1 = sequential)")
    resume: bool = opt(False, "continue each model from its newest checkpoint in --output")
    builtin_fallback: bool = opt(True, "use the built-in story generator when the hub cannot be reached "
                                       "(--no-builtin-fallback makes that an error)")

    def __post_init__(self):
        positive(self, "vocab_size", "min_count", "dim", "epochs", "lr", "batch_size", "max_train_stories",
                 "max_val_stories", "context", "k", "coord_dim", "window", "successor_dim", "successor_context")
        require(self.context >= 2, "context", f"needs at least 2 tokens (two ids for trigram), got {self.context}")
        require(self.successor_context <= self.context, "successor_context",
                f"must be <= --context {self.context}, got {self.successor_context}")
        require(0.0 <= self.ppmi_smoothing <= 1.0, "ppmi_smoothing", f"must be in [0, 1], got {self.ppmi_smoothing}")
        require(self.kappa_holdout >= 0 and self.clip >= 0 and self.threads >= 0 and self.jobs >= 0, "kappa_holdout",
                "--kappa-holdout, --clip, --threads and --jobs must be >= 0")
        require(self.eval_on in EVAL_SETS, "eval_on", f"must be one of {', '.join(EVAL_SETS)}, got {self.eval_on!r}")
        require(self.eval_on == "val" or self.kappa_holdout > 0, "eval_on",
                "heldout needs held-out training stories: pass --kappa-holdout N > 0")
        require(self.tokenizer_stories >= 0, "tokenizer_stories", f"must be >= 0, got {self.tokenizer_stories}")
        model_list(self.models)
        seed_list(self.seeds)
        model_lrs(self.model_lr)


def model_list(models):
    """Parse --models: 'all' or a comma list of names from ALL_MODELS (order kept, duplicates dropped)."""
    names = list(ALL_MODELS) if models.strip() == "all" else [m.strip() for m in models.split(",") if m.strip()]
    bad = [m for m in names if m not in ALL_MODELS]
    if bad or not names:
        raise ConfigError(f"--models: unknown model {', '.join(bad) or '(empty)'}; "
                          f"valid: all or {','.join(ALL_MODELS)}")
    return list(dict.fromkeys(names))


def seed_list(seeds):
    """Parse --seeds: None, or a comma list of at least two distinct integers >= 0 (order kept)."""
    if seeds is None:
        return None
    try:
        out = [int(x) for x in str(seeds).split(",") if x.strip()]
    except ValueError:
        out = []
    require(len(out) >= 2 and len(set(out)) == len(out) and min(out) >= 0, "seeds",
            f"needs two or more distinct seeds >= 0 separated by commas, e.g. 0,1,2, got {seeds!r} "
            "(one seed: pass --seed)")
    return out


def model_lrs(spec):
    """Parse --model-lr 'name=lr,...' -> {name: lr} (names from ALL_MODELS, lr finite > 0)."""
    if spec is None or not str(spec).strip():
        return {}
    out = {}
    for item in str(spec).split(","):
        name, sep, val = item.partition("=")
        name = name.strip()
        try:
            lr = float(val)
        except ValueError:
            lr = float("nan")
        require(sep == "=" and name in ALL_MODELS and math.isfinite(lr) and lr > 0, "model_lr",
                f"needs name=lr pairs separated by commas with models from {','.join(ALL_MODELS)} and lr > 0, "
                f"e.g. trigram=3e-3,geo_abs=1e-3; got {item.strip()!r}")
        out[name] = lr
    return out


def lr_of(cfg, name):
    """The learning rate model `name` trains with: its --model-lr entry, else its controlled model's, else --lr."""
    table = model_lrs(cfg.model_lr)
    for n in (name, CONTROLS.get(name)):
        if n in table:
            return table[n]
    return cfg.lr
