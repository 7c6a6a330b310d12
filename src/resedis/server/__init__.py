"""The HTTP service and web page behind ``resedis serve`` (needs the ``[serve]`` extra).

>>> from resedis.server import ServeConfig, create_app
>>> app = create_app(ServeConfig(db="photos.db"))   # doctest: +SKIP
"""

from __future__ import annotations

from resedis.server.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def create_app(config: ServeConfig, *, service=None):
    """See :func:`resedis.server.app.create_app` (imported lazily: FastAPI is an extra)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as exc:
        from resedis.errors import MissingExtraError

        raise MissingExtraError(exc.name or "fastapi", "serve") from None
    from resedis.server.app import create_app as _create_app

    return _create_app(config, service=service)
