"""MLflow "models from code" definition of a registered version as a pyfunc model.

MLflow loads this file (no pickle) when a version is opened with ``mlflow.pyfunc.load_model``
or ``mlflow models predict/serve``. Input: a DataFrame of raw flight records (the serving input
schema); output: a DataFrame with ``probability`` and ``label``. The feature spec, lookups and
the skops model travel as the ``model_dir`` artifact.
"""

import mlflow
import pandas as pd


class FlightDelayPyfunc(mlflow.pyfunc.PythonModel):
    """Raw records in, P(arrival delay > 15 min) and the thresholded label out."""

    def load_context(self, context):
        from mlops_ray.serve.model import ServedModel

        self.model = ServedModel.from_dir(context.artifacts["model_dir"], name="pyfunc", version="", alias=None)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        proba = self.model.predict_proba(model_input)
        return pd.DataFrame({"probability": proba, "label": (proba >= self.model.threshold).astype(int)})


mlflow.models.set_model(FlightDelayPyfunc())
