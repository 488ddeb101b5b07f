"""The geometric table's report: the printed table and the validation-perplexity curves (curves.png)."""
from .plots import plot_curves


def fmt(ppl):
    return "-" if ppl is None else f"{ppl:.2f}"


def write_curves(path, results, epochs):
    curves = {}
    for name, r in results.items():
        if r.get("epochs"):
            curves[name] = ([e["epoch"] for e in r["epochs"]], [e["val_ppl"] for e in r["epochs"]])
        elif r.get("val_ppl") is not None:  # untrained (bigram, kappa): flat line
            curves[name] = ([1, max(1, epochs)], [r["val_ppl"]] * 2)
    if curves:
        plot_curves(curves, path, title="geometric LMs: validation perplexity", logy=True)


def table(summary):
    """Printable final table: model, params, val ppl, seconds."""
    rows = [f"{'model':<24}{'params':>12}{'val ppl':>12}{'seconds':>10}"]
    for name, r in summary["models"].items():
        v = r.get("val_ppl")
        rows.append(f"{name:<24}{r.get('params', 0):>12,}{fmt(v):>12}"
                    f"{r.get('seconds', 0.0):>10.1f}")
    return "\n".join(rows)
