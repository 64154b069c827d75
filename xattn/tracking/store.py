"""Where a study's records live: the workspace, the MLflow tracking store and the Optuna storage.

Stores are chosen by URI (flag, environment, or the workspace's embedded SQLite files), never
by code, so the same study runs against a lab's PostgreSQL-backed server unchanged.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from xattn.errors import StoreError, first_line
from xattn.passwords import PASSWORD_FROM_ENVIRONMENT, has_password, mask, without_password
from xattn.paths import ensure_can_create, ensure_not_a_file

if TYPE_CHECKING:  # MLflow takes seconds to import: commands that fail on their input should not wait for it
    from mlflow.tracking import MlflowClient

DEFAULT_WORKSPACE = Path(".xattn")
SQLITE_WAIT = "?timeout=60"
# What MLflow 3 accepts as a tracking URI (a database through SQLAlchemy, a server, Databricks).
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "file")
TRACKING_EXAMPLES = (
    "sqlite:///PATH.db, postgresql://HOST/DB, mysql://HOST/DB or http(s)://HOST:PORT of an MLflow server"
)


@dataclass(frozen=True)
class Workspace:
    root: Path
    tracking_uri: str
    optuna_storage: str

    @classmethod
    def open(
        cls,
        root: str | Path | None = None,
        tracking_uri: str | None = None,
        optuna_storage: str | None = None,
        create: bool = True,
    ) -> Workspace:
        root = Path(root or os.environ.get("XATTN_WORKSPACE") or DEFAULT_WORKSPACE).expanduser().resolve()
        ensure_not_a_file(root, "workspace", "pass --workspace DIR")
        # Checked before the workspace is created: a bad URI must leave nothing behind.
        if tracking_uri:
            check_tracking_uri(tracking_uri, "--tracking-uri")
        elif os.environ.get("MLFLOW_TRACKING_URI"):
            tracking_uri = check_tracking_uri(os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI")
        if create:
            ensure_can_create(root, "workspace", "pass --workspace DIR")
            root.mkdir(parents=True, exist_ok=True)
        # Two studies on one workspace are two writers of each SQLite file: wait for the
        # other's write (up to a minute) instead of failing with "database is locked" after 5 s.
        tracking_uri = tracking_uri or f"sqlite:///{root / 'mlflow.db'}{SQLITE_WAIT}"
        optuna_storage = (
            optuna_storage or os.environ.get("XATTN_OPTUNA_STORAGE") or f"sqlite:///{root / 'optuna.db'}{SQLITE_WAIT}"
        )
        if same_database(tracking_uri, optuna_storage):
            raise StoreError(
                f"the tracking store and the Optuna storage are one database ({mask(optuna_storage)}): "
                "MLflow and Optuna each need their own (both keep their schema version in one alembic_version table): "
                "pass another --optuna-storage"
            )
        return cls(root, tracking_uri, optuna_storage)

    def missing_store(self) -> Path | None:
        """The SQLite tracking file, when it does not exist yet: reading it would create it."""
        return missing_sqlite_file(self.tracking_uri)

    @property
    def artifact_root(self) -> Path:
        return self.root / "artifacts"

    @property
    def ray_storage(self) -> Path:
        return self.root / "ray"

    def client(self) -> MlflowClient:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def artifact_location(self, study: str) -> str | None:
        """Artifacts beside the embedded store; a tracking server chooses its own location."""
        if self.tracking_uri.startswith(("http://", "https://", "databricks")):
            return None
        return (self.artifact_root / study).as_uri()


def missing_sqlite_file(url: str) -> Path | None:
    """The file of SQLite database `url` when it does not exist yet (opening it would create it)."""
    if not url.startswith("sqlite:///"):
        return None
    database = Path(url.removeprefix("sqlite:///").split("?")[0])
    return None if database.exists() else database


def check_tracking_uri(uri: str, source: str) -> str:
    """`uri` if MLflow can open a store of its kind, else a StoreError naming what would work."""
    try:
        scheme = urlsplit(uri).scheme.lower()
    except ValueError as error:  # "Invalid IPv6 URL", a bad port
        raise StoreError(f"{source} {uri!r} is not a URL ({error}); use {TRACKING_EXAMPLES}") from None
    # A bare path is a local folder to MLflow; a dialect may name its driver (postgresql+psycopg2).
    if scheme and scheme.split("+")[0] not in TRACKING_SCHEMES:
        raise StoreError(
            f"{source} {mask(uri)}: MLflow has no tracking store for scheme {scheme!r}; use {TRACKING_EXAMPLES}"
        )
    if scheme in ("", "file") and not os.environ.get("MLFLOW_ALLOW_FILE_STORE"):
        raise StoreError(
            f"{source} {uri}: MLflow 3 no longer opens folder (file) stores; use sqlite:///PATH.db, "
            "or set MLFLOW_ALLOW_FILE_STORE=true to open an old one"
        )
    if scheme == "sqlite" and not uri.startswith("sqlite:///"):
        raise StoreError(
            f"{source} {uri}: a SQLite file is sqlite:///relative/path.db or sqlite:////absolute/path.db "
            "(three or four slashes)"
        )
    return uri


# Tables only MLflow's schema has: both MLflow and Optuna keep their schema version in one
# `alembic_version` table, so they cannot share a database.
MLFLOW_TABLES = {"experiments", "runs", "registered_models"}
OPTUNA_TABLES = {"studies", "version_info"}


def check_schema_owner(tables: set[str], shown_url: str) -> None:
    """Refuse an Optuna storage whose database already holds another application's schema."""
    if "alembic_version" not in tables or OPTUNA_TABLES <= tables:
        return
    owner = "MLflow's" if MLFLOW_TABLES & tables else "another application's"
    raise StoreError(
        f"Optuna storage {shown_url}: that database already holds {owner} schema, and Optuna needs one of its own "
        "(both keep their version in one alembic_version table): "
        "create another database and pass it as --optuna-storage"
    )


