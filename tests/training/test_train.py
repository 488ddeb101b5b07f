import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from geolm.training.checkpoint import list_checkpoints, list_snapshots, load_checkpoint
from geolm.core.config import ArgParser, add_args, from_args
from geolm.training.distributed import SerialComm
from geolm.core.errors import CheckpointError, ConfigError, NumericalError
from geolm.training.optim import lr_at
from geolm.training.train import TrainConfig, TrainingInterrupted, evaluate, fit, record_deferred, run_deferred_eval

HERE = Path(__file__).resolve().parents[1]  # tests/: the shared helpers
sys.path.insert(0, str(HERE))
from toy_task import make_toy_task  # noqa: E402

COMM = SerialComm()


def tcfg(**kw):
    base = dict(steps=12, batch_size=8, lr=0.05, warmup=2, eval_every=6, log_every=3, threads=1, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def records(run_dir, kind=None):
    recs = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if kind is None or r["kind"] == kind]


def run(tmp, name="run", task_kw=None, resume=False, **kw):
    task, theta = make_toy_task(**(task_kw or {}))
    res = fit(task, theta, tcfg(**kw), tmp / name, resume=resume, progress=False, comm=COMM)
    return theta, res, task


# ---------------------------------------------------------------------------------------------------------------
# config

@pytest.mark.parametrize("bad,flag", [(dict(batch_size=0), "--batch-size"), (dict(lr=-1.0), "--lr"),
                                      (dict(steps=-3), "--steps"), (dict(schedule="linear"), "--schedule"),
                                      (dict(b2=1.0), "--b2"), (dict(backoff=0.0), "--backoff"),
                                      (dict(min_lr=1.0, lr=0.1), "--min-lr"), (dict(clip=-1.0), "--clip"),
                                      (dict(keep_checkpoints=0), "--keep-checkpoints")])
def test_config_rejects_bad_values_naming_the_flag(bad, flag):
    with pytest.raises(ConfigError, match=flag):
        TrainConfig(**bad)


def test_config_flags_round_trip():
    ns = add_args(ArgParser(), TrainConfig).parse_args(["--batch-size", "5", "--schedule", "constant", "--lr", "0.1"])
    c = from_args(TrainConfig, ns)
    assert (c.batch_size, c.schedule, c.lr, c.clip) == (5, "constant", 0.1, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# loop, metrics

def test_fit_learns_and_logs(tmp_path):
    task, theta = make_toy_task()
    ev0 = evaluate(task, theta, COMM)
    assert ev0["n"] == 40 and ev0["val_ppl"] == pytest.approx(np.exp(ev0["val_loss"]), rel=1e-15)
    seen = []
    res = fit(task, theta, tcfg(steps=24), tmp_path / "r", progress=False, comm=COMM,
              on_eval=lambda rec, th: seen.append(rec) or {"probe": 1.5}, extra_state={"coords": np.eye(2),
                                                                                       "note": "hi"})
    assert res["final_val_ppl"] < 0.8 * ev0["val_ppl"] and res["steps_done"] == 24 and res["skipped"] == 0
    assert res["best_val_ppl"] <= res["final_val_ppl"] + 1e-12 and res["pending"] == []
    assert [r["step"] for r in seen] == [6, 12, 18, 24] and seen[-1]["val_ppl"] == res["final_val_ppl"]
    assert {"kind", "step", "epoch", "val_loss", "val_ppl", "best_val_ppl", "seconds", "n"} <= set(seen[0])
    assert seen[0]["n"] == 40 and "probe" not in seen[0]
    train, evals = records(tmp_path / "r", "train"), records(tmp_path / "r", "eval")
    assert [r["step"] for r in train] == [3, 6, 9, 12, 15, 18, 21, 24]
    for key in ("loss", "lr", "grad_norm", "skipped", "seconds", "tokens_per_s", "ms_per_step", "acc", "epoch"):
        assert key in train[0]
    assert evals[-1]["probe"] == 1.5 and abs(evals[-1]["val_ppl"] - res["final_val_ppl"]) < 1e-12
    assert res["history"][-1]["kind"] == "eval"
    c = load_checkpoint(tmp_path / "r")
    assert c.step == 24 and np.array_equal(c.theta, theta) and c.train["adam_t"] == 24
    assert np.array_equal(c.extra["coords"], np.eye(2)) and c.extra["note"] == "hi"
    assert len(list_checkpoints(tmp_path / "r")) == 3  # evals at 6, 12, 18 + final, keep 3


def test_epoch_end_eval_and_progress_line(tmp_path, capsys):
    task, theta = make_toy_task(n_train=32)
    fit(task, theta, tcfg(steps=0, epochs=2, batch_size=8, eval_every=0, log_every=2), tmp_path / "r", comm=COMM)
    assert [r["step"] for r in records(tmp_path / "r", "eval")] == [4, 8]
    err = capsys.readouterr().err
    assert "step 2/8 loss" in err and "ms/step" in err and "tok/s" in err and err.rstrip().splitlines()[-1].startswith(
        "done: 8 steps")


def test_theta_must_match_spec(tmp_path):
    task, theta = make_toy_task()
    with pytest.raises(ValueError, match="1-D float array"):
        fit(task, theta[:-1].copy(), tcfg(), tmp_path / "r", progress=False, comm=COMM)


# ---------------------------------------------------------------------------------------------------------------
# exact resume

def _interrupt_at(task, k, sig=signal.SIGINT):
    inner = task.loss_and_grads

    def f(th, g, b):
        if task.calls["n"] == k:
            os.kill(os.getpid(), sig)
        return inner(th, g, b)
    task.loss_and_grads = f


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_interrupted_then_resumed_is_bit_exact(tmp_path, dtype, capsys):
    kw = dict(task_kw=dict(dtype=dtype, noise=True), steps=14, weight_decay=0.01)
    ref, res_ref, _ = run(tmp_path, "ref", **kw)
    task, theta = make_toy_task(dtype=dtype, noise=True)
    _interrupt_at(task, 5)
    with pytest.raises(TrainingInterrupted) as e:
        fit(task, theta, tcfg(steps=14, weight_decay=0.01), tmp_path / "cut", progress=False, comm=COMM)
    assert e.value.code == 130 and e.value.step == 6 and isinstance(e.value, SystemExit)
    assert f"interrupted at step 6; resume with --resume {tmp_path / 'cut'}" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "cut").step == 6
    theta2, res2, _ = run(tmp_path, "cut", resume=True, **kw)
    assert theta2.dtype == np.dtype(dtype) and np.array_equal(theta2, ref)
    assert res2["final_val_ppl"] == res_ref["final_val_ppl"]
    assert [r["step"] for r in records(tmp_path / "cut", "train")] == [r["step"] for r in
                                                                      records(tmp_path / "ref", "train")]


