"""MLflow: the run tracker, the model registry, the pyfunc model and the plots it logs."""
