import gzip
import json
import time

import pytest

from geolm.data import corpus as dm
from geolm.data.corpus import load_corpus, read_stories
from geolm.core.errors import ConfigError, DataError, GeolmError

SEP = "\n<|endoftext|>\n"
STORIES = ["Once upon a time, there was a cat.\n\nThe cat was happy.", "  Tom had a red ball.  ", "",
           "Lily went to the park. She saw a bird."]
CLEAN = [s.strip() for s in STORIES if s.strip()]


def _txt(path, stories=STORIES):
    text = "".join(s + SEP for s in stories)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _one_line(e):
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


@pytest.mark.data
def test_shared_tinystories_files(tinystories):
    t0 = time.perf_counter()
    c = load_corpus(tinystories / "train.txt.gz")
    dt = time.perf_counter() - t0
    assert (len(c.train), len(c.val)) == (2000, 1000)
    direct = gzip.open(tinystories / "train.txt.gz", "rt", encoding="utf-8").read().split(SEP)
    assert c.train[0] == direct[0].strip() and c.train[1999] == direct[1999].strip()
    vdirect = gzip.open(tinystories / "valid.txt.gz", "rt", encoding="utf-8").read().split(SEP)
    assert c.val[0] == vdirect[0].strip() and c.val[-1] == vdirect[999].strip()
    assert "train.txt.gz (2000 stories)" in c.source and "valid.txt.gz (1000)" in c.source
    print(f"loaded 2000+1000 shared stories in {dt:.2f} s")
    d = load_corpus(tinystories, max_train=None, max_val=None)  # a directory picks train.* and valid.*
    assert (len(d.train), len(d.val)) == (3000, 1000) and d.train[:2000] == c.train


@pytest.mark.parametrize("name", ["train.txt", "train.txt.gz"])
def test_txt_round_trip_and_sibling_valid(tmp_path, name):
    _txt(tmp_path / name)
    _txt(tmp_path / name.replace("train", "valid"), ["A valid story.", "Another one."])
    c = load_corpus(tmp_path / name)
    assert c.train == CLEAN and c.val == ["A valid story.", "Another one."]
    assert c.source.startswith("local files")
    c2 = load_corpus(tmp_path / name, max_train=2, max_val=1)
    assert c2.train == CLEAN[:2] and c2.val == ["A valid story."]


def test_json_jsonl_parquet_round_trips(tmp_path):
    rows = [{"text": s, "id": i} for i, s in enumerate(STORIES)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.json").write_text(json.dumps(rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": STORIES, "id": list(range(len(STORIES)))}), tmp_path / "a.parquet")
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("a.jsonl", "a.json", "a.parquet", "a.jsonl.gz"):
        assert read_stories(tmp_path / name) == CLEAN, name


def test_holdout_when_no_valid_file(tmp_path):
    stories = [f"Story number {i}." for i in range(25)]
    _txt(tmp_path / "mystories.txt", stories)
    c = load_corpus(tmp_path / "mystories.txt", max_train=None, max_val=None)
    assert c.train == stories[:23] and c.val == stories[23:]
    assert "held out" in c.source and "10%" in c.source
    v = _txt(tmp_path / "other.txt", ["Explicit val."])
    c = load_corpus(tmp_path / "mystories.txt", val_data=v, max_train=5)
    assert c.train == stories[:5] and c.val == ["Explicit val."]


def test_builtin_explicit():
    c = load_corpus("builtin", max_train=30, max_val=10, seed=3)
    assert len(c.train) == 30 and len(c.val) == 10
    assert "built-in geolm story generator (seed 3, 30+10 stories" in c.source


