"""`prepare` and the loaders lose nothing (issue 15): a killed prepare keeps the previous
folder, odd captions and non-media files are read or skipped and counted, an all-bad task
stops with a DataError, a bad manifest line is one clear DataError. Tiny PNGs and a stub
caption encoder keep it fast."""

import codecs
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import PIL.Image
import pytest

from data_pipelines import DataError, encoders, manifest, offline, shards
from data_pipelines import pipeline as P
from lumina_jax.cli import main as lumina_main
from lumina_jax.errors import UserError


class StubCaptions:  # minilm's name in prepared.json, none of its weights or its time
    dim = 8

    def encode(self, texts):
        return [(np.full((4, 8), len(t), np.float32), 4) for t in texts]


@pytest.fixture(autouse=True)
def stub_captions(monkeypatch):
    monkeypatch.setattr(encoders, "get_caption_encoder", lambda *a, **k: StubCaptions())
    monkeypatch.setattr(manifest, "_warned", set())  # every test sees its own warnings


def _images(folder, names):
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(names):
        PIL.Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(os.path.join(folder, name))
    return str(folder)


def _prepare(src, out, **kw):
    return offline.prepare(str(src), str(out), resolution=32, multiple=16, workers=1, **kw)


def _task(out, **kw):
    return P.Task(sources=(P.Source("default", str(out)),), media="image", resolution=32,
                  multiple=16, batch_size=2, read_threads=1, **kw)


def _within(fn, seconds=20):
    """fn() in a daemon thread: a hang (FIFO, endless bad stream) fails instead of blocking."""
    out = {}

    def target():
        try:
            out["r"] = fn()
        except Exception as e:  # pylint: disable=broad-except
            out["r"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return out["r"]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder).iterdir())}


def _siblings(out):
    return sorted(n for n in os.listdir(os.path.dirname(out)) if n != os.path.basename(out))


# ------------------------------------------------------------------ defect 6: atomic output


def test_killed_prepare_keeps_previous_folder(tmp_path):
    src, out = _images(tmp_path / "in", ["a.png", "b.png", "c.png"]), str(tmp_path / "out")
    assert _prepare(src, out)["num_examples"] == 3
    before = _snapshot(out)
    _images(tmp_path / "in", ["a.png", "b.png", "c.png", "d.png", "e.png"])
    # A real kill (SIGKILL: no cleanup runs) after two records of the new folder are out.
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from data_pipelines import encoders, offline, shards
        from test_prepare_safety import StubCaptions
        encoders.get_caption_encoder = lambda *a, **k: StubCaptions()
        real = shards.ShardWriter.write
        def write(self, *args):
            if self.count == 2:
                self._examples.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real(self, *args)
        shards.ShardWriter.write = write
        offline.prepare({src!r}, {out!r}, resolution=32, multiple=16, workers=1)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == -signal.SIGKILL, stderr
    assert _snapshot(out) == before  # untouched: the kill hit the staging folder
    assert _siblings(out) == ["in", f"out.tmp-{proc.pid}"]
    with open(os.path.join(tmp_path, f"out.tmp-{proc.pid}", shards.EXAMPLES)) as f:
        assert len(f.readlines()) == 2  # the half-written folder, beside the intact one
    assert len(next(P.make_iterator(_task(out), 0, 1))["path"]) == 2  # still loads

    # The next prepare deletes the leftover and replaces the folder whole.
    assert _prepare(src, out)["num_examples"] == 5
    assert _siblings(out) == ["in"] and shards.read_prepared(out)[0]["num_examples"] == 5


def test_failed_prepare_leaves_nothing_and_old_folder_comes_back(tmp_path, monkeypatch):
    src, out = _images(tmp_path / "in", ["a.png", "b.png"]), str(tmp_path / "out")
    _prepare(src, out)
    before = _snapshot(out)

    def fail(*_):
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:
        m.setattr(shards.ShardWriter, "write", fail)
        with pytest.raises(RuntimeError, match="disk full"):
            _prepare(src, out)
    assert _snapshot(out) == before and _siblings(out) == ["in"]

    # Killed between moving the old folder aside and renaming the new one in: the next
    # prepare puts the old one back first (and drops the unfinished new one).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.rename(out, f"{out}.old-{dead.pid}")
    os.makedirs(f"{out}.tmp-{dead.pid}")
    offline._check_output(out)  # pylint: disable=protected-access
    assert _snapshot(out) == before and _siblings(out) == ["in"]

    # A folder written in place by an older prepare and cut short is not "prepared".
    with open(os.path.join(out, shards.EXAMPLES), "w") as f:
        f.write(before[shards.EXAMPLES].decode().splitlines()[0] + "\n")
    with pytest.raises(DataError, match="incomplete: 1 of 2 examples.*re-run"):
        shards.read_prepared(out)


def test_prepare_never_replaces_a_folder_with_other_files(tmp_path):
    src = _images(tmp_path / "data", ["a.png"])
    with pytest.raises(DataError, match=r"holds files prepare did not write \(a.png\)"):
        _prepare(src, src)  # output = the input media: replacing it would delete them
    assert os.listdir(src) == ["a.png"] and _siblings(src) == []


