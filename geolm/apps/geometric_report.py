"""The geometric table's report: mean +- sd over seeds, the printed table and the validation curves (curves.png).

Over seeds s = 1..n a value v_s (val_ppl, val_loss, best_val_ppl, each epoch's val_ppl, val_loss and train_loss) is reported
as its mean and sample standard deviation sd = sqrt(sum_s (v_s - mean)^2 / (n - 1)) over the seeds where it is
finite (n_finite recorded as <key>_n); the per-seed entries stay under "per_seed".
"""
import math

from .plots import plot_curves

SEED_KEYS = ("val_ppl", "val_loss", "best_val_ppl")


def fmt(ppl):
    return "-" if ppl is None else f"{ppl:.2f}"


def finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def mean_sd(values):
    """(mean, sample sd (ddof=1), n) over the finite values; mean None without any, sd None with fewer than 2."""
    v = [float(x) for x in values if finite(x)]
    n = len(v)
    if n == 0:
        return None, None, 0
    m = math.fsum(v) / n
    sd = math.sqrt(math.fsum((x - m) ** 2 for x in v) / (n - 1)) if n > 1 else None
    return m, sd, n


def _epochs(entries):
    """Per-epoch mean and sd of val_ppl, val_loss and train_loss over the entries' epoch lists."""
    by = {}
    for e in entries:
        for ep in e.get("epochs", []):
            by.setdefault(ep["epoch"], []).append(ep)
    out = []
    for k in sorted(by):
        row = {"epoch": k}
        for key in ("val_ppl", "val_loss", "train_loss"):
            row[key], row[key + "_sd"], _ = mean_sd([ep.get(key) for ep in by[k]])
        out.append(row)
    return out


def aggregate_seeds(per_seed):
    """{seed: {model: entry}} -> {model: entry of means, <key>_sd, <key>_n, per-epoch mean/sd, seeds, per_seed}
    (models in first-seen order; params from the first seed; seconds summed over seeds)."""
    names = list(dict.fromkeys(n for res in per_seed.values() for n in res))
    out = {}
    for name in names:
        seeds = [s for s, res in per_seed.items() if name in res]
        entries = [per_seed[s][name] for s in seeds]
        agg = {}
        for key in SEED_KEYS:
            agg[key], agg[key + "_sd"], agg[key + "_n"] = mean_sd([e.get(key) for e in entries])
        if "lr" in entries[0]:
            agg["lr"] = entries[0]["lr"]
        agg.update(epochs=_epochs(entries), params=entries[0].get("params", 0),
                   seconds=math.fsum(e.get("seconds", 0.0) for e in entries), seeds=seeds,
                   per_seed={str(s): e for s, e in zip(seeds, entries)})
        out[name] = agg
    return out


def write_curves(path, results, epochs):
    """Validation perplexity per epoch of every model (flat lines for the untrained ones); with seeds the mean
    curve and a +-sd band."""
    curves = {}
    for name, r in results.items():
        if r.get("epochs"):
            ep = r["epochs"]
            curves[name] = ([e["epoch"] for e in ep], [e["val_ppl"] for e in ep],
                            [e.get("val_ppl_sd") for e in ep] if "val_ppl_sd" in ep[0] else None)
        elif r.get("val_ppl") is not None:  # untrained (bigram, kappa): flat line
            curves[name] = ([1, max(1, epochs)], [r["val_ppl"]] * 2, [r.get("val_ppl_sd")] * 2)
    if curves:
        title = "geometric LMs: validation perplexity" + (" (mean +- sd over seeds)" if _seeded(results) else "")
        plot_curves(curves, path, title=title, logy=True)


def _seeded(models):
    return any("per_seed" in r for r in models.values())


def _ppl_cell(r):
    v = r.get("val_ppl")
    if "per_seed" not in r:
        return fmt(v)
    sd = r.get("val_ppl_sd")
    cell = fmt(v) + (f" +- {sd:.2f}" if sd is not None else "")
    n, n_seeds = r.get("val_ppl_n"), len(r.get("seeds", ()))
    return cell + (f" (n={n})" if n != n_seeds else "")


def _diff_cell(c):
    if c.get("diff") is None:
        return "-"
    return f"{c['diff']:+.2f} ({100 * c['rel']:+.0f}%)"


def table(summary):
    """Printable final table: model, params, (per-model lr), val ppl (mean +- sd over seeds), seconds, and beside them the
    published value and our difference when the run matches a published setting; then the comparison's note."""
    models = summary["models"]
    pub = summary.get("published") or {}
    show = pub.get("matched") is not None
    seeded = _seeded(models)
    w = 24 if seeded else 12
    per_model = bool((summary.get("config") or {}).get("model_lr"))
    head = f"{'model':<26}{'params':>12}" + (f"{'lr':>8}" if per_model else "") + f"{'val ppl':>{w}}{'seconds':>10}"
    rows = [head + (f"{'published':>11}{'diff':>17}" if show else "")]
    for name, r in models.items():
        lr = f"{r['lr']:>8g}" if isinstance(r.get("lr"), float) else f"{'-':>8}"
        line = (f"{name:<26}{r.get('params', 0):>12,}" + (lr if per_model else "")
                + f"{_ppl_cell(r):>{w}}{r.get('seconds', 0.0):>10.1f}")
        c = r.get("published") or {}
        if show and "published" in c:
            line += f"{c['published']:>11.2f}{_diff_cell(c):>17}"
        rows.append(line)
    if seeded:
        rows.append(f"val ppl: mean +- sample sd over seeds {','.join(map(str, summary.get('seeds', [])))}")
    if pub:
        rows.append(f"published: {pub['note']}")
        for name, r in models.items():
            c = r.get("published") or {}
            if c.get("train_loss"):
                ours = " ".join("-" if x is None else f"{x:.3f}" for x in c["train_loss_ours"])
                rows.append(f"  {name} training loss per epoch: ours {ours}; published "
                            + " ".join(f"{x:.3f}" for x in c["train_loss"]))
            if c.get("mapping"):
                rows.append(f"  {name} = '{c['row']}' ({c['mapping']})")
    return "\n".join(rows)
