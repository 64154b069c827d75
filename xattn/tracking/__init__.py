"""MLflow: the workspace and stores, and the driver-side trial logger."""