def test_resume_from_periodic_checkpoint_after_kill9(tmp_path):
    """A crash after step 8: only ckpt 4/8 survive; metrics past the checkpoint are dropped and re-done."""
    kw = dict(steps=12, checkpoint_every=4, keep_checkpoints=5)
    ref, _, _ = run(tmp_path, "ref", **kw)
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(tmp_path / "ref" / "ckpt_000000004.npz", crashed)
    shutil.copy(tmp_path / "ref" / "metrics.jsonl", crashed)
    (crashed / ".ckpt_000000008.npz.77.tmp").write_bytes(b"PK\x03\x04half")
    theta, res, _ = run(tmp_path, "crashed", resume=True, **kw)
    assert np.array_equal(theta, ref) and res["steps_done"] == 12
    steps = [r["step"] for r in records(crashed, "train")]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


def test_sigterm_exits_143(tmp_path):
    task, theta = make_toy_task()
    _interrupt_at(task, 2, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as e:
        fit(task, theta, tcfg(), tmp_path / "r", progress=False, comm=COMM)
    assert e.value.code == 143 and load_checkpoint(tmp_path / "r").step == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_sigint_subprocess_then_resume_bit_exact(tmp_path):
    ref, _, _ = run(tmp_path, "ref", steps=30, batch_size=16, log_every=1, warmup=2, eval_every=6, seed=3)
    out = tmp_path / "sub"
    out.mkdir()
    cmd = [sys.executable, str(HERE / "mpi_fit_check.py"), str(out), "one", "--steps", "30", "--delay", "0.03"]
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")}
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    metrics = out / "run_one" / "metrics.jsonl"
    t0 = time.time()
    while not (metrics.exists() and metrics.read_text().count('"train"') >= 3) and time.time() - t0 < 60:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("interrupted at step")]
    assert len(line) == 1 and line[0].endswith(f"resume with --resume {out / 'run_one'}")
    k = int(line[0].split()[3].rstrip(";"))
    assert 3 <= k < 30 and load_checkpoint(out / "run_one").step == k
    r = subprocess.run(cmd[:-2] + ["--resume"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(out / "one_rank0.npz")["theta"], ref)


# ---------------------------------------------------------------------------------------------------------------
# non-finite guard

def _tap(task):
    """Record theta before every loss_and_grads call."""
    seen, inner = [], task.loss_and_grads

    def f(th, g, b):
        seen.append(th.copy())
        return inner(th, g, b)
    task.loss_and_grads = f
    return seen


def test_nan_and_inf_steps_are_skipped_and_leave_theta_untouched(tmp_path):
    task, theta = make_toy_task(nan_at=(3,), inf_at=(7,))
    seen = _tap(task)
    res = fit(task, theta, tcfg(), tmp_path / "r", progress=False, comm=COMM)
    assert res["skipped"] == 2 and res["lr_scale"] == 1.0 and np.isfinite(theta).all()
    assert np.array_equal(seen[3], seen[4]) and np.array_equal(seen[7], seen[8])
    assert not np.array_equal(seen[4], seen[5])
    skips = records(tmp_path / "r", "skip")
    assert [(s["step"], s["loss"]) for s in skips] == [(4, "nan"), (8, skips[1]["loss"])]
    assert skips[1]["grad_norm"] == "inf" and isinstance(skips[1]["loss"], float)
    assert load_checkpoint(tmp_path / "r").train["adam_t"] == 12 - 2


def test_numerical_error_in_a_step_is_a_skip(tmp_path):
    _, res, _ = run(tmp_path, task_kw=dict(raise_at=(2,)))
    assert res["skipped"] == 1 and res["steps_done"] == 12
    (skip,) = records(tmp_path / "run", "skip")
    assert skip["step"] == 3 and "not positive definite" in skip["reason"]


def test_repeated_skips_back_off_the_learning_rate(tmp_path):
    _, res, _ = run(tmp_path, task_kw=dict(nan_at=(2, 3, 4, 6, 7, 8)), backoff=0.5, backoff_after=3)
    assert res["skipped"] == 6 and res["lr_scale"] == 0.25
    lrs = {r["step"]: r["lr"] for r in records(tmp_path / "run", "train")}
    assert lrs[12] == 0.25 * lr_at(11, 0.05, "cosine", 2, 12, 0.0)  # record of step 12 = 0-based step 11
    assert lrs[3] == lr_at(2, 0.05, "cosine", 2, 12, 0.0)


def test_too_many_bad_steps_stop_with_good_checkpoint(tmp_path):
    task, theta = make_toy_task(nan_at=tuple(range(5, 100)))
    with pytest.raises(NumericalError) as e:
        fit(task, theta, tcfg(steps=40, checkpoint_every=2, max_bad_steps=5), tmp_path / "r", progress=False,
            comm=COMM)
    msg = str(e.value)
    assert "\n" not in msg and "stopped at step 10 after 5 non-finite steps in a row" in msg
    assert "ckpt_000000008.npz" in msg and "lower --lr" in msg  # skipped steps never touched theta
    c = load_checkpoint(tmp_path / "r")
    assert c.step == 8 and np.isfinite(c.theta).all()
    assert np.array_equal(c.theta, theta) and c.train["adam_t"] == 5
    assert records(tmp_path / "r")[-1]["kind"] == "stop"


# ---------------------------------------------------------------------------------------------------------------
# bad input

def test_output_dir_problems(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    task, theta = make_toy_task()
    with pytest.raises(ConfigError, match="is a file; pass a directory"):
        fit(task, theta, tcfg(), f, progress=False, comm=COMM)
    with pytest.raises(CheckpointError, match="no checkpoint .* drop --resume"):
        fit(task, theta, tcfg(), tmp_path / "new", resume=True, progress=False, comm=COMM)
    run(tmp_path, "done", steps=2)
    with pytest.raises(ConfigError, match="already holds checkpoints; pass --resume"):
        run(tmp_path, "done", steps=2)


def test_resume_refuses_mismatches(tmp_path):
    run(tmp_path, "r", steps=3)
    with pytest.raises(CheckpointError, match="toy model, not riemann; use examples/train_toy.py"):
        run(tmp_path, "r", resume=True, task_kw=dict(family="riemann"))
    with pytest.raises(CheckpointError, match="checkpoint has features=6 but you passed --features 5"):
        run(tmp_path, "r", resume=True, task_kw=dict(features=5))
    with pytest.raises(CheckpointError, match="has batch_size=8 but you passed --batch-size 4"):
        run(tmp_path, "r", resume=True, batch_size=4)
    with pytest.raises(CheckpointError, match="checkpoint has dtype=\"?float64\"? but you passed --dtype float32"):
        run(tmp_path, "r", resume=True, task_kw=dict(dtype="float32"))
    theta, res, _ = run(tmp_path, "r", resume=True, steps=5)  # more steps is allowed
    assert res["steps_done"] == 5
    n_evals = len(records(tmp_path / "r", "eval"))
    theta2, res2, _ = run(tmp_path, "r", resume=True, steps=5)  # resuming a finished run changes nothing
    assert np.array_equal(theta2, theta) and res2["final_val_ppl"] == res["final_val_ppl"]
    assert len(records(tmp_path / "r", "eval")) == n_evals


def test_new_run_starts_fresh_metrics(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text('{"kind": "train", "step": 99}\n')
    run(tmp_path, "r", steps=3)
    assert max(r["step"] for r in records(tmp_path / "r")) == 3


def test_numerical_error_in_evaluation_is_a_nan_record_with_its_reason(tmp_path):
    task, theta = make_toy_task(eval_raise_at=(1,))  # the 2nd eval_nll call: inside the first evaluation
    res = fit(task, theta, tcfg(), tmp_path / "r", progress=False, comm=COMM)
    first, last = records(tmp_path / "r", "eval")
    assert first["val_loss"] == first["val_ppl"] == "nan" and "not positive definite" in first["reason"]
    assert "reason" not in last and res["best_val_ppl"] == last["val_ppl"] == res["final_val_ppl"]
    assert res["steps_done"] == 12 and res["skipped"] == 0


def test_evaluate_without_targets_gives_none():
    task, theta = make_toy_task()
    assert evaluate(task, theta, COMM, batches=[]) == dict(val_loss=None, val_ppl=None, n=0)


# ---------------------------------------------------------------------------------------------------------------
# deferred evaluation

def test_deferred_evaluation_matches_inline(tmp_path):
    _, ref, _ = run(tmp_path, "inline")
    task, theta = make_toy_task()
    seen = []
    res = fit(task, theta, tcfg(), tmp_path / "d", progress=False, comm=COMM, defer_eval=True,
              on_eval=lambda rec, th: seen.append(rec) or {"probe": 1})
    assert res["pending"] == [6, 12] and res["final_val_ppl"] is None
    assert [(r["step"], r["pending"], r["val_ppl"]) for r in seen] == [(6, True, None), (12, True, None)]
    assert list_snapshots(tmp_path / "d") == [6, 12]
    done = [run_deferred_eval(task, tmp_path / "d", k, COMM) for k in reversed(res["pending"])]
    written = record_deferred(tmp_path / "d", done, COMM)
    assert [r["step"] for r in written] == [6, 12] and list_snapshots(tmp_path / "d") == []
    inline = records(tmp_path / "inline", "eval")
    deferred = [r for r in records(tmp_path / "d", "eval") if r.get("deferred")]
    for a, b in zip(inline, deferred):
        for k in ("step", "epoch", "val_loss", "val_ppl", "best_val_ppl", "n"):
            assert a[k] == b[k], k
        assert b["probe"] == 1 and b["eval_seconds"] >= 0.0 and "pending" not in b
    assert ref["final_val_ppl"] == deferred[-1]["val_ppl"]


def test_resume_evaluates_snapshots_a_deferred_run_left(tmp_path):
    _, ref, _ = run(tmp_path, "inline")
    task, theta = make_toy_task()
    _interrupt_at(task, 8)
    with pytest.raises(TrainingInterrupted):
        fit(task, theta, tcfg(), tmp_path / "d", progress=False, comm=COMM, defer_eval=True)
    assert list_snapshots(tmp_path / "d") == [6]
    theta2, res, _ = run(tmp_path, "d", resume=True)  # inline now: the step-6 snapshot is evaluated first
    assert list_snapshots(tmp_path / "d") == [] and res["final_val_ppl"] == ref["final_val_ppl"]
    evals = [(r["step"], r["val_ppl"]) for r in records(tmp_path / "d", "eval") if not r.get("pending")]
    assert evals == [(r["step"], r["val_ppl"]) for r in records(tmp_path / "inline", "eval")]


def test_resumed_deferred_run_returns_old_and_new_snapshots(tmp_path):
    task, theta = make_toy_task()
    _interrupt_at(task, 8)
    with pytest.raises(TrainingInterrupted):
        fit(task, theta, tcfg(), tmp_path / "d", progress=False, comm=COMM, defer_eval=True)
    assert load_checkpoint(tmp_path / "d").step == 9
    (tmp_path / "d" / "eval_000000010.npy").write_bytes(b"stale")  # past the checkpoint: removed on resume
    task, theta = make_toy_task()
    res = fit(task, theta, tcfg(), tmp_path / "d", resume=True, progress=False, comm=COMM, defer_eval=True)
    assert res["pending"] == [6, 12] and list_snapshots(tmp_path / "d") == [6, 12]
    res2 = fit(task, theta, tcfg(), tmp_path / "d", resume=True, progress=False, comm=COMM, defer_eval=True)
    assert res2["pending"] == [6, 12] and len(records(tmp_path / "d", "eval")) == 2  # nothing evaluated twice
