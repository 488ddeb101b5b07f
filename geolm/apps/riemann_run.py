"""The Riemannian ODE LM pipeline behind examples/train_riemann.py, callable from Python.

corpus (geolm.data) -> BPE tokenizer (geolm.data.tokenizer, cached in the run directory) -> stories of model ids
-> EOS-joined stream cut into [M, T+1] chunks (geolm.data.batches) -> Task -> geolm.training.train.fit (AdamW,
clipping, checkpoints, exact resume, non-finite guard) with telemetry (geolm.apps.telemetry) on a fixed validation
batch at every evaluation -> full-validation perplexity (geolm.training.evaluation.evaluate), summary.json,
curves.png, telemetry.png, semantic_map.png, a generated story (story.txt).

    parser = build_parser();  args = parser.parse_args(argv)
    result = run(args)            # -> dict (also written to DIR/summary.json)
Flags come from three frozen dataclasses: RiemannConfig (model), TrainConfig (optimisation; defaults set
for this model below) and RunConfig (data, output, evaluation, generation).
"""
import dataclasses
import functools
import math
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.config import ArgParser, add_args, check_output_dir, from_args, from_dict, opt, require
from ..core.errors import CheckpointError, ConfigError, DataError, GeolmError, NumericalError
from ..core.io import atomic_write, write_json
from ..core.params import ParamSpec
from ..data.batches import sequence_chunks
from ..data.corpus import DEFAULT_HUB, load_corpus
from ..data.tokenizer import Tok, get_tokenizer
from ..models import riemann
from ..training.checkpoint import load_checkpoint
from ..training.distributed import get_comm, root_only
from ..training.train import Task, TrainConfig, evaluate, fit
from .generate import check_sampling, encode_prompt, generate_text
from .plots import plot_curves, plot_telemetry
from .semantic import semantic_map
from .telemetry import trajectory_telemetry

# TrainConfig defaults for this model (spec 1.4: KAHLER's AdamW (0.9, 0.95), wd 1e-4, clip 1; peak lr 1e-3)
TRAIN_DEFAULTS = dict(steps=400, batch_size=16, lr=1e-3, schedule="cosine", warmup=50, min_lr=1e-4,
                      weight_decay=1e-4, b1=0.9, b2=0.95, clip=1.0, eval_every=100, checkpoint_every=0,
                      log_every=10)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    data: Optional[str] = opt(None, "train data: a .txt/.txt.gz/.jsonl/.parquet file or directory, 'builtin', or "
                                    "a hub name (default: the TinyStories hub, built-in stories when offline)")
    val_data: Optional[str] = opt(None, "validation file (default: a sibling valid* file or the last 10%)")
    max_train: int = opt(2000, "first N training stories")
    max_val: int = opt(1000, "first N validation stories")
    min_frequency: int = opt(5, "minimum token count kept in the vocabulary")
    output: str = opt("runs/riemann", "run directory (metrics, checkpoints, plots, story)")
    resume: Optional[str] = opt(None, "continue the run in this directory from its newest checkpoint")
    val_batches: int = opt(8, "validation batches (of --batch-size chunks) per evaluation; 0 = all")
    tel_batch: int = opt(8, "validation chunks in the fixed telemetry batch")
    prompt: str = opt("Once upon a time", "prompt of the story generated at the end")
    temperature: float = opt(0.8, "sampling temperature (0 = greedy)")
    top_k: int = opt(40, "sample from the k most likely tokens (0 = all)")
    gen_tokens: int = opt(120, "tokens to generate at the end (0 = none)")
    map_points: int = opt(200, "trajectories in the semantic map (0 = no map)")

    def __post_init__(self):
        require(self.max_train > 0, "max_train", f"must be > 0, got {self.max_train}")
        require(self.max_val > 0, "max_val", f"must be > 0, got {self.max_val}")
        require(self.min_frequency >= 1, "min_frequency", f"must be >= 1, got {self.min_frequency}")
        require(self.val_batches >= 0, "val_batches", f"must be >= 0, got {self.val_batches}")
        require(self.tel_batch > 0, "tel_batch", f"must be > 0, got {self.tel_batch}")
        require(self.temperature >= 0 and math.isfinite(self.temperature), "temperature",
                f"must be >= 0 (0 = greedy), got {self.temperature}")
        require(self.top_k >= 0, "top_k", f"must be >= 0 (0 = all), got {self.top_k}")
        require(self.gen_tokens >= 0, "gen_tokens", f"must be >= 0, got {self.gen_tokens}")
        require(self.map_points >= 0, "map_points", f"must be >= 0, got {self.map_points}")
        require(bool(str(self.output).strip()), "output", "must be a directory path")


