"""The web console: a local review inbox and live pipeline view (``treadle[web]``).

``create_app(pipeline, store)`` returns an ASGI application (Starlette) that a
user can serve with uvicorn or mount in their own service;
``python -m treadle serve`` runs it on 127.0.0.1 with a per-start access token.
Importing :mod:`treadle` never imports this package: it needs the ``web``
extra (starlette, uvicorn, jinja2, python-multipart).
"""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"treadle.web needs the web extra ({exc.name} is missing): "
        'pip install "treadle[web]"'
    ) from exc

from .app import create_app

__all__ = ["create_app"]
