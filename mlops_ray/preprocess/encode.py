"""Fit the Spark ML encoding pipeline on the training split and export it as a FeatureSpec.

Pipeline (pyspark.ml): Imputer (numeric) -> VectorAssembler -> StandardScaler (numeric block),
StringIndexer (frequencyDesc, handleInvalid='keep') -> OneHotEncoder (dropLast=False,
handleInvalid='keep') per categorical, then a VectorAssembler of all blocks. The
categorical vocabulary is capped to the ``max_categories`` most frequent training values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlops_ray.preprocess.feature_spec import MISSING, OTHER, CategoricalSpec, FeatureSpec

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.ml import PipelineModel
    from pyspark.sql import DataFrame


def _num(name: str) -> str:
    return f"{name}__num"


def _cat(name: str) -> str:
    return f"{name}__cat"


def capped_vocabularies(train: "DataFrame", categorical: tuple[str, ...], max_categories: int) -> dict[str, tuple[str, ...]]:
    """Per categorical feature, the ``max_categories`` most frequent training values (ties alphabetical)."""
    from pyspark.sql import functions as F

    vocab = {}
    for name in categorical:
        rows = (train.select(F.coalesce(F.col(name).cast("string"), F.lit(MISSING)).alias("v"))
                .groupBy("v").count().orderBy(F.desc("count"), F.asc("v")).limit(max_categories).collect())
        vocab[name] = tuple(r["v"] for r in rows)
    return vocab


def with_encoder_inputs(df: "DataFrame", numeric: tuple[str, ...], vocab: dict[str, tuple[str, ...]]) -> "DataFrame":
    """Add the encoder's input columns: ``<f>__num`` (double) and ``<f>__cat`` (capped string)."""
    from pyspark.sql import functions as F

    for name in numeric:
        df = df.withColumn(_num(name), F.col(name).cast("double"))
    for name, kept in vocab.items():
        v = F.coalesce(F.col(name).cast("string"), F.lit(MISSING))
        df = df.withColumn(_cat(name), F.when(v.isin(list(kept)) | (v == F.lit(MISSING)), v).otherwise(F.lit(OTHER)))
    return df


def fit_encoder(train: "DataFrame", numeric: tuple[str, ...], categorical: tuple[str, ...],
                impute_strategy: str) -> "PipelineModel":
    """Fit the Spark ML pipeline on rows already passed through :func:`with_encoder_inputs`."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import Imputer, OneHotEncoder, StandardScaler, StringIndexer, VectorAssembler

    stages = []
    imputed = [f"{_num(n)}__imp" for n in numeric]
    stages.append(Imputer(inputCols=[_num(n) for n in numeric], outputCols=imputed, strategy=impute_strategy))
    stages.append(VectorAssembler(inputCols=imputed, outputCol="numeric_vec", handleInvalid="keep"))
    stages.append(StandardScaler(inputCol="numeric_vec", outputCol="numeric_scaled", withMean=True, withStd=True))
    onehots = []
    for name in categorical:
        stages.append(StringIndexer(inputCol=_cat(name), outputCol=f"{name}__idx", handleInvalid="keep",
                                    stringOrderType="frequencyDesc"))
        stages.append(OneHotEncoder(inputCol=f"{name}__idx", outputCol=f"{name}__ohe", dropLast=False,
                                    handleInvalid="keep"))
        onehots.append(f"{name}__ohe")
    stages.append(VectorAssembler(inputCols=["numeric_scaled", *onehots], outputCol="features_vec"))
    return Pipeline(stages=stages).fit(train)


def feature_spec_from_pipeline(model: "PipelineModel", numeric: tuple[str, ...], vocab: dict[str, tuple[str, ...]],
                               timezone: str, input_columns: tuple[str, ...]) -> FeatureSpec:
    """Read the fitted statistics out of the Spark pipeline into a Spark-free FeatureSpec."""
    from pyspark.ml.feature import ImputerModel, OneHotEncoderModel, StandardScalerModel, StringIndexerModel

    stages = model.stages
    imputer = next(s for s in stages if isinstance(s, ImputerModel))
    surrogate = imputer.surrogateDF.collect()[0].asDict()
    scaler = next(s for s in stages if isinstance(s, StandardScalerModel))
    indexers = [s for s in stages if isinstance(s, StringIndexerModel)]
    encoders = [s for s in stages if isinstance(s, OneHotEncoderModel)]
    cats = []
    for name, idx, ohe in zip(vocab, indexers, encoders):
        labels = tuple(idx.labelsArray[0])
        width = int(ohe.categorySizes[0]) + (1 if ohe.getHandleInvalid() == "keep" else 0)
        if width < len(labels) + 1:  # pragma: no cover - guards a Spark behaviour change
            raise RuntimeError(f"one-hot width for '{name}' is {width}, expected at least {len(labels) + 1}")
        cats.append(CategoricalSpec(name=name, kept=vocab[name], labels=labels, width=width))
    return FeatureSpec(
        numeric=tuple(numeric),
        impute=tuple(float(surrogate[_num(n)]) for n in numeric),
        mean=tuple(float(v) for v in scaler.mean.toArray()),
        std=tuple(float(v) for v in scaler.std.toArray()),
        categorical=tuple(cats),
        timezone=timezone,
        input_columns=input_columns,
    )