def build_parser(prog="train_riemann.py"):
    p = ArgParser(prog=prog, description="Train the Riemannian neural-ODE language model (spec section 1).",
                  allow_abbrev=False)
    g = p.add_argument_group("model")
    add_args(g, riemann.RiemannConfig, skip=("metric", "no_ode"))
    g.add_argument("--metric", default="lowrank", choices=("lowrank", "identity"),
                   help="lowrank metric g = eps I + alpha U^T U, or the g = I control (default: lowrank)")
    # store_true by hand: BooleanOptionalAction would read "--no-ode" as the negation of "--ode"
    g.add_argument("--no-ode", action="store_true", help="skip the ODE (z_T = z0): the plain-Transformer control")
    add_args(p.add_argument_group("training"), TrainConfig)
    add_args(p.add_argument_group("run"), RunConfig)
    p.set_defaults(**TRAIN_DEFAULTS)
    return p


def configs(args):
    """argparse Namespace -> (RiemannConfig, TrainConfig, RunConfig), validated."""
    return from_args(riemann.RiemannConfig, args), from_args(TrainConfig, args), from_args(RunConfig, args)


def explicit_flags(argv):
    """Flag names (without --) given on the command line (abbreviations are off, so this is exact)."""
    return {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}


def parse(argv, prog="train_riemann.py"):
    """Command line -> argparse Namespace; --no-ode given with any ODE/metric flag is a ConfigError."""
    args = build_parser(prog).parse_args(argv)
    if args.no_ode:
        clash = sorted(explicit_flags(argv) & set(riemann.ODE_FIELDS))
        if clash:
            flags = " ".join("--" + c.replace("_", "-") for c in clash)
            raise ConfigError(f"--no-ode contradicts {flags}: the plain Transformer has no ODE or metric; "
                              f"drop --no-ode or those flags")
    args._explicit = explicit_flags(argv)
    if args.resume:
        _resume_defaults(args)
    return args


def _resume_defaults(args):
    """--resume DIR: every model / training / data flag not given on the command line is taken from DIR's newest
    checkpoint, so `--resume DIR` alone continues the run as it was started (given flags are still checked)."""
    ck = load_checkpoint(args.resume, expect_family="riemann")
    saved = dict(ck.meta.get("cfg", {}))
    saved.update(ck.meta.get("tcfg", {}))
    saved.update({k: ck.extra.get(k) for k in ("data", "val_data", "max_train", "max_val", "min_frequency")})
    for k, v in saved.items():
        if k in vars(args) and k not in args._explicit and k not in ("threads", "resume", "output"):
            setattr(args, k, v)


# ---------------------------------------------------------------------------------------------------------------
# data

def prepare_data(cfg, rc, seed=0, quiet=False):
    """-> dict(corpus, tok, train_ids, val_ids (lists of int arrays), train_chunks, val_chunks [M, T+1] int32)."""
    corpus = load_corpus(rc.data, rc.val_data, rc.max_train, rc.max_val, seed=seed, quiet=quiet)
    out_dir = Path(rc.resume or rc.output)
    tok = get_tokenizer(corpus.train, cfg.vocab_size, rc.min_frequency, cache_dir=out_dir)  # -> DIR/tokenizers/<key>/
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


def make_task(cfg, spec, data, tcfg, rc):
    """The fit Task: training chunks, and the first rc.val_batches validation batches (0 = all) for fit's
    evaluations."""
    tr, va = data["train_chunks"], data["val_chunks"]
    val = batches_of(va, tcfg.batch_size, rc.val_batches, data["tok"].pad_id)
    return Task(family="riemann", cfg=cfg, spec=spec, n_train=len(tr),
                make_batch=lambda idx: split_chunk(tr[idx]),
                loss_and_grads=functools.partial(riemann.loss_and_grads, cfg=cfg, spec=spec),
                eval_nll=functools.partial(riemann.eval_nll, cfg=cfg, spec=spec),
                val_batches=lambda: iter(val), tokenizer_hash=data["tok"].hash)


# ---------------------------------------------------------------------------------------------------------------
# the run

def _median(xs):
    return float(np.median(xs)) if xs else None


def _where(data):
    """A data argument as recorded in checkpoints: local paths made absolute, None -> the default hub name."""
    if data is None:
        return DEFAULT_HUB
    p = Path(data).expanduser()
    return str(p.resolve()) if p.exists() else str(data)


def _log_line(rec):
    v = rec.get("val_ppl")
    parts = [f"eval step {rec['step']}: val ppl " + (f"{v:.2f}" if isinstance(v, float) else str(v))]
    for k, fmt in (("tel_ce", "ce {:.3f}"), ("displacement", "disp {:.3g}"), ("path_length", "path {:.3g}"),
                   ("linearity", "lin {:.3f}"), ("logdet", "logdet {:.1f}"), ("fdecay", "fDecay {:.3f}"),
                   ("speed", "speed {:.3g}")):
        v = rec.get(k)
        if isinstance(v, (int, float)) and math.isfinite(v):
            parts.append(fmt.format(v))
    return " | ".join(parts)