def same_database(tracking_uri: str, optuna_storage: str) -> bool:
    """Whether both stores name one database (the same scheme without driver, host, port and path)."""

    def key(url: str) -> tuple[str, str, str]:
        parts = urlsplit(url)
        return (parts.scheme.split("+")[0].lower(), parts.netloc.rpartition("@")[2].lower(), parts.path.rstrip("/"))

    try:
        return key(tracking_uri) == key(optuna_storage)
    except ValueError:  # not URLs at all: other checks name that
        return False


def shown(uri: str) -> str:
    """`uri` as a person reads it: any password masked, and without the SQLite wait that xattn
    adds to the stores it makes itself (SQLITE_WAIT)."""
    return mask(uri).removesuffix(SQLITE_WAIT)


def store_flags(ws: Workspace, *, tracking: bool = True, optuna: bool = False) -> str:
    """The flags a printed command needs to reach these stores from here: none where the
    defaults (flags left out, the same environment) would find them."""
    default_root = Path(os.environ.get("XATTN_WORKSPACE") or DEFAULT_WORKSPACE).expanduser().resolve()
    defaults = Workspace.open(ws.root, create=False)
    flags = [("--workspace", str(ws.root))] if ws.root != default_root else []
    if tracking and ws.tracking_uri != defaults.tracking_uri:
        flags.append(("--tracking-uri", without_password(ws.tracking_uri)))
    if optuna and ws.optuna_storage != defaults.optuna_storage:
        flags.append(("--optuna-storage", without_password(shown(ws.optuna_storage))))
    return "".join(f" {flag} {shlex.quote(value)}" for flag, value in flags)


def password_note(ws: Workspace) -> str | None:
    """What a printed command lacks when a store's URI carries a password (store_flags leaves it out)."""
    return PASSWORD_FROM_ENVIRONMENT if has_password(ws.tracking_uri) or has_password(ws.optuna_storage) else None


def check_writable(workspace: Workspace) -> None:
    """A one-line error unless the workspace folder, and the folder of a SQLite tracking file
    not made yet, can be written (nothing is made)."""
    ensure_can_create(workspace.root, "workspace", "pass --workspace DIR")
    missing = workspace.missing_store()
    if missing is not None:
        ensure_can_create(
            missing.parent,
            f"tracking store {workspace.tracking_uri.split('?')[0]}: its folder",
            "pass another --tracking-uri",
        )


def connect(workspace: Workspace) -> MlflowClient:
    """An MLflow client on a store that answers, or a one-line StoreError (within seconds)."""
    _probe_database(workspace.tracking_uri)
    client = workspace.client()
    # MLflow retries an unreachable server for minutes by default; a probe should not.
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
    saved = {key: os.environ.get(key) for key in quick}
    os.environ.update(quick)
    try:
        client.search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - any failure here means the store is unusable
        raise StoreError(
            f"cannot use the tracking store {mask(workspace.tracking_uri)} ({first_line(error)}): check --tracking-uri"
        ) from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return client


def check_tracking_store(workspace: Workspace) -> None:
    """A one-line error unless a tracking server or database answers (a SQLite file is made later)."""
    if not workspace.tracking_uri.startswith("sqlite:"):
        connect(workspace)


def _probe_database(uri: str) -> None:
    """One connection to a tracking database server, within seconds: MLflow's own engine retries
    a refused connection for minutes before it gives up."""
    scheme = urlsplit(uri).scheme.split("+")[0].lower()
    if scheme not in ("postgresql", "mysql", "mssql"):
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 10})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as error:  # noqa: BLE001 - a missing driver, an unreachable server, a bad password
        raise StoreError(
            f"cannot use the tracking store {mask(uri)} ({first_line(error)}): check --tracking-uri"
        ) from None


def check_optuna_storage(url: str) -> None:
    """Connect to the Optuna storage without writing to it (a SQLite file is created later)."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # noqa: BLE001 - not a URL at all
        raise StoreError(
            f"Optuna storage {url!r} is not a SQLAlchemy URL: use e.g. sqlite:///optuna.db or postgresql://host/db"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise StoreError(
            f"Optuna storage {shown} is in memory: the study would vanish with this process; use sqlite:///PATH.db"
        )
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        if parsed.database:  # created later: its folder must be writable now
            ensure_can_create(
                Path(parsed.database).parent, f"Optuna storage {shown}: its folder", "pass another --optuna-storage"
            )
        return
    try:
        engine = sqlalchemy.create_engine(parsed)
        with engine.connect() as connection:
            tables = set(sqlalchemy.inspect(connection).get_table_names())
        engine.dispose()
    except Exception as error:  # noqa: BLE001 - a missing driver, an unreachable server, a bad password
        raise StoreError(
            f"cannot use the Optuna storage {shown} ({first_line(error)}): check --optuna-storage"
        ) from None
    check_schema_owner(tables, shown)
