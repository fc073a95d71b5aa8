"""The MLflow tracking-URI rule and credential masking: one home for both.

Which store a command uses: its explicit argument (``--tracking-uri``, or a command-line
``mlflow.tracking_uri=`` override), else ``$MLFLOW_TRACKING_URI``, else the config's
``mlflow.tracking_uri``. Whatever is shown or recorded (run params, the ``config.yaml``
artifact, CLI output, error messages) goes through :func:`mask` first, so a
``postgresql://user:password@host/db`` store never leaks its password.

Torch- and MLflow-free: the Spark jobs, the trainer and the registry CLI all use it.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

ENV = "MLFLOW_TRACKING_URI"
HIDDEN = "***"
_SECRET_KEYS = re.compile(r"pass|pwd|secret|token|key|credential|signature", re.IGNORECASE)


def resolve_tracking_uri(argument: Optional[str], environ: Mapping[str, str], configured: str,
                         overrides: Sequence[str] = ()) -> str:
    """The store to use: ``argument`` > ``environ['MLFLOW_TRACKING_URI']`` > ``configured``, where a
    command-line ``mlflow.tracking_uri=`` override among ``overrides`` (which ``configured``
    already holds) counts as the argument."""
    if not argument and any(pair.partition("=")[0].strip() == "mlflow.tracking_uri" for pair in overrides):
        argument = configured
    return argument or environ.get(ENV) or configured


def mask(uri: str) -> str:
    """``uri`` with its password (user-info or a secret-looking query parameter) replaced by ``***``;
    anything that is not such a URI comes back unchanged."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:
        return uri
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{HIDDEN}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_KEYS.search(k) for k, _ in pairs):
            query = urlencode([(k, HIDDEN if _SECRET_KEYS.search(k) else v) for k, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a mapping with every URI-like string value (nested mappings too) masked."""
    return {k: mask_values(v) if isinstance(v, Mapping) else mask(v) for k, v in values.items()}