def _after(fn, warn, what, *a):
    """Run an optional post-training product (plots, map, story); a failure is reported, not fatal, so the
    trained checkpoint and summary.json are still written."""
    try:
        return fn(*a)
    except (GeolmError, ValueError, ArithmeticError, RuntimeError, OSError, np.linalg.LinAlgError) as e:
        warn(f"warning: {what} failed ({type(e).__name__}: {' '.join(str(e).split())[:200]}); skipped")
        return None


def _plots(out_dir, history, cfg):
    tr = [r for r in history if r.get("kind") == "train" and isinstance(r.get("loss"), (int, float))]
    ev = [r for r in history if r.get("kind") == "eval" and isinstance(r.get("val_loss"), (int, float))]
    curves = {"train loss": ([r["step"] for r in tr], [r["loss"] for r in tr]),
              "validation loss": ([r["step"] for r in ev], [r["val_loss"] for r in ev])}
    name = "no-ODE" if cfg.no_ode else cfg.metric
    out = {"curves": plot_curves(curves, out_dir / "curves.png", title=f"Riemannian ODE LM ({name})",
                                 xlabel="step", ylabel="loss (nats/token)")}
    out["telemetry"] = plot_telemetry([r for r in history if r.get("kind") in ("train", "eval")],
                                      out_dir / "telemetry.png", title=f"telemetry ({name})")
    return out


def _semantic(out_dir, theta, cfg, spec, data, rc, seed):
    if cfg.no_ode or rc.map_points == 0:
        return None
    res = semantic_map(theta, cfg, spec, data["tok"], data["val_ids"], path=out_dir / "semantic_map.png",
                       n=rc.map_points, seed=seed)
    return {"png": res.get("png"), "counts": res.get("counts"), "stats": res.get("stats")}


def _story(theta, cfg, spec, tok, rc, seed):
    if rc.gen_tokens == 0:
        return None
    p = spec.views(theta)
    text, _ = generate_text(lambda ids: riemann.logits_last(p, ids, cfg), tok, rc.prompt, rc.gen_tokens,
                            np.random.default_rng([seed, 99]), rc.temperature, rc.top_k, max_context=cfg.seq_len)
    return text


