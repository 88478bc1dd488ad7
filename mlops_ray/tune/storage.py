"""Where a Tune experiment keeps its state, written so that a killed process never leaves a half-written file.

Ray Tune writes the experiment state (trial statuses, the searcher's and callbacks' pickles)
to a staging folder on the driver and copies it to the experiment folder every few seconds
from a background thread (``pyarrow.fs.copy_files``). That copy truncates each destination
file, then writes it: a driver killed in between (``kill -9``, a lost machine) leaves an
empty or partial ``searcher-state-*.pkl`` or ``experiment_state-*.json``. ``Tuner.restore``
then fails on it ("Failed to restore the run state. EOFError: Ran out of input"), logs it
and carries on with a half-restored searcher whose concurrency limiter still counts the
dead run's trials, so the continued experiment waits forever (seen in CI: a 400-s timeout).

Two defences, both used by :func:`mlops_ray.tune.run_tune`:

* :func:`atomic_local_filesystem`: the experiment folder's filesystem for Tune
  (``RunConfig(storage_filesystem=...)``): every file is written to a temporary name beside
  it and renamed over the old one on close (``os.replace``, atomic on POSIX), so a reader
  sees the old file or the new one, never a mix. Not fsync'ed: it guards against a killed
  process, not a power cut.
* :func:`damaged_state_files`: checks every state file of an interrupted experiment before it
  is continued (experiments written before this module, or damaged by other means).
"""

from __future__ import annotations

import json
import os
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
    JSON), the searcher, search-generator and callback states ``*.pkl`` (unpickled, so the
    classes they name must import) and ``tuner.pkl`` (only that it is not empty: it holds the
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
        if not (p.suffix == ".pkl" or (p.suffix == ".json" and p.name.startswith("experiment_state"))):
            continue
        size = p.stat().st_size
        if size == 0:
            problems.append(f"{p.name}: empty (0 bytes)")
            continue
        if p.name == "tuner.pkl":
            continue
        try:
            if p.suffix == ".json":
                json.loads(p.read_text())
            else:
                with p.open("rb") as f:
                    cloudpickle.load(f)
        except Exception as exc:  # noqa: BLE001 - whatever stops us reading it stops Tuner.restore too
            problems.append(f"{p.name}: unreadable ({size} bytes; {type(exc).__name__}: {exc})")
    return problems
