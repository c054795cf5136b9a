"""The MLflow pyfunc for an exported adapter (models-from-code: no pickled Python objects).

``mlflow.pyfunc.load_model("models:/NAME@champion").predict(df)`` takes rows with the task's
fields and returns, per row, the predicted label, its index and every label's score — the same
code path as ``pipeline predict``.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class AdapterModel(PythonModel):
    def load_context(self, context) -> None:
        from pipeline.engine.predict import Predictor

        self.predictor = Predictor(context.artifacts["export_dir"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Predictions; a row the task cannot read (a field null, not text, missing) is an
        MlflowException naming the field and row: HTTP 400 over REST, without a stack trace."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            results = self.predictor.predict(model_input.to_dict(orient="records"))
        except ValueError as exc:  # DataError: the input's mistake, said in one line
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame(results)


mlflow.models.set_model(AdapterModel())