def run(args, progress=True):
    """Train per the parsed flags; write DIR/{metrics.jsonl, summary.json, curves.png, telemetry.png,
    semantic_map.png, story.txt, ckpt_*.npz}; return the summary dict."""
    cfg, tcfg, rc = configs(args)
    if rc.resume and rc.output != RunConfig.output and Path(rc.output) != Path(rc.resume):
        raise ConfigError(f"--resume {rc.resume} and --output {rc.output} differ; pass only --resume DIR")
    out_dir = Path(rc.resume or rc.output)
    comm = get_comm()
    root_only(comm, check_output_dir, out_dir)  # a file or unwritable --output fails before any work
    check_sampling(rc.temperature, rc.top_k, rc.gen_tokens)

    def say(msg):
        if progress:
            print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    data = prepare_data(cfg, rc, quiet=not progress)
    tok = data["tok"]
    if rc.gen_tokens:
        encode_prompt(tok, rc.prompt)  # a prompt that tokenizes to nothing fails now, not after training
    cfg = dataclasses.replace(cfg, n_vocab=tok.V)
    spec, theta = riemann.init_params(cfg, np.random.default_rng(tcfg.seed))
    task = make_task(cfg, spec, data, tcfg, rc)
    ntr, nva = data["train_chunks"], data["val_chunks"]
    say(f"data: {data['corpus'].source}")
    say(f"tokenizer: V={tok.V} (hash {str(tok.hash)[:12]}); train {ntr.shape[0]} x {cfg.seq_len} tokens, "
        f"val {nva.shape[0]} x {cfg.seq_len}")
    ctrl = ("no ODE (plain Transformer)" if cfg.no_ode else f"metric {cfg.metric}" +
            ("" if cfg.metric == "identity" else f" r={cfg.rank} eps={cfg.eps} alpha={cfg.alpha}") +
            f", {cfg.ode_steps} RK4 steps")
    say(f"model: {spec.size:,} parameters, d={cfg.dim}, {cfg.layers} layers x {cfg.heads} heads, {ctrl}; "
        f"prep {time.perf_counter() - t0:.1f} s")
    tel_ids, tel_tg = batches_of(nva, rc.tel_batch, 1, tok.pad_id)[0]

    def on_eval(record, th):  # telemetry on the fixed batch, merged into fit's eval record
        try:
            tel = trajectory_telemetry(spec.views(th), tel_ids, tel_tg, cfg)
        except NumericalError as e:
            tel = {"telemetry_error": str(e)}
        say(_log_line(dict(record, **tel)))
        return tel

    builtin = data["corpus"].source.startswith("built-in")
    # what examples/generate.py and examples/semantic_map.py need to rebuild the tokenizer and the data
    extra = dict(data="builtin" if builtin else _where(rc.data), val_data=rc.val_data and _where(rc.val_data),
                 max_train=rc.max_train, max_val=rc.max_val, min_frequency=rc.min_frequency,
                 tokenizer_dir=str(out_dir), source=data["corpus"].source)
    res = fit(task, theta, tcfg, out_dir, resume=bool(rc.resume), on_eval=on_eval, progress=progress,
              extra_state=extra)
    hist = res["history"]
    full = evaluate(task, theta, comm, batches=batches_of(nva, tcfg.batch_size, 0, tok.pad_id))
    ppl_full, n_full = (math.nan if full["val_ppl"] is None else full["val_ppl"]), full["n"]
    say(f"final validation perplexity {ppl_full:.2f} over {n_full} tokens ({data['corpus'].source})"
        + (f"; {full['reason']}" if "reason" in full else ""))
    plots = _after(_plots, say, "plots", out_dir, hist, cfg)
    sem = _after(_semantic, say, "semantic map", out_dir, theta, cfg, spec, data, rc, tcfg.seed)
    story = _after(_story, say, "story", theta, cfg, spec, tok, rc, tcfg.seed)
    if story is not None:
        atomic_write(out_dir / "story.txt", story + "\n")
        say(f"story ({rc.prompt!r}, T={rc.temperature}, top-k {rc.top_k}):\n{story}")
    last_eval = next((r for r in reversed(hist) if r.get("kind") == "eval"), {})
    train_recs = [r for r in hist if r.get("kind") == "train"]
    summary = dict(
        family="riemann", data=data["corpus"].source, val_ppl=ppl_full, val_tokens=n_full,
        val_ppl_subset=res["final_val_ppl"], best_val_ppl_subset=res["best_val_ppl"],
        steps=res["steps_done"], skipped=res["skipped"], seconds=res["seconds"],
        s_per_step=_median([r["ms_per_step"] / 1e3 for r in train_recs if isinstance(r.get("ms_per_step"), float)]),
        wall_s_per_step=res["seconds"] / max(res["steps_done"], 1),
        tokens_per_s=(train_recs[-1].get("tokens_per_s") if train_recs else None),
        params=spec.size, vocab=tok.V, tokenizer=tok.hash, cfg=dataclasses.asdict(cfg),
        tcfg=dataclasses.asdict(tcfg), run=dataclasses.asdict(rc), checkpoint=res["checkpoint"],
        telemetry={k: v for k, v in last_eval.items() if k not in ("kind",)},
        plots=plots, semantic=sem, story=story)
    write_json(out_dir / "summary.json", summary, indent=2)
    say(f"wrote {out_dir}/summary.json; total {time.perf_counter() - t0:.0f} s")
    return summary


# ---------------------------------------------------------------------------------------------------------------
# loading a trained model

def find_tokenizer(ck):
    """The Tok a checkpoint was trained with: DIR/tokenizers/*/ (DIR = its recorded tokenizer_dir or its own
    directory) whose hash equals the checkpoint's."""
    want = ck.meta.get("tokenizer", "")
    dirs = [Path(ck.extra["tokenizer_dir"])] if ck.extra.get("tokenizer_dir") else []
    dirs.append(Path(ck.path).parent)
    for d in dirs:
        for sub in sorted((d / "tokenizers").glob("*/")) if (d / "tokenizers").is_dir() else []:
            try:
                tok = Tok.load(sub)
            except DataError:
                continue
            if tok.hash == want:
                return tok
    raise CheckpointError(f"no tokenizer with hash {str(want)[:12]} under {' or '.join(str(d) for d in dirs)}"
                          f"/tokenizers; keep the run directory together with its checkpoints")


def load_model(path):
    """Run directory or ckpt_*.npz of a Riemannian model -> (theta, cfg, spec, tok, checkpoint)."""
    ck = load_checkpoint(path, expect_family="riemann")
    try:
        cfg = from_dict(riemann.RiemannConfig, dict(ck.meta.get("cfg", {})))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ck.path} has an unreadable model config ({e}); use the geolm version "
                              f"that wrote it") from None
    spec = ParamSpec(riemann.param_shapes(cfg))
    if spec.size != ck.theta.shape[0]:
        raise CheckpointError(f"checkpoint {ck.path} holds {ck.theta.shape[0]} parameters but its config needs "
                              f"{spec.size}; the file does not match its config")
    return ck.theta, cfg, spec, find_tokenizer(ck), ck
