"""A column whose type changes between daily files: an error naming it, or a safe cast to a declared schema."""

from __future__ import annotations

import pytest

from mlops_ray.config import FileSourceConfig
from mlops_ray.errors import DataError
from mlops_ray.ingest.files import files_frame, parquet_schema_groups

pytestmark = pytest.mark.timeout(300)


def _daily_parquet(folder, days: dict[str, dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    for day, columns in days.items():
        pq.write_table(pa.table(columns), folder / f"{day}.parquet")


def _ints(*v):
    import pyarrow as pa

    return pa.array(v, pa.int32())


def src(path, fmt, **kw) -> FileSourceConfig:
    return FileSourceConfig(type="file", path=str(path), format=fmt, **kw)


@pytest.fixture
def drifting(tmp_path):
    """Three daily Parquet files: dep_delay is int, then string (with 'N/A'), then double (with 1.5)."""
    import pyarrow as pa

    folder = tmp_path / "daily"
    _daily_parquet(folder, {"2013-01-01": {"id": _ints(1, 2), "dep_delay": _ints(5, -3)},
                            "2013-01-02": {"id": _ints(3, 4), "dep_delay": pa.array(["12", "N/A"])},
                            "2013-01-03": {"id": _ints(5, 6), "dep_delay": pa.array([2.0, 1.5])}})
    return folder


def test_a_type_change_between_parquet_files_names_the_column_both_types_and_the_file(spark, drifting):
    with pytest.raises(DataError, match=rf"table 'flights': column 'dep_delay' changes type between files: double "
                                        rf"in {drifting}/2013-01-03\.parquet, but int in {drifting}/2013-01-01\.parquet"
                                        rf"; string in {drifting}/2013-01-02\.parquet\. Expected one type per "
                                        rf"column\. Declare ingest\.tables\.flights\.schema_ddl"):
        files_frame(spark, "flights", src(drifting, "parquet"))


def test_a_declared_schema_casts_every_file_safely_and_flags_what_did_not_survive(spark, drifting, tmp_path):
    df = files_frame(spark, "flights", src(drifting, "parquet", schema_ddl="id INT, dep_delay INT"))
    assert df.dtypes == [("id", "int"), ("dep_delay", "int"), ("_corrupt_record", "string")]
    rows = {r["id"]: (r["dep_delay"], r["_corrupt_record"]) for r in df.collect()}
    assert rows == {1: (5, None), 2: (-3, None), 3: (12, None), 4: (None, '{"id":4,"dep_delay":"N/A"}'),
                    5: (2, None), 6: (None, '{"id":6,"dep_delay":1.5}')}  # 1.5 is not an int: flagged, not cut

    from tests.validate.conftest import quarantine_by_id, validate, validate_config

    out = tmp_path / "ingest"
    df.write.parquet(str(out / "flights"))
    res = validate(spark, tmp_path, str(out), validate_config(rule_set="none", max_quarantine_share=0.5))
    assert quarantine_by_id(res) == {4: ("malformed_line", None, '{"id":4,"dep_delay":"N/A"}'),
                                     6: ("malformed_line", None, '{"id":6,"dep_delay":1.5}')}
    assert (res.rows_in, res.rows_valid) == (6, 4)


def test_spark_footers_give_the_same_groups_as_pyarrow(spark, drifting, tmp_path):
    """The path taken for remote URIs (Spark merges footers, file by file when that fails) groups alike."""
    files = sorted(spark.read.parquet(str(drifting / "2013-01-01.parquet")).inputFiles()
                   + spark.read.parquet(str(drifting / "2013-01-02.parquet")).inputFiles())

    def simple(groups):
        return sorted((s.simpleString(), sorted(fs)) for s, fs in groups)

    assert simple(parquet_schema_groups(spark, files, local=False)) == simple(
        parquet_schema_groups(spark, files, local=True))
    assert len(parquet_schema_groups(spark, files, local=False)) == 2
    same = tmp_path / "same"
    _daily_parquet(same, {"a": {"id": _ints(1)}, "b": {"id": _ints(2)}})
    files = spark.read.parquet(str(same)).inputFiles()
    assert [s.simpleString() for s, _ in parquet_schema_groups(spark, files, local=False)] == ["struct<id:int>"]


@pytest.mark.parametrize("fmt, day1, day2, outcome", [
    ("csv", "id,x\n1,10\n2,20\n", "id,x\n3,30\n4,N/A\n",
     r"column 'x' changes type between files: int in .*/a\.csv, but string in .*/b\.csv"),
    ("json", '{"id": 1, "x": 10}\n', '{"id": 2, "x": "ten"}\n',
     r"column 'x' changes type between files: bigint in .*/a\.json, but string in .*/b\.json"),
    ("csv", "id,x\n1,10\n", "id,x\n2,2.5\n", {"x": "double"}),  # numbers widen safely
    ("csv", "id,x\n1,10\n", "id,x\n2,\n", {"x": "int"}),  # a file whose column is all null does not count
])
def test_inferred_types_are_checked_file_by_file(spark, tmp_path, fmt, day1, day2, outcome):
    folder = tmp_path / "daily"
    folder.mkdir()
    (folder / f"a.{fmt}").write_text(day1)
    (folder / f"b.{fmt}").write_text(day2)
    if isinstance(outcome, str):
        with pytest.raises(DataError, match=outcome):
            files_frame(spark, "flights", src(folder, fmt, infer_schema=True))
    else:
        df = files_frame(spark, "flights", src(folder, fmt, infer_schema=True))
        assert {k: v for k, v in df.dtypes if k in outcome} == outcome and df.count() == 2


@pytest.mark.parametrize("fmt, text", [("csv", "id,x\n"), ("json", ""), ("csv", "")])
def test_a_file_table_without_rows_is_refused(spark, tmp_path, fmt, text):
    (tmp_path / f"t.{fmt}").write_text(text)
    with pytest.raises(DataError, match=rf"table 'weather': the {fmt} source .*t\.{fmt} has no rows \(empty or "
                                        r"header-only files\); expected at least one\. Fix ingest\.tables\.weather"):
        files_frame(spark, "weather", src(tmp_path / f"t.{fmt}", fmt, schema_ddl="id INT, x INT"))
