"""End-to-end: examples/train_riemann.py on tiny settings (subprocess), its outputs, and its one-line errors."""
import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from geolm.apps import riemann_run
from geolm.apps.riemann_settings import RunConfig
from geolm.core.errors import ConfigError, NumericalError
from geolm.models import riemann
from geolm.training.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_riemann.py"


def load_example():
    """examples/train_riemann.py as a module (its parser and parse)."""
    spec = importlib.util.spec_from_file_location("train_riemann_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
TINY = ["--data", "builtin", "--max-train-stories", "120", "--max-val-stories", "20", "--dim", "16", "--layers", "1",
        "--heads", "2",
        "--seq-len", "16", "--vocab-size", "300", "--batch-size", "4", "--steps", "6", "--eval-every", "3",
        "--warmup", "2", "--val-batches", "2", "--gen-tokens", "8", "--map-points", "0", "--threads", "1"]
ODE = ["--rank", "4", "--hidden", "8", "--field-hidden", "16", "--ode-steps", "2"]


def _run(args, timeout=240):
    return subprocess.run([sys.executable, str(SCRIPT)] + args, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.mark.slow
@pytest.mark.parametrize("control", [["--metric", "lowrank"] + ODE, ["--no-ode"]], ids=["lowrank", "no-ode"])
def test_tiny_run_writes_outputs(control, tmp_path):
    out = tmp_path / "run"
    r = _run(TINY + control + ["--output", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ("metrics.jsonl", "summary.json", "curves.png", "telemetry.png", "story.txt"):
        assert (out / f).is_file(), f
    assert list(out.glob("ckpt_*.npz"))
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 6 and np.isfinite(s["val_ppl"]) and s["val_ppl"] > 1
    assert "built-in" in s["data"] and s["story"].startswith("Once upon a time")
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [3, 6]
    if "--no-ode" in control:
        assert "displacement" not in evals[-1]
    else:
        for k in ("displacement", "path_length", "metric_length", "linearity", "linearity_of_means", "logdet",
                  "logdet_const", "logdet_K", "fdecay", "speed", "f_norm", "tel_ce", "tel_pen_field",
                  "tel_pen_metric"):
            assert k in evals[-1], k
        assert evals[-1]["logdet_const"] == pytest.approx(12 * np.log(0.1))
    assert "validation perplexity" in r.stdout
    g = subprocess.run([sys.executable, str(ROOT / "examples" / "generate.py"), "--checkpoint", str(out), "--tokens",
                        "5", "--prompt", "Once upon", "--top-k", "3"], capture_output=True, text=True, timeout=120)
    assert g.returncode == 0 and g.stdout.splitlines()[1].startswith("Once upon"), g.stderr[-1500:]
    g = subprocess.run([sys.executable, str(ROOT / "examples" / "generate.py"), "--checkpoint", str(out), "--prompt",
                        " "], capture_output=True, text=True, timeout=120)
    assert g.returncode == 2 and g.stderr.startswith("error:") and "--prompt" in g.stderr


@pytest.mark.parametrize("extra, needle", [
    (["--rank", "17"], "--rank"),
    (["--eps", "0"], "--eps"),
    (["--eps", "-1"], "--eps"),
    (["--no-ode", "--rank", "4"], "--no-ode"),
    (["--no-ode", "--metric", "identity"], "--no-ode"),
    (["--steps", "-1"], "--steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--heads", "3"], "--heads"),
    (["--metric", "dense"], "--metric"),
    (["--prompt", "\u2603\u2603"], "prompt"),
    (["--temperature", "-1"], "--temperature"),
])
def test_bad_flags_one_line_exit_2(extra, needle, tmp_path):
    r = _run(TINY + ["--output", str(tmp_path / "o")] + extra, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    err = r.stderr.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("error:") and needle in err[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "o").glob("ckpt_*.npz"))


def test_output_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = _run(TINY + ["--output", str(f)], timeout=120)
    assert r.returncode == 2 and "is a file" in r.stderr and "Traceback" not in r.stderr


def test_parse_explicit_flags():
    ex = load_example()
    given = ex.explicit_flags(ex.build_parser(), ["--rank=3", "--no-ode", "--lambda-metric", "1", "--no-tie-head"])
    assert given == {"rank": 3, "no_ode": True, "lambda_metric": 1.0, "tie_head": False}
    with pytest.raises(ConfigError):
        ex.parse(["--no-ode", "--lambda-field=0.1"])
    cfg, tcfg, rc, config_file = ex.parse(["--no-ode"])
    assert cfg.no_ode and tcfg.lr == 1e-3 and tcfg.b2 == 0.95 and rc.output == "runs/riemann" and config_file is None


def test_task_holds_one_workspace_for_training_and_evaluation():
    cfg = riemann.RiemannConfig(vocab_size=20, n_vocab=20, dim=8, layers=1, heads=2, seq_len=6, rank=2, hidden=4,
                                field_hidden=8, ode_steps=1)
    spec, theta = riemann.init_params(cfg, np.random.default_rng(0))
    chunks = np.random.default_rng(1).integers(0, 20, size=(6, 7)).astype(np.int32)
    tok = type("Tok", (), {"pad_id": 20, "hash": "h"})()
    data = dict(train_chunks=chunks, val_chunks=chunks, tok=tok)
    task = riemann_run.make_task(cfg, spec, data, TrainConfig(batch_size=2), RunConfig(val_batches=1))
    ws = task.loss_and_grads.keywords["workspace"]
    assert isinstance(ws, riemann.FieldWorkspace) and task.eval_nll.keywords["workspace"] is ws
    grad = np.zeros_like(theta)
    task.loss_and_grads(theta, grad, task.make_batch(np.arange(2)))
    held = ws.nbytes
    assert held > 0
    task.loss_and_grads(theta, grad, task.make_batch(np.arange(2, 4)))
    task.eval_nll(theta, next(task.val_batches()))
    assert ws.nbytes == held  # the same buffers again, none added


@pytest.mark.slow
def test_sigint_checkpoints_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    args = TINY + ODE + ["--output", str(out), "--steps", "100000", "--eval-every", "0", "--log-every", "1"]
    args[args.index("--gen-tokens") + 1] = "0"
    proc = subprocess.Popen([sys.executable, str(SCRIPT)] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        t0 = time.time()
        while time.time() - t0 < 120 and not ((out / "metrics.jsonl").exists()
                                              and (out / "metrics.jsonl").read_text().count("\n") >= 2):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-1500:]
    assert f"--resume {out}" in err and "Traceback" not in err
    ck = sorted(out.glob("ckpt_*.npz"))
    assert ck
    step = int(ck[-1].stem.split("_")[1])
    r = _run(["--resume", str(out), "--steps", str(step + 2), "--gen-tokens", "0"])  # every other flag from the run
    assert r.returncode == 0, r.stderr[-1500:]
    assert json.loads((out / "summary.json").read_text())["steps"] == step + 2


@pytest.mark.slow
def test_numerical_errors_reach_metrics_with_their_reason(tmp_path, monkeypatch):
    """fit handles a NumericalError from the model: a training step becomes a skip record, an evaluation a NaN
    record, each with the error's message; the run still finishes and writes its summary."""
    real_loss, real_eval = riemann.loss_and_grads, riemann.eval_nll
    calls = {"loss": 0, "eval": 0}

    def loss_and_grads(*a, **kw):
        calls["loss"] += 1
        if calls["loss"] == 2:
            raise NumericalError("metric K not positive definite (test)")
        return real_loss(*a, **kw)

    def eval_nll(*a, **kw):
        calls["eval"] += 1
        if calls["eval"] == 1:
            raise NumericalError("metric K not positive definite in evaluation (test)")
        return real_eval(*a, **kw)

    monkeypatch.setattr(riemann, "loss_and_grads", loss_and_grads)
    monkeypatch.setattr(riemann, "eval_nll", eval_nll)
    out = tmp_path / "run"
    cfg, tcfg, rc, _ = load_example().parse(TINY + ODE + ["--output", str(out), "--gen-tokens", "0"])
    s = riemann_run.run(cfg, tcfg, rc, progress=False)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (skip,) = [r for r in recs if r["kind"] == "skip"]
    assert skip["step"] == 2 and "not positive definite (test)" in skip["reason"]
    first, last = [r for r in recs if r["kind"] == "eval"]
    assert first["val_ppl"] == "nan" and "in evaluation (test)" in first["reason"] and "displacement" in first
    assert "reason" not in last and s["skipped"] == 1 and np.isfinite(s["val_ppl"])
    assert s["val_ppl_subset"] == last["val_ppl"] and s["val_tokens"] > 0


@pytest.mark.slow
def test_two_mpi_ranks_write_and_print_once(tmp_path):
    """Under mpiexec only rank 0 draws, samples, writes summary.json and prints the result lines."""
    import shutil
    exe = shutil.which("mpiexec")
    if exe is None or importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpiexec or mpi4py not installed (pip install -e '.[mpi]')")
    out = tmp_path / "run"
    r = subprocess.run([exe, "-n", "2", sys.executable, str(SCRIPT)] + TINY + ODE + ["--output", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("validation perplexity") == 1, r.stdout
    assert r.stderr.count("wrote ") == 1 and r.stderr.count("story (") == 1, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 6 and np.isfinite(s["val_ppl"])
