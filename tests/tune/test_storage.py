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

from mlops_ray.tune.storage import (TMP_MARK, apply_latest_snapshot, atomic_local_filesystem, damaged_state_files,
                                    take_snapshot)

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
    (tmp_path / "search_gen_state-b.json").write_bytes(b"")  # a pickle despite its suffix
    (tmp_path / f"search_gen_state-a.pkl{TMP_MARK}0f").write_bytes(b"left by a kill")
    found = damaged_state_files(tmp_path)
    assert found[0].startswith("callback-states-a.pkl: unreadable (40 bytes; ")
    assert found[1].startswith("experiment_state-b.json: unreadable (16 bytes; JSONDecodeError")
    assert found[2] == "search_gen_state-b.json: empty (0 bytes)"
    assert found[3] == "searcher-state-a.pkl: empty (0 bytes)"
    assert len(found) == 4
    assert not list(tmp_path.glob(f"*{TMP_MARK}*"))  # leftovers removed; the file beside them is whole


def _staging(path: Path, session: str, trials: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / f"experiment_state-{session}.json").write_text(json.dumps({"trial_data": list(range(trials))}))
    (path / f"search_gen_state-{session}.json").write_bytes(pickle.dumps({"counter": trials}))
    (path / "trainable_0").mkdir(exist_ok=True)  # trial folders are not state files
    (path / ".0f-tmp-searcher-state-x.pkl").write_bytes(b"Ray's own temporary file")
    return path


def test_snapshots_are_numbered_whole_saves_and_the_newest_replaces_the_experiments_state(tmp_path):
    staging, folder, exp = tmp_path / "staging", tmp_path / "state_snapshots", tmp_path / "experiment"
    assert take_snapshot(tmp_path / "nothing", folder) is None
    for trials in (1, 2, 3):
        take_snapshot(_staging(staging, "s1", trials), folder)
    (folder / ".tmp-00000004-dead").mkdir()  # a kill mid-snapshot
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-00000004-dead", "00000002", "00000003"]
    take_snapshot(_staging(staging, "s1", 4), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["00000003", "00000004"]
    assert sorted(p.name for p in (folder / "00000004").iterdir()) == ["experiment_state-s1.json",
                                                                       "search_gen_state-s1.json"]

    _staging(exp, "s1", 6)  # the experiment folder got a later, partial copy
    (exp / "experiment_state-s0.json").write_text("{}")  # an older session's file, not in the snapshot
    (exp / f"searcher-state-s1.pkl{TMP_MARK}ab").write_bytes(b"")
    (exp / "tuner.pkl").write_bytes(b"kept")
    assert apply_latest_snapshot(folder, exp) == folder / "00000004"
    assert json.loads((exp / "experiment_state-s1.json").read_text()) == {"trial_data": [0, 1, 2, 3]}
    assert pickle.loads((exp / "search_gen_state-s1.json").read_bytes()) == {"counter": 4}
    assert sorted(p.name for p in exp.iterdir()) == [".0f-tmp-searcher-state-x.pkl", "experiment_state-s1.json",
                                                     "search_gen_state-s1.json", "trainable_0", "tuner.pkl"]
    assert apply_latest_snapshot(tmp_path / "none", exp) is None
