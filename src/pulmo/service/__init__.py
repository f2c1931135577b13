"""The pulmo web service: ``pulmo serve`` (FastAPI + uvicorn, from the ``serve`` extra).

Uploads become jobs in a SQLite store under the data folder; worker processes run
:func:`pulmo.pipeline.analyze_image` on them; the ``/api/v1`` API serves status, findings and result
files; ``/viewer/<id>`` shows them (2D overlays, and CT slices and 3D with NiiVue when installed with
``npm ci --prefix src/pulmo/service/viewer``). See :mod:`pulmo.service.app` for the routes.

This package imports FastAPI only when the app is built, so ``pulmo.service.store`` and the worker
need just the core install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pulmo.errors import ConfigError
from pulmo.service.config import ServiceConfig

__all__ = ["ServiceConfig", "create_app", "serve"]


def _require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"pulmo serve needs the 'serve' extra ({exc.name} is missing): "
                          "pip install -e '.[serve]'") from None


def create_app(config: ServiceConfig, **kwargs: Any) -> Any:
    """Build the FastAPI app (see :func:`pulmo.service.app.create_app`).

    Raises:
        ConfigError: the ``serve`` extra is not installed.
    """
    _require_serve_extra()
    from pulmo.service.app import create_app as _create_app

    return _create_app(config, **kwargs)


def serve(host: str = "127.0.0.1", port: int = 8000, data_dir: str | Path = "pulmo-data", workers: int = 1,
          token: str | None = None, max_upload_mb: float = 512.0, job_timeout_s: float = 900.0,
          job_memory_gb: float = 8.0, **kwargs: Any) -> int:
    """Run ``pulmo serve`` until interrupted (see :func:`pulmo.service.app.serve`); returns the exit code.

    ``job_timeout_s`` (wall time of one job, s) and ``job_memory_gb`` (memory of each worker process, GiB)
    are the per-job limits; 0 turns one off (see :class:`ServiceConfig`).

    Raises:
        ConfigError: the ``serve`` extra is missing, a setting is invalid, or the data folder is in use.
    """
    _require_serve_extra()
    from pulmo.service.app import serve as _serve

    return _serve(host=host, port=port, data_dir=data_dir, workers=workers, token=token,
                  max_upload_mb=max_upload_mb, job_timeout_s=job_timeout_s, job_memory_gb=job_memory_gb, **kwargs)
