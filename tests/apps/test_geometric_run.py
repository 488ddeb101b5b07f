import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from geolm.core.config import ArgParser, add_args, from_args
from geolm.core.errors import ConfigError
from geolm.data.builtin import builtin_corpus
from geolm.training.checkpoint import load_checkpoint, save_snapshot
from geolm.apps.geometric_config import ALL_MODELS, GeoRunConfig, model_list, seed_list
from geolm.apps.geometric_run import cost, epochs_from_history
from geolm.apps.model_pool import balanced_bins

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_geometric.py"


def _run(args, timeout=240):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "GEOLM_MPI": "0"})


def test_model_list():
    assert model_list("all") == list(ALL_MODELS)
    assert model_list("trigram, bigram,trigram") == ["trigram", "bigram"]
    with pytest.raises(ConfigError, match="valid: all or bigram"):
        model_list("bigram,transformer")


WRITEUP = ["--dataset", "roneneldan/TinyStories", "--vocab-size", "4096", "--dim", "64", "--epochs", "5", "--lr",
           "1e-4", "--max-train-stories", "2000", "--max-val-stories", "1000"]  # the write-up's command, verbatim


def _parse(argv):
    return from_args(GeoRunConfig, add_args(ArgParser(), GeoRunConfig).parse_args(argv))


def test_the_writeups_command_line_parses():
    cfg = _parse(WRITEUP)
    assert (cfg.data, cfg.vocab_size, cfg.dim, cfg.epochs, cfg.lr) == ("roneneldan/TinyStories", 4096, 64, 5, 1e-4)
    assert (cfg.max_train_stories, cfg.max_val_stories) == (2000, 1000)
    assert _parse(["--data", "x.txt"]).data == _parse(["--dataset", "x.txt"]).data == "x.txt"  # one option


def test_help_shows_one_name_per_option():
    r = _run(["--help"], timeout=60)
    assert r.returncode == 0 and "--data DATA" in r.stdout and "--max-train-stories" in r.stdout
    assert "--dataset " not in r.stdout.replace("(--dataset,", "")  # named in --data's help only


def _tiny_file(path, n=40):
    train, _ = builtin_corpus(n, 0, seed=5)
    path.write_text("".join(s + "\n<|endoftext|>\n" for s in train))
    return path


def test_the_writeups_command_runs_on_a_tiny_local_file(tmp_path):
    argv = [a if a != "roneneldan/TinyStories" else str(_tiny_file(tmp_path / "tiny.txt")) for a in WRITEUP]
    r = _run([*argv, "--models", "bigram,geo_abs,geo_abs_kappa", "--output", str(tmp_path / "run")])
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["config"]["data"].endswith("tiny.txt") and res["config"]["epochs"] == 5
    assert [e["epoch"] for e in res["models"]["geo_abs"]["epochs"]] == [1, 2, 3, 4, 5]
    pub = res["published"]  # the tiny file has far fewer than 2,000 stories: the 2k figures do not apply
    assert pub["matched"] is None and "2k differs in stories" in pub["note"]
    assert "published: no published setting matches" in r.stdout


def test_seed_list():
    assert seed_list(None) is None and seed_list("0,1,2") == [0, 1, 2] and seed_list(" 3, 1") == [3, 1]
    for bad in ("0", "0,0", "a,b", "-1,2", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            GeoRunConfig(seeds=bad)


def test_seeds_run_the_table_once_per_seed(tmp_path):
    data = str(_tiny_file(tmp_path / "tiny.txt"))
    args = ["--data", data, "--vocab-size", "300", "--dim", "8", "--epochs", "2", "--models", "bigram,trigram,geo_abs",
            "--jobs", "1", "--threads", "1"]
    assert _run([*args, "--output", str(tmp_path / "one")]).returncode == 0
    r = _run([*args, "--seeds", "0,1", "--output", str(tmp_path / "two")])
    assert r.returncode == 0, r.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())["models"]
    res = json.loads((tmp_path / "two" / "results.json").read_text())
    two = res["models"]
    assert res["seeds"] == [0, 1] and (tmp_path / "two" / "seed1" / "models" / "geo_abs").is_dir()
    for k in ("bigram", "trigram", "geo_abs"):  # seed 0 of the seeded run is the plain --seed 0 run
        assert two[k]["per_seed"]["0"]["val_ppl"] == one[k]["val_ppl"], k
    assert two["bigram"]["val_ppl_sd"] == 0.0  # counts: no seed in them
    assert two["geo_abs"]["per_seed"]["1"]["val_ppl"] != one["geo_abs"]["val_ppl"]
    v = [two["geo_abs"]["per_seed"][s]["val_ppl"] for s in ("0", "1")]
    assert two["geo_abs"]["val_ppl"] == pytest.approx(sum(v) / 2)
    assert two["geo_abs"]["val_ppl_sd"] == pytest.approx(abs(v[0] - v[1]) / 2 ** 0.5)
    assert "+-" in r.stdout and "mean +- sample sd over seeds 0,1" in r.stdout


