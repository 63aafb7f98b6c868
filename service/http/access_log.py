"""Keys and tokens sent in a query string never reach the access log.

The service reads its API key only from the ``X-API-Key`` header, but clients still put keys in
URLs (``?api_key=...``), and uvicorn's access log prints every path with its query string.
``RedactSecretsFilter`` rewrites the logged path so that the value of every key-like query
parameter (a name containing key, token, secret, password, auth, signature or credential) is
``***``. ``install`` puts it on uvicorn's access logger.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "***"
# uvicorn's access record: (client address, method, path with query, HTTP version, status).
_PATH_ARG = 2
_SECRET_NAME = re.compile(r"key|token|secret|passw|auth|signature|credential", re.IGNORECASE)
_PARAMETER = re.compile(r"(?P<name>[^&=;]*)=(?P<value>[^&;]*)")


def redact_query(path: str) -> str:
    """``path`` with the values of its key-like query parameters replaced by ``***``."""
    base, sep, query = path.partition("?")
    if not sep:
        return path

    def redact(match: re.Match[str]) -> str:
        if _SECRET_NAME.search(unquote_plus(match["name"])):
            return f"{match['name']}={REDACTED}"
        return match[0]

    return base + sep + _PARAMETER.sub(redact, query)


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) <= _PATH_ARG:
            return True
        path = args[_PATH_ARG]
        if isinstance(path, str):
            record.args = (*args[:_PATH_ARG], redact_query(path), *args[_PATH_ARG + 1 :])
        return True


def install() -> None:
    """Redact uvicorn's access log (call after uvicorn configured its logging)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactSecretsFilter) for f in logger.filters):
        logger.addFilter(RedactSecretsFilter())
