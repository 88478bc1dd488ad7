"""Pre-flight: an empty main table is refused before any stage runs, for each local file format."""

from __future__ import annotations

import pandas as pd
import pytest

from mlops_ray.config import config_from_mapping
from mlops_ray.errors import DataError
from mlops_ray.ingest.preflight import check_inputs, file_source_has_rows


def _ingest(path, fmt, **kw):
    return config_from_mapping({"ingest": {"source": "tables", "main_table": "loans", "tables": {"loans": {
        "type": "file", "path": str(path), "format": fmt, **kw}}},
        "preprocess": {"recipe": "table", "label_column": "y", "positive_labels": [1], "numeric_features": ["x"]},
        "validate": {"rule_set": "none"}, "evaluate": {"slice_columns": []}}).ingest


@pytest.mark.parametrize(("name", "content", "fmt", "kw", "has_rows"), [
    ("a.csv", "x,y\n", "csv", {}, False),                 # header only
    ("a.csv", "x,y\n\n  \n", "csv", {}, False),           # header and blank lines
    ("a.csv", "", "csv", {}, False),                      # zero bytes
    ("a.csv", "x,y\n1,0\n", "csv", {}, True),
    ("a.csv", "1,0\n", "csv", {"header": False}, True),
    ("a.json", "\n\n", "json", {}, False),                # JSON lines without a record
    ("a.json", '{"x": 1, "y": 0}\n', "json", {}, True),
    ("a.json", "[]", "json", {"multi_line": True}, False),
    ("a.json", '[{"x": 1}]', "json", {"multi_line": True}, True),
    ("a.json", "[{", "json", {"multi_line": True}, True),  # malformed: ingest quarantines it, with a reason
])
def test_text_formats(tmp_path, name, content, fmt, kw, has_rows):
    (tmp_path / name).write_text(content)
    cfg = _ingest(tmp_path / name, fmt, **kw)
    assert file_source_has_rows("loans", cfg.tables["loans"]) is has_rows
    if has_rows:
        check_inputs(cfg)
    else:
        with pytest.raises(DataError, match=rf"pre-flight: the main table 'loans' has no rows: its {fmt} source "
                                            rf".*{name} holds only empty.* No stage was run\. Fix "
                                            r"ingest\.tables\.loans\.path"):
            check_inputs(cfg)


def test_parquet_folder_counts_rows_from_the_footer(tmp_path):
    folder = tmp_path / "loans"
    folder.mkdir()
    pd.DataFrame({"x": pd.Series([], dtype="float64")}).to_parquet(folder / "part-0.parquet")
    (folder / "_SUCCESS").write_text("")
    cfg = _ingest(folder, "parquet")
    with pytest.raises(DataError, match=r"has no rows: its parquet source"):
        check_inputs(cfg)
    pd.DataFrame({"x": [1.0]}).to_parquet(folder / "part-1.parquet")
    assert file_source_has_rows("loans", cfg.tables["loans"]) is True


def test_what_cannot_be_told_cheaply_is_left_to_ingest(tmp_path):
    import gzip

    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(b"x,y\n"))
    cfg = _ingest(tmp_path / "a.csv.gz", "csv")
    assert file_source_has_rows("loans", cfg.tables["loans"]) is None
    check_inputs(cfg)  # no error here: ingest reads it and refuses it (tests/validate/test_quarantine.py)
    remote = _ingest("s3a://bucket/loans/", "csv")
    assert file_source_has_rows("loans", remote.tables["loans"]) is None


def test_a_path_matching_nothing_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"no file matches .*nothing\*\.csv"):
        check_inputs(_ingest(tmp_path / "nothing*.csv", "csv"))