def test_config_validation():
    with pytest.raises(ConfigError, match="--successor-context"):
        GeoRunConfig(successor_context=9)
    with pytest.raises(ConfigError, match="--epochs"):
        GeoRunConfig(epochs=0)


def testepochs_from_history():
    h = [{"kind": "train", "step": 2, "loss": 3.0}, {"kind": "train", "step": 4, "loss": 1.0},
         {"kind": "eval", "step": 4, "val_ppl": 9.0}, {"kind": "train", "step": 6, "loss": 0.5},
         {"kind": "eval", "step": 7, "val_ppl": 8.0}]
    assert epochs_from_history(h, 4) == [{"epoch": 1, "train_loss": 2.0, "val_ppl": 9.0, "val_loss": math.log(9.0)},
                                          {"epoch": 2, "train_loss": 0.5, "val_ppl": 8.0, "val_loss": math.log(8.0)}]
    # parallel runs: fit's pending record, then the deferred evaluation's (either order); a lost one stays None
    h2 = [{"kind": "eval", "step": 4, "val_ppl": None, "pending": True},
          {"kind": "eval", "step": 4, "val_ppl": 9.0, "deferred": True},
          {"kind": "eval", "step": 8, "val_ppl": 7.0, "deferred": True},
          {"kind": "eval", "step": 8, "val_ppl": None, "pending": True},
          {"kind": "eval", "step": 12, "val_ppl": None, "pending": True}]
    assert [e["val_ppl"] for e in epochs_from_history(h2, 4)] == [9.0, 7.0, None]


@pytest.mark.parametrize("args,needle", [
    (["--models", "bigram,nope"], "unknown model nope"),
    (["--epochs", "0"], "--epochs"),
    (["--bogus-flag", "1"], "unrecognized arguments"),
    (["--coord-dim", "x"], "invalid int value"),
])
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path):
    r = _run(args + ["--output", str(tmp_path)], timeout=60)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr


@pytest.mark.data
@pytest.mark.slow
def test_end_to_end_small(tinystories, tmp_path):
    out = tmp_path / "run"
    r = _run(["--data", str(tinystories), "--max-train-stories", "60", "--max-val-stories", "20", "--epochs", "2",
              "--vocab-size", "400", "--kappa-holdout", "20", "--dim", "16", "--successor-dim", "8", "--lr", "3e-3",
              "--models", "bigram,trigram,geo_abs,geo_rot_nbrs,hybrid_kappa,geo_attention,geo_successor",
              "--output", str(out), "--jobs", "2"])
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert set(res) >= {"config", "data", "models"}
    d = res["data"]
    assert {"source", "train_stories", "val_stories", "vocab_size", "val_tokens", "unk_rate"} <= set(d)
    assert d["train_stories"] == 60 and d["val_stories"] == 20 and "train.txt.gz" in d["source"]
    V = d["vocab_size"]
    m = res["models"]
    assert set(m) == {"bigram", "trigram", "geo_abs", "geo_rot_nbrs", "hybrid", "hybrid_kappa", "hybrid_kappa_fit",
                      "geo_attention", "geo_successor"}
    for name, r_ in m.items():
        assert {"val_ppl", "val_loss", "epochs", "seconds", "params"} <= set(r_), name
        assert 1.0 < r_["val_ppl"] < 2 * V, (name, r_["val_ppl"])
    assert [e["epoch"] for e in m["trigram"]["epochs"]] == [1, 2]
    assert all(e["train_loss"] is not None and e["val_ppl"] > 0 for e in m["trigram"]["epochs"])
    assert m["trigram"]["val_ppl"] < V  # beats a uniform model
    assert m["trigram"]["params"] == (2 * (V + 1) + 1) * 16 + (16 + 1) * V
    assert m["hybrid_kappa_fit"]["val_ppl"] <= m["hybrid_kappa"]["val_ppl"] * 1.05
    assert (out / "curves.png").stat().st_size > 1000
    assert "data:" in r.stdout and "val ppl" in r.stdout


