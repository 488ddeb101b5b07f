"""The write-up's published figures (shared/seeds/003, spec section 3 rows G2-G6), each with the setting it was
measured at, and the matcher that puts them beside a run's results.

A setting is (stories, epochs, lr, batch, dim): training stories actually used, epochs, Adam learning rate,
examples per step, hidden width. A run matches a setting when all five are equal (lr to 1e-12 relative) and its
stories are not the built-in generator's (every published figure is on TinyStories); then each of its models with
a published figure gets {published, diff = ours - published, rel = diff / published}, and the geometric MLP its
per-epoch training losses too. Otherwise the comparison says which settings differ from each published one.

Row -> model mapping: the bigram, trigram, hybrid, geometric MLP (= geo_abs, 8 frozen 3-D coordinates -> MLP) and
the kappa rows (published (1, 1) coefficients) are named so in the write-up; geo_rot, geo_rot_nbrs and
geo_attention are our readings of rows whose details are not published (see each `mapping`).

The Riemannian write-up's telemetry values (shared/seeds/000) are at the end: RIEMANN_READINGS.
"""
import math
from dataclasses import dataclass

SETTING_KEYS = ("stories", "epochs", "lr", "batch", "dim")
SOURCE = "Training a Geometric Language Model in Pure Rust: First Results (shared/seeds/003)"


@dataclass(frozen=True)
class Setting:
    name: str
    stories: int
    epochs: int
    lr: float
    batch: int
    dim: int
    note: str = ""

    def values(self):
        return {k: getattr(self, k) for k in SETTING_KEYS}


@dataclass(frozen=True)
class Figure:
    setting: str
    model: str  # our model name
    row: str  # the write-up's row label
    val_ppl: float = None
    train_loss: tuple = ()  # training loss after epochs 1, 2, ...
    mapping: str = ""  # how the row maps to `model` where that is our reading ("" = named so in the write-up)


SETTINGS = {
    "2k": Setting("2k", 2000, 5, 1e-4, 128, 64, "the write-up's command: --max-train-stories 2000 "
                  "--max-val-stories 1000 --epochs 5 --lr 1e-4 --dim 64, batches of 128"),
    "20k": Setting("20k", 20000, 15, 1e-4, 128, 64, "20,000 stories, 15 epochs; lr, batch and dim are not restated "
                   "for 20k: the 2k run's (inferred)"),
    "2k_per_example": Setting("2k_per_example", 2000, 2, 1e-3, 1, 64, "the diverging first run: one Adam step per "
                              "example at lr 1e-3 (the write-up shows its first two epochs)"),
}

_ROT = "inferred: what is rotated onto what is not published; ours rotates into the current token's frame"
PUBLISHED = (
    Figure("2k", "bigram", "Bigram (Laplace-smoothed)", 175.7),
    Figure("2k", "geo_abs", "Geometric MLP (frozen coords)", 282.8, (6.006, 5.831, 5.741, 5.668, 5.616)),
    Figure("2k", "geo_abs_kappa", "Geometric MLP + curvature weighting", 304.5),
    Figure("2k_per_example", "geo_abs", "Geometric MLP, per-example Adam (diverging)", None, (7.50, 7.76)),
    Figure("20k", "bigram", "Bigram baseline", 72.97),
    Figure("20k", "trigram", "Trigram (token identity only) / One-hot trigram (baseline)", 32.02),
    Figure("20k", "hybrid", "Hybrid (token identity + geometry)", 43.24),
    Figure("20k", "hybrid_kappa", "Hybrid + kappa weighting", 43.81),
    Figure("20k", "geo_attention", "Geo-attention + 4 neighbors", 55.54,
           mapping="inferred: the geometric-only mode (self + 4 PMI neighbours) of the write-up's attention model"),
    Figure("20k", "geo_rot_nbrs", "Geometric rotated + 4 neighbors", 126.85,
           mapping=_ROT + "; neighbour aggregation: transported offsets (ours)"),
    Figure("20k", "geo_abs", "Geometric absolute", 145.08),
    Figure("20k", "geo_rot", "Geometric rotated", 272.98, mapping=_ROT),
)


def figure(setting, model):
    """The published Figure of `model` at `setting` (a SETTINGS key), or None."""
    return next((f for f in PUBLISHED if f.setting == setting and f.model == model), None)


def run_setting(cfg, data):
    """A run's setting from its GeoRunConfig and results.json data record."""
    lr = "per-model (--model-lr)" if getattr(cfg, "model_lr", None) else cfg.lr
    return dict(stories=int(data["train_stories"]), epochs=cfg.epochs, lr=lr, batch=cfg.batch_size,
                dim=cfg.dim, builtin=str(data.get("source", "")).startswith("built-in"),
                heldout=getattr(cfg, "eval_on", "val") == "heldout")