# ------------------------------------------------------- defect 7: captions and odd files


def test_captions_in_any_encoding_and_odd_files_are_counted(tmp_path):
    src = _images(tmp_path / "in", ["utf8.png", "utf16.png", "latin1.png", "nobom.png",
                                    "plain_name.png"])
    for name, data in (("utf8", codecs.BOM_UTF8 + "café ☕".encode()),
                       ("utf16", "café ☕".encode("utf-16")),  # BOM included
                       ("latin1", "café".encode("latin-1")),
                       ("nobom", "café".encode("utf-16-le")),  # no BOM: cannot tell
                       ("orphan", b"no media of this name")):
        (tmp_path / "in" / f"{name}.txt").write_bytes(data)
    (tmp_path / "in" / "notes.md").write_text("not media")
    os.mkfifo(tmp_path / "in" / "pipe.png")  # opening it would block forever
    os.symlink(tmp_path / "gone.png", tmp_path / "in" / "broken.png")

    summary = _within(lambda: _prepare(src, tmp_path / "out"))
    assert not isinstance(summary, Exception), summary
    _, examples = shards.read_prepared(str(tmp_path / "out"))
    assert {os.path.basename(e["path"]): e["caption"] for e in examples} == {
        "utf8.png": "café ☕", "utf16.png": "café ☕", "latin1.png": "café",
        "plain_name.png": "plain name"}
    assert summary["skip_counts"] == {"bad_caption": 1, "caption_without_media": 1,
                                      "unknown_extension": 1, "unreadable": 2}
    skipped = {os.path.basename(p): r for p, r in summary["skipped"].items()}
    assert skipped == {"nobom.png": "bad_caption", "orphan.txt": "caption_without_media",
                       "notes.md": "unknown_extension", "pipe.png": "unreadable",
                       "broken.png": "unreadable"}


def test_no_usable_media_is_a_data_error(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="data_pipelines")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no usable media in .*empty \(skipped: none"):
        _prepare(empty, tmp_path / "out")
    (empty / "readme.md").write_text("x")
    (empty / "clip.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="unknown_extension': 1, 'unreadable': 1") as err:
        _prepare(empty, tmp_path / "out")
    assert isinstance(err.value, UserError)
    assert _siblings(str(tmp_path / "out")) == ["empty"]  # nothing written
    assert {r.getMessage().split(":")[0] for r in caplog.records} == {
        f"skipping {empty / 'readme.md'}", f"skipping {empty / 'clip.png'}"}


# --------------------------------------------------------- defect 5: an all-bad task stops


def test_task_of_only_corrupt_examples_stops_with_data_error(tmp_path, caplog):
    src, out = _images(tmp_path / "in", ["a.png", "b.png", "c.png"]), str(tmp_path / "out")
    meta = _prepare(src, out)
    for name in meta["shards"]:  # every record of the prepared folder is garbage
        path = os.path.join(out, name)
        with open(path, "r+b") as f:
            f.write(np.random.default_rng(0).bytes(os.path.getsize(path)))
    caplog.set_level(logging.WARNING, logger="data_pipelines")
    err = _within(lambda: next(P.make_iterator(_task(out), 0, 1)))
    assert isinstance(err, DataError), err
    assert f"64 examples in a row failed to load from source 'default' ({out})" in str(err)
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert len(warned) == 3  # progress: each bad example named once while it spun

    # Raw media that all fail to probe: refused when the task is planned, with the count.
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(2):
        (bad / f"x{i}.png").write_bytes(b"garbage")
    err = _within(lambda: P.plan_task(_task(bad)))
    assert isinstance(err, DataError) and f"no usable image clips in {bad}" in str(err)
    assert "'unreadable': 2" in str(err)


# ------------------------------------------------------------ defect 12: manifest lines


def test_malformed_manifest_line_is_one_clear_error(tmp_path, capsys):
    src = _images(tmp_path / "in", ["a.png", "b.png"])
    good = json.dumps({"path": "in/a.png", "caption": "a"})
    path = tmp_path / "list.jsonl"
    for lines, words in (
        ([good, "", "{not json"], "line 3 is not JSON"),
        ([good, json.dumps({"path": "in/b.png"}), "[1]"],
         "line 2 lacks a string 'path' or 'caption' (and 1 more bad lines)"),
    ):
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(DataError) as err:
            _prepare(path, tmp_path / "out")
        msg = str(err.value)
        assert msg.startswith(f"manifest {path}: {words}") and "fix or delete such lines" in msg
    with pytest.raises(DataError, match="does not exist"):
        _prepare(tmp_path / "missing.jsonl", tmp_path / "out")
    path.write_text(good + "\n" + json.dumps({"path": f"{src}/b.png", "caption": "b"}) + "\n")
    assert _prepare(path, tmp_path / "out")["num_examples"] == 2

    # The CLI prints it as one line and exits 2.
    path.write_text("{not json\n")
    assert lumina_main(["prepare", "--input", str(path), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("lumina-jax prepare: error: manifest ")
