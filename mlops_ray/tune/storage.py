"""Where a Tune experiment keeps its state, so that a killed driver can always be continued.

Ray Tune's driver saves the experiment state (``experiment_state-*.json``: every trial and its
status; ``searcher-state-*.pkl`` / ``search_gen_state-*.json``: what the searcher suggested
and its concurrency limiter's live trials) to a staging folder, then copies that folder into
the experiment folder from a background thread (``pyarrow.fs.copy_files``). A driver killed
during that copy (``kill -9``, a lost machine) leaves two kinds of damage, both seen in CI:

* a truncated file: the copy truncates each file, then writes it. An empty
  ``searcher-state-*.pkl`` made ``Tuner.restore`` log "Failed to restore the run state.
  EOFError: Ran out of input" and carry on half-restored: the run then waited forever (a
  400-s timeout).
* files from two different saves: the searcher's state already counted a 4th trial that the
  copied ``experiment_state`` did not list; the restored experiment finished with 5 trials of 6
  (the searcher believed one more had been suggested) and its concurrency limiter kept a slot
  for a trial that no longer existed.

The defences, all used by :func:`mlops_ray.tune.run_tune`:

* :func:`atomic_local_filesystem`: Tune's ``storage_filesystem`` for the experiment folder:
  every file is written under a temporary name and renamed over the old one on close
  (``os.replace``, atomic on POSIX), so a reader sees the old file or the new one, never a
  part. Not fsync'ed: it guards against a killed process, not a power cut.
* :class:`mlops_ray.tune.progress.StateSnapshot`: a Tune callback that, each time the driver saves its state (Tune
  asks callbacks for their state right after the trial list and the searcher are written),
  copies those files into a new numbered folder of ``state_snapshots/``, made visible by one
  rename: every snapshot is one consistent save. :func:`apply_latest_snapshot` puts the newest
  back into the experiment folder before it is continued.
* :func:`damaged_state_files`: reads every state file back before the experiment is continued
  (experiments written before this module, or damaged some other way).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import uuid
from pathlib import Path

import pyarrow.fs as pafs

#: Suffix of the temporary files the atomic writer renames into place (left behind only by a kill).
TMP_MARK = ".mlops-tmp-"


class _AtomicWriter:
    """A binary file object that writes ``path`` under a temporary name and renames it into place on close."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex}"
        self._f = open(self.tmp, "wb")  # noqa: SIM115 - closed (and renamed) in close()
        self.closed = False

    def write(self, data) -> int:
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self._f.tell()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        self._f.close()
        os.replace(self.tmp, self.path)
        self.closed = True


class AtomicLocalHandler(pafs.FileSystemHandler):
    """A ``pyarrow`` filesystem handler: the local filesystem with atomic whole-file writes.

    Every call goes to ``pyarrow.fs.LocalFileSystem`` except ``open_output_stream`` (write to a
    temporary name, rename on close) and ``copy_file`` (the same, through that stream).
    Picklable (Tune ships its storage context to trial workers).
    """

    def __init__(self) -> None:
        self._fs = pafs.LocalFileSystem()

    def __reduce__(self):
        return (AtomicLocalHandler, ())

    def __eq__(self, other) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __ne__(self, other) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "mlops-ray-atomic-local"

    def normalize_path(self, path):
        return self._fs.normalize_path(path)

    def get_file_info(self, paths):
        return self._fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self._fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self._fs.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self._fs.delete_file(path)

    def move(self, src, dest):
        self._fs.move(src, dest)

    def copy_file(self, src, dest):
        with self._fs.open_input_stream(src) as fin, self.open_output_stream(dest, None) as fout:
            while chunk := fin.read(16 * 1024 * 1024):
                fout.write(chunk)

    def open_input_stream(self, path):
        return self._fs.open_input_stream(path)

    def open_input_file(self, path):
        return self._fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        import pyarrow as pa

        return pa.PythonFile(_AtomicWriter(path), mode="w")

    def open_append_stream(self, path, metadata):
        return self._fs.open_append_stream(path, metadata=metadata)


def atomic_local_filesystem() -> pafs.FileSystem:
    """The local filesystem for Tune's ``storage_filesystem``, with atomic whole-file writes (see the module doc)."""
    return pafs.PyFileSystem(AtomicLocalHandler())