def test_offline_fallback_is_fast_and_says_so(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    c = load_corpus(max_train=20, max_val=5)
    assert time.perf_counter() - t0 < 5.0
    assert "built-in" in c.source and len(c.train) == 20
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "roneneldan/TinyStories" in err[0] and "20+5 stories" in err[0]
    with pytest.raises(DataError, match="pass --data PATH to a local file") as e:
        load_corpus(allow_builtin=False)
    _one_line(e)


def test_hub_probe_does_not_hang(monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", lambda self, name, timeout=None: time.sleep(3))
    t0 = time.perf_counter()
    ok, reason = dm.hub_status("x/y", timeout=0.2)
    assert not ok and "no answer" in reason and time.perf_counter() - t0 < 2.0


def test_hub_not_found_is_an_error(monkeypatch):
    import huggingface_hub

    class RepositoryNotFoundError(Exception):
        pass

    def missing(self, name, timeout=None):
        raise RepositoryNotFoundError(name)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", missing)
    with pytest.raises(DataError, match="not found") as e:
        load_corpus("nobody/nothing")
    _one_line(e)


def test_hub_streaming_takes_first_n(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split, streaming):
        calls.append((name, split, streaming))
        return iter({"text": f" {split} story {i} "} for i in range(100))

    monkeypatch.setattr(dm, "hub_status", lambda name, timeout=None: (True, "reachable"))
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    c = load_corpus("some/hubset", max_train=7, max_val=3)
    assert c.train == [f"train story {i}" for i in range(7)] and c.val == [f"validation story {i}" for i in range(3)]
    assert calls == [("some/hubset", "train", True), ("some/hubset", "validation", True)]
    assert c.source.startswith("hub some/hubset")


def _bad(tmp_path, kind):
    p = tmp_path / "train.txt"
    if kind == "missing":
        return tmp_path / "nope.txt"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "binary":
        p.write_bytes(b"abc\x00\x01\x02" * 100)
    elif kind == "not_utf8":
        p.write_bytes(b"\xff\xfe\xfa story" * 100)
    elif kind == "bad_gzip":
        p = tmp_path / "train.txt.gz"
        p.write_bytes(b"this is not gzip")
    elif kind == "no_stories":
        p.write_text(SEP * 5 + "   \n")
    elif kind == "unknown_ext":
        p = tmp_path / "train.csv"
        p.write_text("text\nhello\n")
    elif kind == "no_text_field":
        p = tmp_path / "train.jsonl"
        p.write_text('{"story": "hi"}\n')
    elif kind == "text_not_string":
        p = tmp_path / "train.jsonl"
        p.write_text('{"text": 3}\n{"text": 4}\n')
    elif kind == "bad_json":
        p = tmp_path / "train.jsonl"
        p.write_text('{"text": "hi"\n')
    elif kind == "bad_parquet":
        p = tmp_path / "train.parquet"
        p.write_bytes(b"PAR1 garbage")
    elif kind == "one_story":
        p.write_text("Just one story." + SEP)
    elif kind == "empty_dir":
        return tmp_path
    return p


@pytest.mark.parametrize("kind", ["missing", "empty", "binary", "not_utf8", "bad_gzip", "no_stories", "unknown_ext",
                                  "no_text_field", "text_not_string", "bad_json", "bad_parquet", "one_story",
                                  "empty_dir"])
def test_bad_files_raise_one_line(tmp_path, kind):
    p = _bad(tmp_path, kind)
    with pytest.raises(DataError) as e:
        load_corpus(p)
    msg = _one_line(e)
    assert any(w in msg for w in ("pass --", "use .txt", "fix", "check", "store", "separate")), msg


def test_unreadable_file(tmp_path, monkeypatch):
    p = _txt(tmp_path / "train.txt")
    monkeypatch.setattr(dm.os, "access", lambda path, mode: False)
    with pytest.raises(DataError, match="not readable") as e:
        load_corpus(p)
    _one_line(e)


@pytest.mark.parametrize("kw", [dict(max_train=0), dict(max_val=-1), dict(max_train=1.5), dict(max_train=None)])
def test_bad_sizes(tmp_path, kw):
    with pytest.raises(ConfigError) as e:
        load_corpus("builtin", **kw)
    _one_line(e)
    if kw.get("max_train", 1) is not None:
        with pytest.raises(ConfigError):
            load_corpus(_txt(tmp_path / "train.txt"), **kw)


def test_errors_are_geolm_errors(tmp_path):
    with pytest.raises(GeolmError):
        load_corpus(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="is not; pass --data PATH"):
        load_corpus("owner/hubname", val_data=tmp_path / "v.txt")
