"""Every MLflow tag name xattn writes or reads: what links a run to its study, trial and fold.

A name lives here once; dashboards/README.md lists them for users who filter runs in the UI.
"""

from __future__ import annotations

# What a run is.
STUDY = "xattn.study"  # on the experiment and on its study runs: the study's name
ROLE = "xattn.role"  # "study", "search", "final", "null" or "refit" (the deployable model)
FAMILY = "xattn.family"  # the model family a run trains (a study run: the study's own family)
ARM = "xattn.arm"  # a final run's comparison arm: its family, or "family:variant"
FOLD = "xattn.fold"  # the outer fold; WHOLE_DATA_FOLD for the deployable model's search and refit
SEED = "xattn.seed"
INNER_FOLD = "xattn.inner_fold"  # a search run's inner fold, when the spec asks for inner folds
CONFIGURATION = "xattn.configuration"  # the search configuration a trial belongs to (tuning.selection)
NULL_METHOD = "xattn.null_method"
NULL_INDEX = "xattn.null_index"

WHOLE_DATA_FOLD = "all"  # the FOLD of runs that see every region (no outer test fold)

# The identity of a trial in Ray Tune and Optuna.
RAY_TRIAL_ID = "xattn.ray_trial_id"
OPTUNA_TRIAL_NUMBER = "xattn.optuna_trial_number"
OPTUNA_STUDY = "xattn.optuna_study"

# How a trial went.
EPOCHS_RUN = "xattn.epochs_run"
SCHEDULER_STOPPED_AT = "xattn.scheduler_stopped_at"  # the epoch the scheduler (ASHA) stopped a trial at
FAILURE = "xattn.failure"  # why a trial failed, in one line
WORKER = "xattn.worker"  # HOST:PID of the Ray worker that ran a trial
CHECKPOINT_MISSING = "xattn.checkpoint_missing"
ORPHANED = "xattn.orphaned"  # a run whose trial no resumed Tune experiment knows
TRAINED_AS = "xattn.trained_as"  # a final run that is its fold's search winner: the search run's id
STACKED = "xattn.stacked"  # a null run trained in one stack with others (tuning.null_bundle): how many

# Where a run trained (a trial run), and what the cluster held (a study run).
DEVICE = "xattn.device"  # "cpu", or "cuda:0 (GPU name)"
GPU_IDS = "xattn.gpu_ids"  # the GPU ids Ray gave a trial, comma-separated ("" for none)
PRECISION = "xattn.precision"  # the floating-point precision a trial trained in
CLUSTER_RESOURCES = "xattn.cluster_resources"  # the Ray cluster's CPUs, GPUs and memory at the study's start
GPU_FALLBACK = "xattn.gpu_fallback"  # why trials that asked for GPUs trained on CPU

# What produced a run (study and trial runs alike; xattn.tracking.provenance): the driver's
# software, the spec and the data.
GIT_COMMIT = "xattn.git_commit"  # HEAD of xattn's checkout; "unknown" for an installed copy
GIT_DIRTY = "xattn.git_dirty"  # "true" when tracked files had uncommitted changes; "unknown" outside a checkout
VERSION_PREFIX = "xattn.version."  # + python, xattn, torch, ray, optuna, mlflow
SPEC_HASH = "xattn.spec_hash"  # the sha256 of the study's study.yaml artifact
DATA_HASH = "xattn.data_hash"  # one sha256 over every data file's (xattn.data.fingerprint)
DATA_FILES = "xattn.data_files"  # JSON: each data file's sha256, or the synthetic data's options
PROVENANCE = (GIT_COMMIT, GIT_DIRTY, SPEC_HASH, DATA_HASH, DATA_FILES)  # with every VERSION_PREFIX tag

# A study run's selection and lifecycle.
METRIC = "xattn.metric"  # the selection metric, best_<metric>
MODE = "xattn.mode"  # "min" or "max"
DRIVER = "xattn.driver"  # HOST:PID of the process driving a study run
RESUMED = "xattn.resumed"  # how many times a study run was resumed
COMPLETED = "xattn.completed"
BEST_RUN_ID = "xattn.best_run_id"
MODEL_VERSION = "xattn.model_version"
REGISTRY_ERROR = "xattn.registry_error"

# On a registered model version.
SELECTED_BY = "xattn.selected_by"
SHA256_PREFIX = "xattn.sha256."  # + the name of a file of the export's manifest

# MLflow's own tags that xattn sets.
RUN_NAME = "mlflow.runName"
PARENT_RUN = "mlflow.parentRunId"
NOTE = "mlflow.note.content"  # the description MLflow shows on an experiment or run
# The experiment kind MLflow 3 records per experiment: "custom_model_development" is the one
# its UI labels "Machine learning" (runs, not traces). 3.17.2's UI picks its view from a
# per-browser switch instead (dashboards/README.md); the tag is what its kind selector writes
# and what it reads with that switch turned off.
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