def damaged_state_files(exp_path: Path) -> list[str]:
    """Every experiment-state file of ``exp_path`` that cannot be read back, with the reason.

    Checks the top-level files ``Tuner.restore`` reads: ``experiment_state-*.json`` (parsed as
    JSON), the other :data:`STATE_FILE_PATTERNS` (the searcher, search-generator, basic-variant and
    callback states: pickles, even those named ``*.json``; unpickled, so the classes they name must import) and ``tuner.pkl`` (only that it is not empty: it holds the
    trainable, whose unpickling needs Ray). Leftover temporary files of
    :class:`AtomicLocalHandler` (from a kill mid-write; the old file is intact beside them)
    are removed.

    Returns:
        ``"<file name>: <reason>"`` per unreadable file (empty list: all readable).
    """
    import cloudpickle

    problems = []
    for p in sorted(exp_path.iterdir()):
        if not p.is_file():
            continue
        if TMP_MARK in p.name:
            p.unlink(missing_ok=True)
            continue
        if not (_is_state_file(p.name) or p.name == "tuner.pkl"):
            continue
        size = p.stat().st_size
        if size == 0:
            problems.append(f"{p.name}: empty (0 bytes)")
            continue
        if p.name == "tuner.pkl":
            continue
        try:
            if p.name.startswith("experiment_state-"):  # the only JSON one: the others are pickles, whatever the suffix
                json.loads(p.read_text())
            else:
                with p.open("rb") as f:
                    cloudpickle.load(f)
        except Exception as exc:  # noqa: BLE001 - whatever stops us reading it stops Tuner.restore too
            problems.append(f"{p.name}: unreadable ({size} bytes; {type(exc).__name__}: {exc})")
    return problems


#: The experiment-level state files Tune writes on each save and reads on restore (``CKPT_FILE_TMPL`` of
#: ``TuneController``, ``Searcher``, ``SearchGenerator``, ``BasicVariantGenerator`` and ``CallbackList``).
STATE_FILE_PATTERNS = ("experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json",
                       "basic-variant-state-*.json", "callback-states-*.pkl")


def _is_state_file(name: str) -> bool:
    return not name.startswith(".") and any(fnmatch.fnmatch(name, p) for p in STATE_FILE_PATTERNS)


def take_snapshot(staging: Path, folder: Path, keep: int = 2) -> Path | None:
    """Copy the state files of ``staging`` into ``folder/<n+1>/`` (one rename makes it visible); keep the newest ``keep``.

    Returns:
        The new snapshot folder, or None when ``staging`` holds no ``experiment_state-*.json`` yet.
    """
    files = [f for f in staging.iterdir() if f.is_file() and _is_state_file(f.name)] if staging.is_dir() else []
    if not any(f.name.startswith("experiment_state-") for f in files):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    done = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    seq = done[-1] + 1 if done else 1
    tmp = folder / f".tmp-{seq:08d}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    for f in files:
        shutil.copy2(f, tmp / f.name)  # copy2: keeps modification times
    final = folder / f"{seq:08d}"
    os.rename(tmp, final)
    for old in done[:max(0, len(done) - keep + 1)]:
        shutil.rmtree(folder / f"{old:08d}", ignore_errors=True)
    for left in folder.glob(".tmp-*"):  # from a kill mid-snapshot
        if left != tmp:
            shutil.rmtree(left, ignore_errors=True)
    return final


def apply_latest_snapshot(folder: Path, exp_path: Path) -> Path | None:
    """Replace the state files of ``exp_path`` by the newest complete snapshot in ``folder``.

    Trial folders and checkpoints are left as they are: a snapshot's trials point at
    checkpoints the trials had already written to the experiment folder.

    Returns:
        The snapshot used, or None (no snapshot: ``exp_path`` is left untouched).
    """
    done = sorted(p for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    if not done or not exp_path.is_dir():
        return None
    latest = done[-1]
    for f in exp_path.iterdir():
        if f.is_file() and (_is_state_file(f.name) or TMP_MARK in f.name):
            f.unlink()
    for f in latest.iterdir():
        shutil.copy2(f, exp_path / f.name)
    return latest
