"""The uvicorn server of both hosts: the connection bounds (``connection_limits``), counted in
``celebxai_connections_closed_total``, and the access log that never shows a key.

``python -m service`` serves its app with it; ``python -m service --ray`` serves its front
(``service.scaleout.front``) with it, so the clients of either host meet the same bounds and
answers.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from prometheus_client import Counter

from service.http import access_log
from service.http.connection_limits import ConnectionLimits, protocol_class
from service.settings import Settings


def run_server(app: Any, settings: Settings, closed: Counter, **options: Any) -> None:
    """Serve ``app`` on ``settings.host``:``port`` until SIGINT or SIGTERM; ``closed`` (from
    ``refusal_counter``) counts the connections the bounds closed; ``options`` go to
    ``uvicorn.Config``."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        http=protocol_class(
            ConnectionLimits.from_settings(settings),
            on_refused=lambda reason: closed.labels(reason=reason).inc(),
        ),
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]  # float works
        **options,
    )
    access_log.install()  # after uvicorn.Config, which (re)configures uvicorn's loggers
    uvicorn.Server(config).run()
