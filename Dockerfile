# syntax=docker/dockerfile:1
#
# The xattn image, used by the mlflow, ray-head and ray-worker services of docker-compose.yml.
# Two targets:
#
#   cpu  python:3.11-slim, the CPU build of torch from the PyTorch CPU index (a plain
#        `pip install torch` would pull a multi-GB CUDA build), then xattn[postgres]
#   gpu  a CUDA PyTorch image, flash-attn, then xattn[postgres]
#
#   docker build --target cpu -t xattn:cpu .
#   docker build --target gpu -t xattn:gpu .          # docker compose: XATTN_TARGET=gpu (default)
#
# Both add ray[default] (the dashboard, its health endpoints and the job server; xattn itself
# needs only ray[tune]) and mlflow[auth] (the basic-auth app of the tracking server), resolved
# in the same pip run as xattn so they stay at the versions xattn's own requirements allow.
# Every Ray node and the study driver run from one image, so their Python and Ray versions match.

ARG CPU_BASE=python:3.11-slim
# Any CUDA PyTorch image with torch>=2.3,<2.15 works; a -devel image has nvcc, which
# flash-attn needs when no prebuilt wheel matches its torch, CUDA and Python.
ARG GPU_BASE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-devel

# The sources the image installs; nothing else of the checkout goes in. pip builds a wheel of
# them (not an editable install), so xattn reads its report template and bundled specs as package
# data, as after `pip install` anywhere; the RUN lines below fail the build if they are missing.
# xattn/specs is a link to studies/: both are copied.
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY xattn /src/xattn
COPY studies /src/studies


FROM ${CPU_BASE} AS cpu
# torch first, from the CPU index; pip then keeps it since it meets xattn's torch>=2.3,<2.15.
ARG TORCH_SPEC="torch>=2.3,<2.15"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN pip install --index-url https://download.pytorch.org/whl/cpu "${TORCH_SPEC}"
COPY --from=source /src /opt/xattn/src
# The second line fails the build on an MLflow that cannot take its admin user from the
# environment (MLFLOW_AUTH_ADMIN_USERNAME/_PASSWORD), which is how docker-compose.yml sets it.
RUN pip install "/opt/xattn/src[postgres]" "ray[default]" "mlflow[auth]" \
 && python -c "from mlflow.environment_variables import MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD" \
 && python -c "import torch, ray, mlflow, optuna, psycopg2, xattn; print('torch', torch.__version__, 'ray', ray.__version__, 'mlflow', mlflow.__version__)" \
 && python -c "from importlib.resources import files; data = [files('xattn') / 'reporting/templates/report.html.j2', files('xattn') / 'specs/quickstart.yaml']; missing = [str(p) for p in data if not p.is_file()]; assert not missing, f'package data missing: {missing}'"
COPY docker/mlflow-basic-auth.ini /opt/xattn/docker/mlflow-basic-auth.ini
# An unprivileged user; the folders below become named volumes, which take their owner
# from the image the first time they are mounted.
RUN useradd --create-home xattn \
 && mkdir -p /workspace /data /mlartifacts \
 && cp -r /opt/xattn/src/studies /opt/xattn/studies \
 && chown -R xattn:xattn /workspace /data /mlartifacts /opt/xattn/studies
ENV XATTN_WORKSPACE=/workspace XATTN_DATA_CACHE=/data
USER xattn
WORKDIR /opt/xattn
CMD ["xattn", "--help"]


FROM ${GPU_BASE} AS gpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
# flash-attn builds against the torch already in the image (hence --no-build-isolation); its
# setup downloads a matching prebuilt wheel when there is one and compiles otherwise
# (MAX_JOBS bounds the memory a compile takes). Build with --build-arg FLASH_ATTN=0 to skip it:
# the model then uses PyTorch's scaled_dot_product_attention.
ARG FLASH_ATTN=1
ARG MAX_JOBS=4
RUN if [ "${FLASH_ATTN}" = "1" ]; then \
      pip install packaging ninja psutil wheel \
      && MAX_JOBS=${MAX_JOBS} pip install --no-build-isolation "flash-attn>=2.5" ; \
    fi
COPY --from=source /src /opt/xattn/src
RUN pip install "/opt/xattn/src[postgres]" "ray[default]" "mlflow[auth]" \
 && python -c "from mlflow.environment_variables import MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD" \
 && python -c "import torch, ray, mlflow, optuna, psycopg2, xattn; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'ray', ray.__version__, 'mlflow', mlflow.__version__)" \
 && python -c "from importlib.resources import files; data = [files('xattn') / 'reporting/templates/report.html.j2', files('xattn') / 'specs/quickstart.yaml']; missing = [str(p) for p in data if not p.is_file()]; assert not missing, f'package data missing: {missing}'"
COPY docker/mlflow-basic-auth.ini /opt/xattn/docker/mlflow-basic-auth.ini
RUN useradd --create-home xattn \
 && mkdir -p /workspace /data /mlartifacts \
 && cp -r /opt/xattn/src/studies /opt/xattn/studies \
 && chown -R xattn:xattn /workspace /data /mlartifacts /opt/xattn/studies
ENV XATTN_WORKSPACE=/workspace XATTN_DATA_CACHE=/data
USER xattn
WORKDIR /opt/xattn
CMD ["xattn", "--help"]