def differences(ours, setting):
    """{key: (ours, published)} for each key of the setting that differs (+ "data" for the built-in generator)."""
    out = {}
    for k, v in setting.values().items():
        if isinstance(ours[k], str):
            same = False
        else:
            same = math.isclose(ours[k], v, rel_tol=1e-12) if k == "lr" else ours[k] == v
        if not same:
            out[k] = (ours[k], v)
    if ours.get("builtin"):
        out["data"] = ("built-in generator", "TinyStories")
    if ours.get("heldout"):
        out["scored on"] = ("held-out training stories", "validation")
    return out


def _describe(diff):
    return ", ".join(f"{k} {a} (published {b:g})" if isinstance(a, str) and not isinstance(b, str)
                     else f"{k} {a:g} (published {b:g})" if not isinstance(a, str) else f"{k} {a} (published {b})"
                     for k, (a, b) in diff.items())


def _rel(diff, ref):
    return diff / ref if ref else None


def compare(ours, models):
    """-> {setting: ours, matched: name or None, note: one line, models: {model: comparison}} for the results
    {model: entry with val_ppl (and epochs)}; a comparison holds published, diff, rel, row, mapping and, for the
    per-epoch training losses, train_loss / train_loss_diff."""
    diffs = {name: differences(ours, s) for name, s in SETTINGS.items()}
    matched = next((name for name, d in diffs.items() if not d), None)
    out = {"setting": {k: ours[k] for k in SETTING_KEYS}, "matched": matched, "models": {}, "source": SOURCE}
    if matched is None:
        out["note"] = "no published setting matches this run: " + "; ".join(
            f"{name} differs in {_describe(d)}" for name, d in diffs.items())
        return out
    s = SETTINGS[matched]
    out["note"] = f"the write-up's {matched} setting ({s.note})"
    for f in PUBLISHED:
        if f.setting != matched or f.model not in models:
            continue
        entry = models[f.model]
        c = {"row": f.row, "mapping": f.mapping}
        v = entry.get("val_ppl")
        if f.val_ppl is not None:
            c["published"] = f.val_ppl
            c["diff"] = v - f.val_ppl if _finite(v) else None
            c["rel"] = _rel(c["diff"], f.val_ppl) if c["diff"] is not None else None
        if f.train_loss:
            ep = {e["epoch"]: e.get("train_loss") for e in entry.get("epochs", [])}
            c["train_loss"] = list(f.train_loss)
            c["train_loss_ours"] = [ep.get(i + 1) for i in range(len(f.train_loss))]
            c["train_loss_diff"] = [a - b if _finite(a) else None for a, b in zip(c["train_loss_ours"], f.train_loss)]
        out["models"][f.model] = c
    return out


def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


# ---------------------------------------------------------------------------------------------------------------
# The Riemannian write-up's telemetry (shared/seeds/000; issue 16): phase 1 at metric rank 24 (d 384) to step 3,000,
# then "we restarted the flow and expanded the metric rank to 64", equilibrium by steps 12,000-12,300. Keys are
# geolm.apps.telemetry's names; step is the write-up's step (0 = the start of training, our reading of "climbing
# from -800"). geolm.apps.riemann_protocol puts them beside a protocol run.

RIEMANN_SOURCE = ("Sculpting the Latent Space: Riemannian Neural ODEs for Language Modeling (TheFausap/RIEMANN; "
                  "shared/seeds/000)")
RIEMANN_SHAPES = dict(dim=384, rank=(24, 64), seq_len=192, batch_size=32, phase1_end=3000, phase2_end=12300)


@dataclass(frozen=True)
class Reading:
    key: str  # telemetry key
    phase: int  # 1: rank 24; 2: grown to rank 64
    step: int  # the write-up's step
    value: float
    quote: str  # the write-up's words


RIEMANN_READINGS = (
    Reading("logdet", 1, 0, -800.0, "the volume penalty (log det) was still climbing from -800"),
    Reading("linearity", 1, 3000, 0.646, "linearity ... dropped precipitously to 0.646"),
    Reading("displacement", 1, 3000, 53.45, "the average straight-line displacement ... was mu = 53.45"),
    Reading("path_length", 1, 3000, 83.76, "the actual path length traveled by the ODE was mu = 83.76"),
    Reading("logdet", 1, 3000, -297.0, "hovering around -297"),
    Reading("logdet", 2, 12300, 0.003, "by step 12,300, the log det g(z) penalty ... oscillating perfectly around "
                                       "0.003"),
    Reading("fdecay", 2, 12300, 0.02, "fDecay dropped to a highly consistent 0.02 (steps 12,000-12,300)"),
    Reading("linearity", 2, 12300, 0.80, "linearity stabilized at ~0.80 (steps 12,000-12,300)"),
    Reading("displacement", 2, 12300, 57.84, "the straight-line displacement was mu = 57.84"),
    Reading("path_length", 2, 12300, 73.17, "the path length was mu = 73.17"),
)


def riemann_reading(key, phase, step=None):
    """The write-up's reading of `key` in `phase` (at `step`; None = the phase's last) -> Reading or None."""
    found = [r for r in RIEMANN_READINGS if r.key == key and r.phase == phase and (step is None or r.step == step)]
    return max(found, key=lambda r: r.step) if found else None
