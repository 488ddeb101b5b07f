"""The bad-input catalogue (README "Troubleshooting"): every case exits 2 with one `error:` line that
names the fix, prints no traceback and leaves no partial output behind."""
import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geolm.training.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RIEMANN = ROOT / "examples" / "train_riemann.py"
GEOMETRIC = ROOT / "examples" / "train_geometric.py"
GENERATE = ROOT / "examples" / "generate.py"
SEMANTIC = ROOT / "examples" / "semantic_map.py"
TINY_R = ["--dim", "16", "--heads", "2", "--layers", "1", "--seq-len", "16", "--rank", "2", "--hidden", "8",
          "--field-hidden", "16", "--steps", "2", "--batch-size", "2", "--vocab-size", "300", "--max-train-stories", "40",
          "--max-val-stories", "10", "--gen-tokens", "0", "--map-points", "0"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.txt").write_text("")
    (d / "blank.txt").write_text("\n\n<|endoftext|>\n\n")
    (d / "binary.txt").write_bytes(bytes(range(256)) * 40)
    (d / "notext.jsonl").write_text('{"story": "Once upon a time."}\n')
    (d / "broken.json").write_text('{"text": "Once upon a time.", ')
    (d / "data.csv").write_text("text\nOnce upon a time.\n")
    (d / "badgzip.txt.gz").write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    (d / "a_file").write_text("I am a file, not a directory")
    stories = [f"Once upon a time, a cat named Tom number {i} saw a big red ball. Tom was happy." for i in range(60)]
    with gzip.open(d / "train.txt.gz", "wt") as fh:
        fh.write("".join(s + "\n<|endoftext|>\n" for s in stories))
    (d / "trunc.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 50)
    np.savez(d / "alien.npz", x=np.zeros(3))
    return d


def _run(script, args, cwd, env_extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", GEOLM_CACHE=str(cwd / "cache"))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


CASES = [
    # (id, script, args, expected fragment of the one error line)
    ("missing data file", RIEMANN, ["--data", "{d}/nope.txt"], "not found"),
    ("empty data file", RIEMANN, ["--data", "{d}/empty.txt"], "empty"),
    ("file with no stories", GEOMETRIC, ["--data", "{d}/blank.txt"], "stor"),
    ("binary data file", RIEMANN, ["--data", "{d}/binary.txt"], "binary"),
    ("jsonl without text field", RIEMANN, ["--data", "{d}/notext.jsonl"], "text"),
    ("broken json", GEOMETRIC, ["--data", "{d}/broken.json"], "json"),
    ("unknown extension", RIEMANN, ["--data", "{d}/data.csv"], ".csv"),
    ("corrupt gzip", GEOMETRIC, ["--data", "{d}/badgzip.txt.gz"], "gzip"),
    ("rank larger than dim", RIEMANN, ["--dim", "16", "--rank", "32"], "--rank"),
    ("eps not positive", RIEMANN, ["--eps", "0"], "--eps"),
    ("negative alpha", RIEMANN, ["--alpha", "-1"], "--alpha"),
    ("zero batch", RIEMANN, ["--batch-size", "0"], "--batch-size"),
    ("negative steps", RIEMANN, ["--steps", "-3"], "--steps"),
    ("heads do not divide dim", RIEMANN, ["--dim", "30", "--heads", "4"], "--heads"),
    ("vocab below specials", RIEMANN, ["--vocab-size", "2"], "--vocab-size"),
    ("no-ode with metric options", RIEMANN, ["--no-ode", "--rank", "8"], "--no-ode"),
    ("no-ode with eps", RIEMANN, ["--no-ode", "--eps", "0.5"], "--no-ode"),
    ("riemann output not writable", RIEMANN, ["--output", "/proc/geolm_out", "--data", "{d}/train.txt.gz"], "--output"),
    ("unknown flag", RIEMANN, ["--dimension", "3"], "unrecognized"),
    ("bad choice", RIEMANN, ["--metric", "dense"], "invalid choice"),
    ("output is a file", RIEMANN, ["--output", "{d}/a_file", "--data", "{d}/train.txt.gz"], "--output"),
    ("output not writable", GEOMETRIC, ["--output", "/proc/geolm_out", "--data", "{d}/train.txt.gz", "--models", "bigram"], "--output"),
    ("unknown model name", GEOMETRIC, ["--models", "trigram,nope"], "nope"),
    ("zero epochs", GEOMETRIC, ["--epochs", "0"], "--epochs"),
    ("coord dim zero", GEOMETRIC, ["--coord-dim", "0"], "--coord-dim"),
    ("context too short", GEOMETRIC, ["--context", "1"], "--context"),
    ("hub unreachable, no fallback", GEOMETRIC, ["--no-builtin-fallback"], "--data"),
    ("resume from nothing", RIEMANN, ["--resume", "{d}/nothing_here"], "does not exist"),
    ("truncated checkpoint", GENERATE, ["--checkpoint", "{d}/trunc.npz"], "corrupt"),
    ("not a geolm checkpoint", GENERATE, ["--checkpoint", "{d}/alien.npz"], "checkpoint"),
    ("missing checkpoint", SEMANTIC, ["--checkpoint", "{d}/none.npz"], "checkpoint"),
]


def _check(res, fragment, out_dir=None):
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    err_lines = [ln for ln in err if ln.startswith("error:")]
    assert len(err_lines) == 1, err
    assert fragment.lower() in err_lines[0].lower(), err_lines[0]
    if out_dir is not None:
        assert not out_dir.exists() or not any(out_dir.iterdir()), sorted(out_dir.iterdir())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(case, files, tmp_path):
    _, script, args, fragment = case
    args = [a.replace("{d}", str(files)) for a in args]
    out = tmp_path / "out"
    if "--output" not in args and script in (RIEMANN, GEOMETRIC):
        args += ["--output", str(out)]
    _check(_run(script, args, tmp_path), fragment, out if "--output" in args else None)


def test_catalogue_is_long_enough():
    assert len(CASES) >= 20


def test_resume_with_other_model_family(files, tmp_path):
    """A geometric run's checkpoint handed to the Riemann trainer is refused by family."""
    run = tmp_path / "geo"
    run.mkdir()
    save_checkpoint(run, 1, np.zeros(4, np.float32), {"family": "geometric:trigram", "cfg": {}, "spec": "[]"})
    _check(_run(RIEMANN, ["--resume", str(run)], tmp_path), "geometric")


def test_prompt_that_tokenizes_to_nothing(files, tmp_path):
    run = tmp_path / "r"
    res = _run(RIEMANN, TINY_R + ["--data", str(files / "train.txt.gz"), "--output", str(run)], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    _check(_run(GENERATE, ["--checkpoint", str(run), "--prompt", ""], tmp_path), "prompt")
