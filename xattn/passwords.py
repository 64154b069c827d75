"""Passwords are never shown: the one place that masks them in anything xattn prints, logs,
records or writes.

A tracking URI or a storage URL may carry a password (`http://user:secret@host`,
`postgresql://user:secret@host/db`), and MLflow, libpq and Ray take secrets from the
environment. `mask` hides both kinds in any text (a URI, an error message, a log line); a
command xattn prints for a person to run again gets `without_password`, which leaves the
password out for the environment to supply (PASSWORD_FROM_ENVIRONMENT says how).
"""

from __future__ import annotations

import os
import re

MASK = "***"
# scheme://user:PASSWORD@ : the password ends at the last "@" before the host (a password may
# hold ":"; "@" and "/" in it must be percent-encoded in a URL).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<password>[^\s/@]*)@")
# Secrets that the clients xattn drives read from the environment.
SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PGPASSWORD", "RAY_AUTH_TOKEN")
PASSWORD_FROM_ENVIRONMENT = (
    "the password is left out of the printed command: set PGPASSWORD (PostgreSQL) or "
    "MLFLOW_TRACKING_PASSWORD (an MLflow server) before running it"
)


def mask(text: str) -> str:
    """`text` with every URL's password and every secret of the environment replaced by ***."""
    text = _URL_PASSWORD.sub(lambda match: f"{match['head']}{MASK}@" if match["password"] else match[0], text)
    for name in SECRET_VARIABLES:
        secret = os.environ.get(name, "")
        if len(secret) >= 4:  # a one-letter "secret" would mask every occurrence of that letter
            text = text.replace(secret, MASK)
    return text


def has_password(uri: str) -> bool:
    return any(match["password"] for match in _URL_PASSWORD.finditer(uri))


def without_password(uri: str) -> str:
    """`uri` with its password (and the ":" before it) left out, the user kept."""
    return _URL_PASSWORD.sub(lambda match: match["head"][:-1] + "@", uri)
