"""The experiment folder's filesystem: a process killed mid-write leaves the previous file whole.

Ray Tune copies its experiment state into the experiment folder from a background thread;
``pyarrow``'s local filesystem truncates the file first, so a kill in between left an empty
``searcher-state-*.pkl`` (CI: "Failed to restore the run state. EOFError: Ran out of input",
then a resumed experiment that never finished).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs

from mlops_ray.tune.storage import TMP_MARK, atomic_local_filesystem, damaged_state_files

KILLED_MID_WRITE = """
import os, signal, sys
import pyarrow.fs as pafs
from mlops_ray.tune.storage import atomic_local_filesystem
fs = atomic_local_filesystem() if sys.argv[2] == "atomic" else pafs.LocalFileSystem()
stream = fs.open_output_stream(sys.argv[1])
stream.write(b"half of the new ")
stream.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def _write_then_get_killed(path: Path, fs_kind: str) -> None:
    res = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(path), fs_kind], capture_output=True, timeout=60)
    assert res.returncode == -9, res.stderr.decode()[-2000:]


def test_a_kill_mid_write_leaves_the_old_file_whole_where_the_plain_local_filesystem_truncates_it(tmp_path):
    old = pickle.dumps({"trials": 3})
    for kind in ("atomic", "plain"):
        target = tmp_path / kind / "searcher-state-x.pkl"
        target.parent.mkdir()
        target.write_bytes(old)
        _write_then_get_killed(target, kind)
        if kind == "atomic":
            assert target.read_bytes() == old
            assert [p.name for p in target.parent.iterdir() if TMP_MARK in p.name]  # the half-written new one
        else:  # the failure the atomic filesystem exists for
            assert target.read_bytes() == b"half of the new "


def test_copy_files_through_the_atomic_filesystem_gives_the_same_tree_and_it_pickles(tmp_path):
    src = tmp_path / "staging"
    (src / "trial_0").mkdir(parents=True)
    (src / "experiment_state-x.json").write_text(json.dumps({"trial_data": []}))
    (src / "trial_0" / "result.json").write_bytes(b"{}\n" * 1000)
    fs = atomic_local_filesystem()
    pafs.copy_files(str(src), str(tmp_path / "exp"), destination_filesystem=fs)
    pafs.copy_files(str(src), str(tmp_path / "exp"), destination_filesystem=fs)  # overwrites in place
    got = sorted(str(p.relative_to(tmp_path / "exp")) for p in (tmp_path / "exp").rglob("*"))
    assert got == ["experiment_state-x.json", "trial_0", "trial_0/result.json"]
    assert (tmp_path / "exp" / "trial_0" / "result.json").read_bytes() == b"{}\n" * 1000
    assert pickle.loads(pickle.dumps(fs)) == fs  # Tune ships it to trial workers
    fs.copy_file(str(src / "experiment_state-x.json"), str(tmp_path / "copied.json"))
    assert json.loads((tmp_path / "copied.json").read_text()) == {"trial_data": []}


def test_damaged_state_files_names_each_unreadable_file_and_why(tmp_path):
    (tmp_path / "experiment_state-a.json").write_text(json.dumps({"trial_data": []}))
    (tmp_path / "search_gen_state-a.pkl").write_bytes(pickle.dumps({"counter": 3}))
    (tmp_path / "tuner.pkl").write_bytes(b"not checked beyond its size")
    (tmp_path / "params.json").write_text("{")  # not a state file
    assert damaged_state_files(tmp_path) == []

    (tmp_path / "searcher-state-a.pkl").write_bytes(b"")
    (tmp_path / "callback-states-a.pkl").write_bytes(pickle.dumps(list(range(100)))[:40])
    (tmp_path / "experiment_state-b.json").write_text('{"trial_data": [')
    (tmp_path / f"search_gen_state-a.pkl{TMP_MARK}0f").write_bytes(b"left by a kill")
    found = damaged_state_files(tmp_path)
    assert found[0].startswith("callback-states-a.pkl: unreadable (40 bytes; ")
    assert found[1].startswith("experiment_state-b.json: unreadable (16 bytes; JSONDecodeError")
    assert found[2] == "searcher-state-a.pkl: empty (0 bytes)"
    assert len(found) == 3
    assert not list(tmp_path.glob(f"*{TMP_MARK}*"))  # leftovers removed; the file beside them is whole
