"""The Riemannian ODE LM pipeline behind examples/train_riemann.py, callable from Python.

corpus -> tokenizer -> [M, T+1] chunks (geolm.apps.riemann_data) -> Task (one FieldWorkspace per run) ->
geolm.training.train.fit (AdamW, clipping, checkpoints, exact resume, non-finite guard) with telemetry
(geolm.apps.telemetry) on a fixed validation batch at every evaluation -> full-validation perplexity, summary.json,
curves.png, telemetry.png, semantic_map.png, a generated story (story.txt).

    cfg, tcfg, rc = resolve_configs({"dim": 64}, config_file=path)     # geolm.apps.riemann_settings
    summary = run(cfg, tcfg, rc, config_file=path)    # -> dict (also written to DIR/summary.json)
    summary = run(*resume_configs("runs/r", {"steps": 800}))           # continue a run
    summary = run(*resume_configs("runs/r", {"rank": 24}))             # continue it at a larger metric rank
"""
import dataclasses
import functools
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..core.config import check_output_dir
from ..core.errors import ConfigError, GeolmError, NumericalError
from ..core.io import atomic_write, write_json
from ..models import riemann
from ..training.distributed import get_comm, root_only
from ..training.train import Task, evaluate, fit
from .generate import check_sampling, encode_prompt, generate_text
from .plots import plot_curves, plot_telemetry
from .riemann_data import batches_of, prepare_data, split_chunk, where
from .riemann_grow import grow_checkpoint
from .riemann_settings import RUN_DATA, RunConfig
from .semantic import semantic_map
from .telemetry import trajectory_telemetry


def make_task(cfg, spec, data, tcfg, rc):
    """The fit Task: training chunks, and the first rc.val_batches validation batches (0 = all) for fit's
    evaluations. Training steps and evaluations share one FieldWorkspace (they never overlap)."""
    tr, va = data["train_chunks"], data["val_chunks"]
    val = batches_of(va, tcfg.batch_size, rc.val_batches, data["tok"].pad_id)
    ws = riemann.FieldWorkspace()
    return Task(family="riemann", cfg=cfg, spec=spec, n_train=len(tr),
                make_batch=lambda idx: split_chunk(tr[idx]),
                loss_and_grads=functools.partial(riemann.loss_and_grads, cfg=cfg, spec=spec, workspace=ws),
                eval_nll=functools.partial(riemann.eval_nll, cfg=cfg, spec=spec, workspace=ws),
                val_batches=lambda: iter(val), tokenizer_hash=data["tok"].hash)


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


def _say(progress):
    def say(msg):
        if progress:
            print(msg, file=sys.stderr, flush=True)
    return say


def _describe(cfg, spec, data):
    tok, ntr, nva = data["tok"], data["train_chunks"], data["val_chunks"]
    ctrl = ("no ODE (plain Transformer)" if cfg.no_ode else f"metric {cfg.metric}" +
            ("" if cfg.metric == "identity" else f" r={cfg.rank} eps={cfg.eps} alpha={cfg.alpha}") +
            f", {cfg.ode_steps} RK4 steps")
    return (f"data: {data['corpus'].source}\n"
            f"tokenizer: V={tok.V} (hash {str(tok.hash)[:12]}); train {ntr.shape[0]} x {cfg.seq_len} tokens, "
            f"val {nva.shape[0]} x {cfg.seq_len}\n"
            f"model: {spec.size:,} parameters, d={cfg.dim}, {cfg.layers} layers x {cfg.heads} heads, {ctrl}")


def _extra_state(rc, data, out_dir, growth):
    """What a checkpoint records besides the model and training configs: the RunConfig, RUN_DATA (local paths
    absolute: examples/generate.py, examples/semantic_map.py and resume_configs rebuild the tokenizer and the data
    from it), the tokenizer's directory, the source and the rank growths so far (geolm.apps.riemann_grow)."""
    rec = {k: getattr(rc, k) for k in RUN_DATA}
    builtin = data["corpus"].source.startswith("built-in")
    rec["data"] = "builtin" if builtin else where(rc.data)
    rec["val_data"] = rc.val_data and where(rc.val_data)
    return dict(rec, run=dataclasses.asdict(rc), tokenizer_dir=str(out_dir), source=data["corpus"].source,
                growth=growth)


