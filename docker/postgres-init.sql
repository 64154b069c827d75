-- Runs once, when the postgres service initialises an empty data volume (files in
-- /docker-entrypoint-initdb.d run as POSTGRES_USER; the database POSTGRES_DB=mlflow already
-- exists by then). The role `xattn` owns every database.
--   mlflow       MLflow tracking store (experiments, runs, params, metrics, tags)
--   mlflow_auth  MLflow basic-auth users and permissions
--   optuna       Optuna storage (one Optuna study per xattn study run)
CREATE DATABASE mlflow_auth;
CREATE DATABASE optuna;
