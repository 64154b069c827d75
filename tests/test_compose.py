"""Static checks of the docker compose deployment: docker-compose.yml, the Dockerfile, .env.example.

Docker does not run where the tests run, so these read the files: every service has an image,
a command and a health check, state lives on named volumes, published ports bind to 127.0.0.1
unless .env says otherwise, secrets come from .env, and the commands and flags exist in the
installed mlflow and ray.
"""

from __future__ import annotations

import configparser
import fnmatch
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "docker" / "compose.cpu.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"

SERVICES = {"postgres", "mlflow", "ray-head", "ray-worker", "optuna-dashboard"}
# Services that run an upstream image with its own entry point; the rest run our Dockerfile.
UPSTREAM = {"postgres", "optuna-dashboard"}
# Where each service keeps state that must survive `docker compose down` and rebuilds.
STATE = {
    ("postgres", "/var/lib/postgresql/data"),
    ("mlflow", "/mlartifacts"),
    ("ray-head", "/workspace"),
    ("ray-worker", "/workspace"),
    ("ray-head", "/data"),
    ("ray-worker", "/data"),
}
SECRETS = {
    "POSTGRES_PASSWORD",
    "MLFLOW_ADMIN_USERNAME",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "RAY_AUTH_TOKEN",
}
DATABASES = {"mlflow", "mlflow_auth", "optuna"}

# Compose interpolation: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error},
# ${NAME:+alt}, ${NAME+alt}, $NAME; $$ is a literal dollar.
VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op") or "", match.group("arg") or ""
        value = env.get(name)
        unset_or_empty = not value
        missing = unset_or_empty if op.startswith(":") else value is None
        if op.endswith("-"):
            return arg if missing else value
        if op.endswith("?"):
            if missing:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op.endswith("+"):
            return "" if missing else arg
        return value or ""

    return VARIABLE.sub(replace, text)


def variables(text: str) -> dict[str, set[str]]:
    """Each variable the text uses, with the operators it is used with ('' for plain)."""
    found: dict[str, set[str]] = {}
    for match in VARIABLE.finditer(text):
        name = match.group("name") or match.group("bare")
        if name:
            found.setdefault(name, set()).add(match.group("op") or "")
    return found


def resolve(value, env: dict[str, str]):
    """The compose document with every string interpolated, as compose does before using it."""
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, list):
        return [resolve(item, env) for item in value]
    if isinstance(value, dict):
        return {key: resolve(item, env) for key, item in value.items()}
    return value


def env_example() -> dict[str, str]:
    """Every NAME=value line of .env.example, commented out or not: name -> (value, active)."""
    entries = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            entries.setdefault(match.group(2), (match.group(3), match.group(1) is None))
    return entries


def fake_env() -> dict[str, str]:
    """.env.example's active lines with its empty secrets filled in: a .env a user could write."""
    env = {name: value for name, (value, active) in env_example().items() if active}
    for name in SECRETS:
        env[name] = env.get(name) or f"{name.lower()}-0123456789abcdef"
    return env


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    """docker-compose.yml as compose sees it with no .env but the secrets: every default applies."""
    return resolve(raw, {name: f"{name.lower()}-0123456789abcdef" for name in SECRETS})


def command_words(service: dict) -> list[str]:
    command = service.get("command")
    if isinstance(command, str):
        return command.split()
    return [str(word) for word in command or []]


def long_flags(words: list[str]) -> list[str]:
    return [word.split("=", 1)[0] for word in words if word.startswith("--")]


