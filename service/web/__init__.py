"""The service's parts for people: the page at `/` and the API docs pages, all served
from the service itself (no CDN: they work on a network without internet).

`install(app)` adds them to an app built by `service.app.create_app`.
"""

from __future__ import annotations

from fastapi import FastAPI

from service.web.docs import install_docs, package_version
from service.web.page import install_page

__all__ = ["install", "package_version"]


def install(app: FastAPI) -> None:
    """Mount the page, its static files, the spectrogram endpoint and the docs pages."""
    install_page(app)
    install_docs(app)
