"""Files through Spark: CSV, Parquet and JSON with a declared schema or opt-in inference; bad lines kept."""

from __future__ import annotations

import json

import pytest

from mlops_ray.config import FileSourceConfig
from mlops_ray.errors import ConfigError, DataError
from mlops_ray.ingest.files import files_frame, is_local_path, local_files, local_files_digest

pytestmark = pytest.mark.timeout(120)

GOOD_AND_BAD_CSV = """id,name,score
1,ann,2.5
2,"unbalanced quote,3.0
3,bob,4.0,extra field
4,short row
5,eve,NA
6,dan,not a number
"""


def file_source(path, fmt, **kw) -> FileSourceConfig:
    return FileSourceConfig(type="file", path=str(path), format=fmt, **kw)


def by_id(df) -> dict:
    return {r["id"]: r.asDict() for r in df.collect()}


def test_csv_with_a_declared_schema_keeps_every_malformed_line(spark, tmp_path):
    (tmp_path / "t.csv").write_text(GOOD_AND_BAD_CSV)
    src = file_source(tmp_path / "t.csv", "csv", schema_ddl="id INT, name STRING, score DOUBLE", null_value="NA")
    df = files_frame(spark, "t", src)
    assert df.dtypes == [("id", "int"), ("name", "string"), ("score", "double"), ("_corrupt_record", "string")]
    rows = by_id(df)
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]  # nothing dropped
    corrupt = {i: r["_corrupt_record"] for i, r in rows.items() if r["_corrupt_record"] is not None}
    assert corrupt == {2: '2,"unbalanced quote,3.0', 3: "3,bob,4.0,extra field", 4: "4,short row",
                       6: "6,dan,not a number"}
    assert rows[1] == {"id": 1, "name": "ann", "score": 2.5, "_corrupt_record": None}
    assert rows[5]["score"] is None and rows[5]["_corrupt_record"] is None  # NA is null, not malformed


def test_csv_without_a_schema_reads_strings_and_inference_is_opt_in(spark, tmp_path):
    (tmp_path / "t.csv").write_text("id,score\n1,2.5\n2,3.5\n")
    plain = files_frame(spark, "t", file_source(tmp_path / "t.csv", "csv"))
    inferred = files_frame(spark, "t", file_source(tmp_path / "t.csv", "csv", infer_schema=True))
    assert plain.dtypes == [("id", "string"), ("score", "string"), ("_corrupt_record", "string")]
    assert inferred.dtypes == [("id", "int"), ("score", "double"), ("_corrupt_record", "string")]
    assert sorted(r["score"] for r in inferred.collect()) == [2.5, 3.5]


def test_csv_options_delimiter_and_no_header(spark, tmp_path):
    (tmp_path / "t.tsv").write_text("1;a\n2;b\n")
    src = file_source(tmp_path / "t.tsv", "csv", header=False, delimiter=";", schema_ddl="id INT, name STRING")
    assert {k: v["name"] for k, v in by_id(files_frame(spark, "t", src)).items()} == {1: "a", 2: "b"}


def test_json_lines_with_a_declared_schema_keep_malformed_lines(spark, tmp_path):
    lines = [json.dumps({"id": 1, "name": "ann"}), "{not json", json.dumps({"id": "x", "name": "bob"})]
    (tmp_path / "t.json").write_text("\n".join(lines) + "\n")
    df = files_frame(spark, "t", file_source(tmp_path / "t.json", "json", schema_ddl="id INT, name STRING"))
    got = sorted((r["id"] or 0, r["_corrupt_record"] or "") for r in df.collect())
    assert got == [(0, lines[2]), (0, "{not json"), (1, "")]


def test_json_inference_is_opt_in(spark, tmp_path):
    (tmp_path / "t.json").write_text('{"id": 1, "x": 2.5}\n{"id": 2}\n')
    assert dict(files_frame(spark, "t", file_source(tmp_path / "t.json", "json")).dtypes) == {
        "id": "string", "x": "string", "_corrupt_record": "string"}
    df = files_frame(spark, "t", file_source(tmp_path / "t.json", "json", infer_schema=True))
    assert df.dtypes == [("id", "bigint"), ("x", "double"), ("_corrupt_record", "string")]


def test_multi_line_json_documents(spark, tmp_path):
    (tmp_path / "t.json").write_text(json.dumps([{"id": 1}, {"id": 2}], indent=2))
    df = files_frame(spark, "t", file_source(tmp_path / "t.json", "json", multi_line=True, schema_ddl="id INT"))
    assert sorted(r["id"] for r in df.collect()) == [1, 2]


def test_parquet_folder_by_file_uri_with_and_without_a_declared_schema(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "pq").mkdir()
    table = pa.table({"id": pa.array([1, 2], pa.int32()), "name": ["a", "b"], "score": [0.5, None]})
    pq.write_table(table, tmp_path / "pq" / "part-0.parquet")
    uri = (tmp_path / "pq").as_uri()
    assert uri.startswith("file:///")
    df = files_frame(spark, "t", file_source(uri, "parquet"))
    assert df.dtypes == [("id", "int"), ("name", "string"), ("score", "double"), ("_corrupt_record", "string")]
    narrowed = files_frame(spark, "t", file_source(uri, "parquet", schema_ddl="id INT, score DOUBLE"))
    assert sorted((r["id"], r["score"]) for r in narrowed.collect()) == [(1, 0.5), (2, None)]


def test_a_missing_path_names_the_table_and_the_field(spark, tmp_path):
    src = file_source(tmp_path / "absent.csv", "csv", schema_ddl="a INT")
    with pytest.raises(DataError, match=r"table 'weather': csv path .*absent\.csv does not exist.*"
                                        r"ingest\.tables\.weather\.path"):
        files_frame(spark, "weather", src)


def test_a_bad_schema_ddl_is_a_config_error(spark, tmp_path):
    (tmp_path / "t.csv").write_text("a\n1\n")
    with pytest.raises(ConfigError, match=r"ingest\.tables\.t\.schema_ddl is not a valid Spark DDL schema "
                                          r"\(.*\); got 'a INTT,'"):
        files_frame(spark, "t", file_source(tmp_path / "t.csv", "csv", schema_ddl="a INTT,"))


def test_local_files_are_digested_by_content_and_name(tmp_path):
    d = tmp_path / "daily"
    d.mkdir()
    (d / "2013-01-01.csv").write_text("a\n1\n")
    (d / "_SUCCESS").write_text("")  # Spark's marker: skipped, as Spark skips it
    first = local_files_digest(str(d))
    assert [p.name for p in local_files(str(d))] == ["2013-01-01.csv"]
    assert local_files_digest(d.as_uri()) == first
    (d / "2013-01-02.csv").write_text("a\n2\n")
    second = local_files_digest(str(d))
    assert second != first
    assert local_files_digest(str(d / "*.csv")) != first
    (d / "2013-01-02.csv").write_text("a\n3\n")
    assert local_files_digest(str(d)) != second
    with pytest.raises(DataError, match=r"no file matches .*nothing-\*\.csv; expected an existing file"):
        local_files_digest(str(tmp_path / "nothing-*.csv"))


@pytest.mark.parametrize("path, local", [("/data/x.csv", True), ("rel/x.csv", True), ("file:///data/x", True),
                                         ("s3a://bucket/x.csv", False), ("hdfs://nn:8020/x", False)])
def test_which_paths_are_local(path, local):
    assert is_local_path(path) is local