SMALL = ["--max-train-stories", "40", "--max-val-stories", "10", "--vocab-size", "300", "--kappa-holdout", "10",
         "--dim", "8", "--successor-dim", "4", "--models", "bigram,trigram,geo_abs_kappa", "--jobs", "1",
         "--threads", "1"]


def _ppl(path):
    return {k: v["val_ppl"] for k, v in json.loads((path / "results.json").read_text())["models"].items()}


@pytest.mark.data
@pytest.mark.slow
def test_resume_continues_to_the_same_result(tinystories, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(["--data", str(tinystories), *SMALL, "--epochs", "2", "--output", str(a)]).returncode == 0
    assert _run(["--data", str(tinystories), *SMALL, "--epochs", "1", "--output", str(b)]).returncode == 0
    r = _run(["--data", str(tinystories), *SMALL, "--epochs", "2", "--output", str(b), "--resume"])
    assert r.returncode == 0, r.stderr[-1000:]
    assert _ppl(a) == _ppl(b)
    ep = json.loads((b / "results.json").read_text())["models"]["trigram"]["epochs"]
    assert [e["epoch"] for e in ep] == [1, 2]


@pytest.mark.data
@pytest.mark.slow
def test_parallel_processes_with_queued_evaluations_match_sequential(tinystories, tmp_path):
    # --jobs 2 trains without evaluating and queues every epoch's evaluation and the kappa scoring to whichever
    # process is free, one BLAS thread each: the results must be the very same numbers as --jobs 1 on one thread
    # (fit evaluating in place). Equal thread counts matter: OpenBLAS's float32 GEMMs may differ in the last bits
    # between 1 and 2 threads, which moves the kappa fit slightly.
    seq, par = tmp_path / "seq", tmp_path / "par"
    args = ["--data", str(tinystories), *SMALL[:-6], "--models", "trigram,geo_abs,geo_abs_kappa", "--epochs", "2"]
    assert _run([*args, "--jobs", "1", "--threads", "1", "--output", str(seq)]).returncode == 0
    r = _run([*args, "--jobs", "2", "--output", str(par)])
    assert r.returncode == 0, r.stderr[-1000:]
    a = json.loads((seq / "results.json").read_text())["models"]
    b = json.loads((par / "results.json").read_text())["models"]
    assert a.keys() == b.keys() == {"trigram", "geo_abs", "geo_abs_kappa", "geo_abs_kappa_fit"}
    for k in a:
        for f in ("val_ppl", "val_loss", "best_val_ppl"):
            assert a[k].get(f) == b[k].get(f), (k, f)
        assert [(e["epoch"], e["val_ppl"]) for e in a[k]["epochs"]] == [(e["epoch"], e["val_ppl"])
                                                                     for e in b[k]["epochs"]]
    assert all(e["val_ppl"] > 0 for e in b["trigram"]["epochs"]) and len(b["trigram"]["epochs"]) == 2
    recs = [json.loads(x) for x in (par / "models" / "trigram" / "metrics.jsonl").read_text().splitlines()]
    pending, queued = [x for x in recs if x.get("pending")], [x for x in recs if x.get("deferred")]
    assert len(queued) == 2 and [x["step"] for x in queued] == [x["step"] for x in pending]
    assert queued[-1]["val_ppl"] == b["trigram"]["val_ppl"]
    assert queued[-1]["best_val_ppl"] == b["trigram"]["best_val_ppl"]
    assert not list((par / "models").glob("*/eval_*.npy"))


@pytest.mark.data
@pytest.mark.slow
def test_resume_evaluates_snapshots_an_interrupted_parallel_run_left(tinystories, tmp_path):
    # simulate a parallel run whose parent died after training trigram but before merging its last evaluation:
    # the epoch-2 snapshot is on disk, its queued record is not in metrics.jsonl; --resume must finish the job
    out = tmp_path / "run"
    args = ["--data", str(tinystories), *SMALL[:-6], "--models", "trigram,geo_abs", "--epochs", "2", "--jobs", "2",
            "--output", str(out)]
    assert _run(args).returncode == 0
    ref = json.loads((out / "results.json").read_text())["models"]
    mdir = out / "models" / "trigram"
    ck = load_checkpoint(mdir)
    save_snapshot(mdir, ck.step, ck.theta)
    recs = (mdir / "metrics.jsonl").read_text().splitlines()
    keep = [r for r in recs if not (json.loads(r).get("deferred") and json.loads(r)["step"] == ck.step)]
    assert len(keep) == len(recs) - 1
    (mdir / "metrics.jsonl").write_text("".join(r + "\n" for r in keep))
    (out / "results.json").unlink()
    r = _run(args + ["--resume"])
    assert r.returncode == 0, r.stderr[-1000:]
    got = json.loads((out / "results.json").read_text())["models"]
    for k in ("trigram", "geo_abs"):
        assert got[k]["val_ppl"] == ref[k]["val_ppl"]
        assert [e["val_ppl"] for e in got[k]["epochs"]] == [e["val_ppl"] for e in ref[k]["epochs"]]
    assert not list(mdir.glob("eval_*.npy"))


@pytest.mark.data
@pytest.mark.slow
def test_sigterm_to_a_parallel_run_stops_cleanly_and_resumes_to_the_same_results(tinystories, tmp_path):
    args = ["--data", str(tinystories), "--max-train-stories", "1000", "--max-val-stories", "50", "--epochs", "3",
            "--vocab-size", "400", "--kappa-holdout", "20", "--dim", "32", "--successor-dim", "4",
            "--models", "trigram,geo_abs,geo_rot", "--jobs", "2"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert _run([*args, "--output", str(ref)]).returncode == 0
    p = subprocess.Popen([sys.executable, str(SCRIPT), *args, "--output", str(out)], stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, text=True, env={**os.environ, "GEOLM_MPI": "0"})
    lines = []
    for line in p.stderr:  # signal the parent only, once the first model is mid-training
        lines.append(line)
        if "epoch 1/3" in line:
            p.send_signal(signal.SIGTERM)
            break
    err = "".join(lines) + p.stderr.read()
    assert p.wait(timeout=120) == 143, err[-2000:]
    assert "resume with the same command plus --resume" in err and "Traceback" not in err
    r = _run([*args, "--output", str(out), "--resume"])
    assert r.returncode == 0, r.stderr[-1000:]
    a = json.loads((ref / "results.json").read_text())["models"]
    b = json.loads((out / "results.json").read_text())["models"]
    for k in ("trigram", "geo_abs", "geo_rot"):
        assert [e["val_ppl"] for e in a[k]["epochs"]] == [e["val_ppl"] for e in b[k]["epochs"]], k
    assert not list((out / "models").glob("*/eval_*.npy"))


@pytest.mark.data
@pytest.mark.slow
def test_two_mpi_ranks_match_one_process(tinystories, tmp_path):
    pytest.importorskip("mpi4py")
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec not found")
    one, two = tmp_path / "one", tmp_path / "two"
    assert _run(["--data", str(tinystories), *SMALL, "--epochs", "1", "--output", str(one)]).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "GEOLM_MPI"}
    r = subprocess.run(["mpiexec", "-n", "2", sys.executable, str(SCRIPT), "--data", str(tinystories), *SMALL,
                        "--epochs", "1", "--output", str(two)], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-1000:]
    p1, p2 = _ppl(one), _ppl(two)
    assert p1.keys() == p2.keys() and p1["bigram"] == p2["bigram"]  # exact: sharded integer counts
    for k in p1:
        assert p2[k] == pytest.approx(p1[k], rel=1e-5), k
    g1 = json.loads((one / "results.json").read_text())["data"]["geometry"]
    g2 = json.loads((two / "results.json").read_text())["data"]["geometry"]
    assert g1["nnz_ppmi_counts"] == g2["nnz_ppmi_counts"] and g1["spectrum_kept"] == g2["spectrum_kept"]


def test_balanced_bins_split_costs_evenly():
    need = ["trigram", "geo_abs", "geo_rot", "geo_rot_nbrs", "hybrid", "geo_attention", "geo_shuffled"]
    names = need + ["geo_abs_kappa", "hybrid_kappa"]
    costs = {n: cost(n, names) for n in need}
    bins = balanced_bins(need, 2, costs)
    assert sorted(n for b in bins for n in b) == sorted(need)
    loads = [sum(costs[n] for n in b) for b in bins]
    assert max(loads) - min(loads) <= min(costs[n] for n in need)  # no model could move to improve much
    assert max(loads) < 205  # the dynamic longest-first queue's makespan on these costs
    three = balanced_bins(need, 3, costs)
    assert len(three) == 3 and sorted(n for b in three for n in b) == sorted(need)


def test_model_lr_parses_and_controls_take_their_models_rate():
    from geolm.apps.geometric_config import lr_of, model_lrs
    assert model_lrs(None) == {} and model_lrs("trigram=3e-3, geo_abs=1e-3") == {"trigram": 3e-3, "geo_abs": 1e-3}
    cfg = _parse(["--lr", "1e-4", "--model-lr", "geo_abs=1e-3,hybrid_successor=3e-3,geo_successor_shuffled=3e-4"])
    assert lr_of(cfg, "geo_abs") == lr_of(cfg, "geo_shuffled") == 1e-3  # the control follows its model
    assert lr_of(cfg, "hybrid_successor_shuffled") == 3e-3
    assert lr_of(cfg, "geo_successor_shuffled") == 3e-4 and lr_of(cfg, "geo_successor") == 1e-4  # named: its own
    assert lr_of(cfg, "trigram") == 1e-4
    for bad in ("trigram", "trigram=x", "transformer=1e-3", "trigram=-1", "trigram=nan"):
        with pytest.raises(ConfigError, match="--model-lr: needs name=lr pairs"):
            _parse(["--model-lr", bad])


def test_eval_on_heldout_and_tokenizer_and_extra_flags_validate():
    with pytest.raises(ConfigError, match="--eval-on: must be one of val, heldout"):
        _parse(["--eval-on", "test"])
    with pytest.raises(ConfigError, match="--eval-on: heldout needs held-out training stories"):
        _parse(["--eval-on", "heldout", "--kappa-holdout", "0"])
    with pytest.raises(ConfigError, match="--tokenizer-stories: must be >= 0"):
        _parse(["--tokenizer-stories", "-1"])


def test_heldout_scoring_tokenizer_stories_and_extra_data(tmp_path):
    """--eval-on heldout scores the stories after the first N (not validation); --tokenizer-stories fixes one
    vocabulary across training sizes; --extra-data appends a file's stories and says so."""
    from geolm.apps.geometric_data import prepare_data
    from geolm.training.distributed import get_comm
    f = _tiny_file(tmp_path / "train.txt", n=60)
    extra = _tiny_file(tmp_path / "extra.txt", n=7)
    base = dict(data=str(f), val_data=str(f), max_val_stories=5, vocab_size=200, min_count=1, output=str(tmp_path))
    comm = get_comm()
    ho = prepare_data(GeoRunConfig(**base, max_train_stories=30, kappa_holdout=20, eval_on="heldout"), comm)
    va = prepare_data(GeoRunConfig(**base, max_train_stories=30, kappa_holdout=20), comm)
    assert (ho.Xva == ho.Xho).all() and len(ho.yva) == len(va.yho) and len(ho.yva) != len(va.yva)
    assert ho.info["eval_on"].startswith("held-out training stories 30..49") and ho.info["val_stories"] == 20
    small = prepare_data(GeoRunConfig(**base, max_train_stories=10, kappa_holdout=0, tokenizer_stories=40), comm)
    large = prepare_data(GeoRunConfig(**base, max_train_stories=40, kappa_holdout=0, tokenizer_stories=40), comm)
    own = prepare_data(GeoRunConfig(**base, max_train_stories=10, kappa_holdout=0), comm)
    assert small.tok.hash == large.tok.hash != own.tok.hash and small.info["train_stories"] == 10
    assert (small.Xva == large.Xva).all()  # the same validation targets over one vocabulary
    plus = prepare_data(GeoRunConfig(**base, max_train_stories=10, kappa_holdout=0, tokenizer_stories=40,
                                     extra_data=str(extra)), comm)
    assert plus.info["train_stories"] == 17 and plus.info["first_train_stories"] == 10
    assert "+ 7 extra training stories from" in plus.info["source"] and len(plus.ytr) > len(small.ytr)
    with pytest.raises(ConfigError, match="--tokenizer-stories: the data has only 60 training stories"):
        prepare_data(GeoRunConfig(**base, max_train_stories=10, kappa_holdout=0, tokenizer_stories=100), comm)