def _summary(res, full, cfg, tcfg, rc, spec, data, products, config_file):
    hist = res["history"]
    last_eval = next((r for r in reversed(hist) if r.get("kind") == "eval"), {})
    train_recs = [r for r in hist if r.get("kind") == "train"]
    ms = [r["ms_per_step"] / 1e3 for r in train_recs if isinstance(r.get("ms_per_step"), float)]
    return dict(
        family="riemann", data=data["corpus"].source,
        val_ppl=math.nan if full["val_ppl"] is None else full["val_ppl"], val_tokens=full["n"],
        val_ppl_subset=res["final_val_ppl"], best_val_ppl_subset=res["best_val_ppl"],
        steps=res["steps_done"], skipped=res["skipped"], seconds=res["seconds"],
        s_per_step=float(np.median(ms)) if ms else None, wall_s_per_step=res["seconds"] / max(res["steps_done"], 1),
        tokens_per_s=(train_recs[-1].get("tokens_per_s") if train_recs else None),
        params=spec.size, vocab=data["tok"].V, tokenizer=data["tok"].hash, cfg=dataclasses.asdict(cfg),
        tcfg=dataclasses.asdict(tcfg), run=dataclasses.asdict(rc),
        config_file=config_file and str(Path(config_file).resolve()), checkpoint=res["checkpoint"],
        telemetry={k: v for k, v in last_eval.items() if k not in ("kind",)}, **products)


def run(cfg, tcfg, rc, *, progress=True, config_file=None, should_stop=None):
    """Train; write DIR/{metrics.jsonl, summary.json, curves.png, telemetry.png, semantic_map.png, story.txt,
    ckpt_*.npz} (DIR = rc.resume or rc.output); return the summary dict. rc.resume continues that run (take cfg
    and tcfg from geolm.apps.riemann_settings.resume_configs; a larger cfg.rank than the run's grows its metric
    rank first: geolm.apps.riemann_grow). summary.json records the three configs, the rank growths and
    config_file (the file they were resolved from, if any). should_stop() -> bool is checked after every step
    (true: checkpoint and raise TrainingInterrupted, as on SIGTERM)."""
    if rc.resume and rc.output != RunConfig.output and Path(rc.output) != Path(rc.resume):
        raise ConfigError(f"--resume {rc.resume} and --output {rc.output} differ; pass only --resume DIR")
    out_dir = Path(rc.resume or rc.output)
    comm = get_comm()
    root_only(comm, check_output_dir, out_dir)  # a file or unwritable --output fails before any work
    check_sampling(rc.temperature, rc.top_k, rc.gen_tokens)
    say = _say(progress and comm.rank == 0)
    t0 = time.perf_counter()
    data = prepare_data(cfg, rc, quiet=not progress)
    tok, nva = data["tok"], data["val_chunks"]
    if rc.gen_tokens:
        encode_prompt(tok, rc.prompt)  # a prompt that tokenizes to nothing fails now, not after training
    cfg = dataclasses.replace(cfg, n_vocab=tok.V)
    spec, theta = riemann.init_params(cfg, np.random.default_rng(tcfg.seed))
    task = make_task(cfg, spec, data, tcfg, rc)
    say(_describe(cfg, spec, data) + f"; prep {time.perf_counter() - t0:.1f} s")
    growth, grew = root_only(comm, grow_checkpoint, out_dir, cfg, tcfg) if rc.resume else ([], None)
    if grew:
        say(f"grew the metric rank {grew['from']} -> {grew['to']} at step {grew['step']} (new U rows small and "
            f"random, their Adam moments 0; everything else carried over)")
    tel_ids, tel_tg = batches_of(nva, rc.tel_batch, 1, tok.pad_id)[0]

    def on_eval(record, th):  # telemetry on the fixed batch, merged into fit's eval record
        try:
            tel = trajectory_telemetry(spec.views(th), tel_ids, tel_tg, cfg)
        except NumericalError as e:
            tel = {"telemetry_error": str(e)}
        say(_log_line(dict(record, **tel)))
        return tel

    res = fit(task, theta, tcfg, out_dir, resume=bool(rc.resume), on_eval=on_eval, progress=progress,
              extra_state=_extra_state(rc, data, out_dir, growth), should_stop=should_stop)
    full = evaluate(task, theta, comm, batches=batches_of(nva, tcfg.batch_size, 0, tok.pad_id))
    say(f"final validation perplexity {full['val_ppl'] or math.nan:.2f} over {full['n']} tokens "
        f"({data['corpus'].source})" + (f"; {full['reason']}" if "reason" in full else ""))
    products = dict(plots=None, semantic=None, story=None)
    if comm.rank == 0:  # under MPI the products and summary.json come from rank 0 alone, like checkpoints
        products = dict(plots=_after(_plots, say, "plots", out_dir, res["history"], cfg),
                        semantic=_after(_semantic, say, "semantic map", out_dir, theta, cfg, spec, data, rc,
                                        tcfg.seed),
                        story=_after(_story, say, "story", theta, cfg, spec, tok, rc, tcfg.seed))
    if products["story"] is not None:
        atomic_write(out_dir / "story.txt", products["story"] + "\n")
        say(f"story ({rc.prompt!r}, T={rc.temperature}, top-k {rc.top_k}):\n{products['story']}")
    summary = _summary(res, full, cfg, tcfg, rc, spec, data, dict(products, growth=growth), config_file)
    if comm.rank == 0:
        write_json(out_dir / "summary.json", summary, indent=2)
        say(f"wrote {out_dir}/summary.json; total {time.perf_counter() - t0:.0f} s")
    return summary
