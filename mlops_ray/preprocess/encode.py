"""Fit the encoding on the training split: exact statistics -> FeatureSpec -> Spark ML pipeline.

The statistics come from :mod:`.value_counts` (exact, so the same training rows give the same
spec on any partitioning or cluster). The Spark ML ``PipelineModel`` is then built from the spec,
so Spark and serving apply one set of numbers:

1. ``SQLTransformer``: per numeric feature ``<f>__scaled = (coalesce-null/NaN-to-impute(f) - mean) / std``
   (0.0 where std is 0), with every statistic written as an exact float64 literal; per categorical
   feature ``<f>__cat = CAST(f AS STRING)``, null -> ``__missing__``.
2. per categorical feature: ``StringIndexerModel.from_labels([*vocabulary, "__missing__"],
   handleInvalid="keep")`` (vocabulary values -> 0..k-1, null -> k, any other value -> k + 1)
   then ``OneHotEncoder(dropLast=False)``: a block of k + 2 slots whatever the scored rows hold.
3. ``VectorAssembler`` of the numeric block then the one-hot blocks -> ``features_vec``.

The vocabulary is the ``max_categories`` most frequent non-null training values, most frequent
first, ties broken by code point (the order Spark's ``StringIndexer(stringOrderType=
"frequencyDesc")`` uses), computed from exact counts.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

from mlops_ray.errors import DataError
from mlops_ray.preprocess.feature_spec import MISSING, RESERVED, CategoricalSpec, FeatureSpec
from mlops_ray.preprocess.value_counts import ValueCounts

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.ml import PipelineModel
    from pyspark.sql import DataFrame


def _scaled(name: str) -> str:
    return f"{name}__scaled"


def _cat(name: str) -> str:
    return f"{name}__cat"


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _double(x: float) -> str:
    """An exact float64 literal in Spark SQL (``repr`` round-trips; Spark parses it with Java's parseDouble)."""
    return f"CAST('{float(x)!r}' AS DOUBLE)"


def vocabularies(counts: ValueCounts, max_categories: int) -> dict[str, tuple[str, ...]]:
    """Per categorical feature, the ``max_categories`` most frequent non-null values (ties by code point)."""
    return {name: tuple(v for v in cc.values if v not in RESERVED)[:max_categories]
            for name, cc in counts.categorical.items()}


def feature_spec_from_counts(counts: ValueCounts, numeric: tuple[str, ...], categorical: tuple[str, ...],
                             max_categories: int, impute_strategy: str, timezone: str,
                             input_columns: tuple[str, ...], recipe: str = "flights",
                             input_schema: tuple[tuple[str, str, bool], ...] = (),
                             outcome_columns: tuple[str, ...] = ()) -> FeatureSpec:
    """The fitted transform from the training split's exact value counts.

    Imputation value: the exact median (type 7) or exact mean of the non-null values; scaling: exact mean
    and sample standard deviation of the values after imputation.

    Raises:
        DataError: the training split has no rows, or a numeric feature is null in every training row.
    """
    if counts.rows == 0:
        raise DataError("preprocess: the train split has no rows; check preprocess.split.train_months against "
                        "the data (and ingest.sample_fraction).")
    impute, mean, std = [], [], []
    for name in numeric:
        nc = counts.numeric[name]
        fill = nc.quantile(Fraction(1, 2)) if impute_strategy == "median" else nc.mean_std()[0]
        m, s = nc.mean_std(fill=fill)
        impute.append(fill)
        mean.append(m)
        std.append(s)
    vocab = vocabularies(counts, max_categories)
    return FeatureSpec(numeric=tuple(numeric), impute=tuple(impute), mean=tuple(mean), std=tuple(std),
                       categorical=tuple(CategoricalSpec(name=n, labels=vocab[n]) for n in categorical),
                       timezone=timezone, input_columns=input_columns, recipe=recipe, input_schema=input_schema,
                       outcome_columns=outcome_columns)


def encoder_statement(spec: FeatureSpec) -> str:
    """The SQLTransformer statement: imputed+scaled numeric columns and null-marked categorical columns."""
    cols = ["*"]
    for name, fill, mean, std in zip(spec.numeric, spec.impute, spec.mean, spec.std):
        x = f"CAST({_quote(name)} AS DOUBLE)"
        if std == 0.0:
            expr = "CAST(0.0 AS DOUBLE)"
        else:
            imputed = f"CASE WHEN {x} IS NULL OR isnan({x}) THEN {_double(fill)} ELSE {x} END"
            expr = f"(({imputed}) - {_double(mean)}) / {_double(std)}"
        cols.append(f"{expr} AS {_quote(_scaled(name))}")
    for c in spec.categorical:
        cols.append(f"coalesce(CAST({_quote(c.name)} AS STRING), '{MISSING}') AS {_quote(_cat(c.name))}")
    return f"SELECT {', '.join(cols)} FROM __THIS__"


def fit_encoder(train: "DataFrame", spec: FeatureSpec) -> "PipelineModel":
    """The Spark ML pipeline of ``spec``, fit on the training rows (derived features, pre-encoding).

    Raises:
        RuntimeError: Spark's one-hot width differs from the spec's (a Spark behaviour change).
    """
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import OneHotEncoder, OneHotEncoderModel, SQLTransformer, StringIndexerModel, VectorAssembler

    stages: list = [SQLTransformer(statement=encoder_statement(spec))]
    onehots = []
    for c in spec.categorical:
        stages.append(StringIndexerModel.from_labels([*c.labels, MISSING], inputCol=_cat(c.name),
                                                     outputCol=f"{c.name}__idx", handleInvalid="keep"))
        stages.append(OneHotEncoder(inputCol=f"{c.name}__idx", outputCol=f"{c.name}__ohe", dropLast=False,
                                    handleInvalid="error"))
        onehots.append(f"{c.name}__ohe")
    stages.append(VectorAssembler(inputCols=[*map(_scaled, spec.numeric), *onehots], outputCol="features_vec",
                                  handleInvalid="error"))
    model = Pipeline(stages=stages).fit(train)
    sizes = [int(s.categorySizes[0]) for s in model.stages if isinstance(s, OneHotEncoderModel)]
    expected = [c.width for c in spec.categorical]
    if sizes != expected:  # pragma: no cover - guards a Spark behaviour change
        raise RuntimeError(f"Spark's one-hot block widths are {sizes}, the feature spec's {expected}")
    return model