def named_volume_mounts(service: dict) -> dict[str, str]:
    """target -> source of the service's named-volume mounts (not bind mounts)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type", "volume") == "volume":
                mounts[volume["target"]] = volume["source"]
            continue
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/", "~")):
            mounts[target] = source
    return mounts


def dockerfile_stages() -> dict[str, list[str]]:
    """stage name -> its instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n(?:\s*#[^\n]*\n)*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = match.group(1) or f"stage{len(stages)}"
            stages[current] = []
        if current is not None:
            stages[current].append(line)
    return stages


def run_help(script: str, *args: str) -> str:
    executable = Path(sys.executable).parent / script
    path = str(executable) if executable.exists() else shutil.which(script)
    assert path, f"{script} is not installed"
    done = subprocess.run([path, *args, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# --- every service ----------------------------------------------------------------------------


def test_the_deployment_has_its_services_and_volumes(raw):
    assert set(raw["services"]) == SERVICES
    assert set(raw["volumes"]) >= {"postgres-data", "mlflow-artifacts", "xattn-workspace", "xattn-data"}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_an_image_or_a_build_and_an_explicit_command(compose, name):
    service = compose["services"][name]
    assert service.get("image") or service.get("build"), f"{name}: neither image nor build"
    assert command_words(service), f"{name}: no command (the image's default is not documented here)"
    if name in UPSTREAM:
        assert "build" not in service and ":" in service["image"], f"{name}: upstream image without a tag"
    else:
        assert service["build"]["context"] == "." and service["image"].startswith("xattn:")
    assert service.get("restart") == "unless-stopped", f"{name}: does not come back after a reboot"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck(compose, name):
    check = compose["services"][name].get("healthcheck")
    assert check and not check.get("disable"), f"{name}: no health check"
    test = check["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, test
    for key in ("interval", "timeout", "retries"):
        assert key in check, f"{name}: healthcheck without {key}"


def test_services_wait_for_what_they_need_to_be_healthy(compose):
    needs = {
        "mlflow": {"postgres"},
        "optuna-dashboard": {"postgres"},
        "ray-head": {"mlflow"},
        "ray-worker": {"ray-head"},
    }
    for name, wanted in needs.items():
        depends = compose["services"][name].get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions starts before its dependencies are up"
        assert set(depends) == wanted, name
        for dependency, how in depends.items():
            assert how.get("condition") == "service_healthy", f"{name} -> {dependency}"
            assert compose["services"][dependency].get("healthcheck"), dependency


def test_the_healthchecks_probe_the_right_ports(compose):
    services = compose["services"]
    assert services["postgres"]["healthcheck"]["test"][1] == "pg_isready"
    assert "-h" in services["postgres"]["healthcheck"]["test"]  # TCP, not the socket of the init server
    probes = {
        "mlflow": "http://127.0.0.1:5000/health",
        "ray-head": "http://127.0.0.1:8265/api/gcs_healthz",
        "ray-worker": "http://127.0.0.1:52365/api/local_raylet_healthz",
        "optuna-dashboard": "http://127.0.0.1:8080/",
    }
    for name, url in probes.items():
        assert any(url in word for word in services[name]["healthcheck"]["test"]), name
    mlflow_port = command_words(services["mlflow"])[command_words(services["mlflow"]).index("--port") + 1]
    assert mlflow_port == "5000"
    assert "--dashboard-port=8265" in command_words(services["ray-head"])


# --- state and ports --------------------------------------------------------------------------


def test_state_lives_on_named_volumes_declared_at_top_level(raw, compose):
    declared = set(raw.get("volumes") or {})
    for name, target in STATE:
        mounts = named_volume_mounts(compose["services"][name])
        assert target in mounts, f"{name}: {target} is not on a named volume"
        assert mounts[target] in declared, f"{name}: volume {mounts[target]} is not declared"
    used = {source for service in compose["services"].values() for source in named_volume_mounts(service).values()}
    assert used <= declared and declared <= used, (used, declared)
    # the artifacts the server writes are the ones on the volume
    words = command_words(compose["services"]["mlflow"])
    assert words[words.index("--artifacts-destination") + 1] == "/mlartifacts"
    assert "--serve-artifacts" in words


def test_ray_nodes_share_the_workspace_and_data_volumes(compose):
    head = named_volume_mounts(compose["services"]["ray-head"])
    worker = named_volume_mounts(compose["services"]["ray-worker"])
    assert head["/workspace"] == worker["/workspace"] and head["/data"] == worker["/data"]


def published_ports(service: dict) -> list[tuple[str, str, str]]:
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append((port.get("host_ip", ""), str(port.get("published", "")), str(port["target"])))
            continue
        parts = str(port).split(":")
        assert len(parts) == 3, f"{port!r}: no host address, so it binds every interface"
        ports.append(tuple(parts))
    return ports


def test_every_published_port_binds_to_loopback_by_default(raw, compose):
    seen = []
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", name
        for host_ip, published, target in published_ports(service):
            assert host_ip == "127.0.0.1", f"{name}: {host_ip}:{published}:{target}"
            seen.append((name, published, target))
    assert sorted(seen) == sorted(
        [
            ("postgres", "5432", "5432"),
            ("mlflow", "5000", "5000"),
            ("ray-head", "8265", "8265"),
            ("optuna-dashboard", "8080", "8080"),
        ]
    )
    # XATTN_BIND moves every one of them, and nothing else does
    shared = resolve(raw, fake_env() | {"XATTN_BIND": "0.0.0.0"})
    for name, service in shared["services"].items():
        for host_ip, _, _ in published_ports(service):
            assert host_ip == "0.0.0.0", name


def test_the_mlflow_server_accepts_the_host_names_its_clients_use(compose):
    words = command_words(compose["services"]["mlflow"])
    allowed = words[words.index("--allowed-hosts") + 1].split(",")
    driver = urlsplit(compose["services"]["ray-head"]["environment"]["MLFLOW_TRACKING_URI"])
    for host in (driver.netloc, "127.0.0.1:5000", "localhost:5000"):
        assert any(fnmatch.fnmatch(host, pattern) for pattern in allowed), (host, allowed)
    assert not any(fnmatch.fnmatch("attacker.example:5000", pattern) for pattern in allowed)


# --- GPUs and images ----------------------------------------------------------------------------


def test_the_ray_worker_reserves_the_gpus(compose):
    devices = compose["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        device.get("driver") == "nvidia"
        and "gpu" in device.get("capabilities", [])
        and device.get("count") in ("all", 1)
        for device in devices
    ), devices
    for name in SERVICES - {"ray-worker"}:
        assert "devices" not in str(compose["services"][name].get("deploy", {})), name


def test_the_cpu_override_drops_the_gpu_reservation():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!reset", lambda loader, node: "!reset")
    override = yaml.load(CPU_OVERRIDE.read_text(), Loader=Loader)
    assert override["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"] == "!reset"
    assert set(override["services"]) == {"ray-worker"}
    assert "COMPOSE_FILE=docker-compose.yml:docker/compose.cpu.yml" in ENV_EXAMPLE.read_text()


def test_the_dockerfile_has_cpu_and_gpu_targets(raw):
    stages = dockerfile_stages()
    assert {"cpu", "gpu"} <= set(stages)
    cpu, gpu = " ".join(stages["cpu"]), " ".join(stages["gpu"])
    assert re.search(r"FROM \S*python:3\.11-slim|FROM \$\{CPU_BASE\}", stages["cpu"][0])
    assert "ARG CPU_BASE=python:3.11-slim" in DOCKERFILE.read_text()
    assert re.search(r"ARG GPU_BASE=pytorch/pytorch:[\w.]+-cuda[\d.]+-cudnn\d+-devel", DOCKERFILE.read_text())
    # CPU torch from the CPU index, before xattn (which would otherwise pull a CUDA torch)
    assert cpu.index("download.pytorch.org/whl/cpu") < cpu.index("[postgres]")
    assert re.search(r"pip install --no-build-isolation \"?flash-attn", gpu)
    for stage in (cpu, gpu):
        assert "/opt/xattn/src[postgres]" in stage and "ray[default]" in stage and "mlflow[auth]" in stage
        assert "USER xattn" in stage
    # compose builds one of them
    target = resolve(raw["x-xattn-image"]["build"]["target"], {})
    assert target in stages
    assert resolve(raw["x-xattn-image"]["build"]["target"], {"XATTN_TARGET": "cpu"}) == "cpu"


def test_the_image_gets_what_the_services_read(compose):
    text = DOCKERFILE.read_text()
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path
            assert path not in ignored, f"{path} is copied but .dockerignore leaves it out"
    config = compose["services"]["mlflow"]["environment"]["MLFLOW_AUTH_CONFIG_PATH"]
    for target, instructions in dockerfile_stages().items():
        if target in ("cpu", "gpu"):
            assert f"COPY docker/{Path(config).name} {config}" in instructions, f"{target}: no {config}"
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} is not in the repository"


# --- secrets ------------------------------------------------------------------------------------


def test_secrets_are_env_references_and_never_in_command_lines(raw):
    text = COMPOSE_FILE.read_text()
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key) and key != "<<":
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}: {key}={value}"
        for word in command_words(service):
            assert "PASSWORD" not in word and "TOKEN" not in word and "SECRET" not in word, f"{name}: {word}"
    for anchor in ("x-ray-auth",):
        assert re.fullmatch(r"\$\{RAY_AUTH_TOKEN:\?[^}]+\}", raw[anchor]["RAY_AUTH_TOKEN"])
    # no user:password@ in any URI, here or in the MLflow auth config
    for path in (COMPOSE_FILE, ROOT / "docker" / "mlflow-basic-auth.ini"):
        assert not re.search(r"://[^/@\s:]+:[^/@\s]+@", path.read_text()), path
    assert "admin_password" not in (ROOT / "docker" / "mlflow-basic-auth.ini").read_text().replace("# ", "")
    assert "RAY_AUTH_MODE: token" in text


def test_every_variable_is_in_env_example_and_the_secrets_are_required(raw):
    used = variables(COMPOSE_FILE.read_text())
    entries = env_example()
    assert set(used) <= set(entries), f"not in .env.example: {sorted(set(used) - set(entries))}"
    required = {name for name, ops in used.items() if ":?" in ops}
    assert required == SECRETS
    for name in required:
        value, active = entries[name]
        assert active, f"{name} is commented out in .env.example"
        if name != "MLFLOW_ADMIN_USERNAME":
            assert value == "", f".env.example holds a value for the secret {name}"
    # without .env compose stops, naming the variable; with the example filled in, it resolves
    with pytest.raises(MissingVariable, match=r"\.env"):
        resolve(raw, {})
    resolve(raw, fake_env())
    # every optional variable has a default, and .env.example shows it commented out
    for name, ops in used.items():
        if name not in SECRETS:
            assert ops == {":-"}, name
            assert not entries[name][1], f"{name} is set in .env.example; leave the defaults commented out"


def test_dotenv_is_ignored_by_git_and_the_example_is_not():
    lines = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()]
    assert ".env" in lines
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        check = lambda path: subprocess.run([git, "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode  # noqa: E731
        assert check(".env") == 0
        assert check(".env.example") == 1


# --- commands against the installed packages ------------------------------------------------------


def console_scripts() -> set[str]:
    return {entry.name for entry in importlib.metadata.entry_points(group="console_scripts")}


@pytest.mark.parametrize("name", sorted(SERVICES - UPSTREAM))
def test_commands_of_our_image_are_installed_entry_points(compose, name):
    program = command_words(compose["services"][name])[0]
    assert program in console_scripts(), f"{name}: {program} is no console script of an installed distribution"


def test_upstream_images_get_what_their_entry_points_expect(compose):
    postgres = compose["services"]["postgres"]
    assert command_words(postgres)[0] == "postgres"
    assert postgres["environment"]["POSTGRES_DB"] == "mlflow" and postgres["environment"]["POSTGRES_USER"] == "xattn"
    dashboard = compose["services"]["optuna-dashboard"]
    assert dashboard["image"].startswith("ghcr.io/optuna/optuna-dashboard")
    (storage,) = command_words(dashboard)  # the image's entry point is optuna-dashboard; the command is its storage
    assert storage == compose["services"]["ray-head"]["environment"]["XATTN_OPTUNA_STORAGE"]


def test_every_database_the_services_use_is_created():
    init = (ROOT / "docker" / "postgres-init.sql").read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+)", init)) | {"mlflow"}  # POSTGRES_DB
    assert created == DATABASES
    text = COMPOSE_FILE.read_text() + (ROOT / "docker" / "mlflow-basic-auth.ini").read_text()
    used = set(re.findall(r"postgresql\+psycopg2://xattn@postgres:5432/(\w+)", text))
    assert used == DATABASES


def test_mlflow_server_knows_every_flag_of_the_service(compose):
    words = command_words(compose["services"]["mlflow"])
    assert words[:2] == ["mlflow", "server"]
    help_text = run_help("mlflow", "server")
    for flag in long_flags(words):
        assert re.search(rf"(^|[\s,/]){re.escape(flag)}(?![\w-])", help_text, re.MULTILINE), (
            f"mlflow server has no {flag}"
        )
    assert words[words.index("--app-name") + 1] == "basic-auth" and "[basic-auth]" in help_text
    assert words[words.index("--backend-store-uri") + 1].startswith(("postgresql+psycopg2://", "postgresql+psycopg://"))


def test_ray_start_knows_every_flag_of_the_ray_services(compose):
    help_text = run_help("ray", "start")
    for name in ("ray-head", "ray-worker"):
        words = command_words(compose["services"][name])
        assert words[:2] == ["ray", "start"] and "--block" in words
        for flag in long_flags(words):
            assert re.search(rf"(^|\s){re.escape(flag)}(?![\w-])", help_text, re.MULTILINE), (
                f"{name}: ray start has no {flag}"
            )
    assert "--head" in command_words(compose["services"]["ray-head"])
    assert "--address=ray-head:6379" in command_words(compose["services"]["ray-worker"])
    assert "--port=6379" in command_words(compose["services"]["ray-head"])
    # the driver in the head container joins this cluster, with its token
    head_env = compose["services"]["ray-head"]["environment"]
    assert head_env["RAY_ADDRESS"] == "127.0.0.1:6379"
    for name in ("ray-head", "ray-worker"):
        env = compose["services"][name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"], name


def test_the_mlflow_auth_config_reads_with_the_installed_mlflow(compose):
    environment = compose["services"]["mlflow"]["environment"]
    path = ROOT / "docker" / Path(environment["MLFLOW_AUTH_CONFIG_PATH"]).name
    parser = configparser.ConfigParser()
    parser.read(path)
    assert set(parser["mlflow"]) == {"default_permission", "database_uri", "authorization_function"}
    # MLflow's own reader, in a subprocess (importing the auth app would set up a server here),
    # with the admin from the environment as the mlflow service gives it
    script = (
        "import json; from mlflow.server.auth.config import read_auth_config; "
        "print(json.dumps(read_auth_config()._asdict()))"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env |= {
        "MLFLOW_AUTH_CONFIG_PATH": str(path),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-enough-password",
    }
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    auth = json.loads(done.stdout.strip().splitlines()[-1])
    assert auth["database_uri"] == "postgresql+psycopg2://xattn@postgres:5432/mlflow_auth"
    assert auth["default_permission"] == "READ"
    assert (auth["admin_username"], auth["admin_password"]) == ("admin", "a-long-enough-password")
