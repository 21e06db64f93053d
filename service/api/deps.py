"""Dependencies injected into routes (Annotated aliases, as in the FastAPI template).

All are `async def`: FastAPI runs a plain `def` dependency in its thread pool, which
cost a thread hop per dependency per request for what is an attribute lookup.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized
from service.models.registry import ModelRegistry
from service.models.scoring import Scorer
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_scorer(request: Request) -> Scorer:
    return request.app.state.scorer


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
ScorerDep = Annotated[Scorer, Depends(get_scorer)]


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


# Declared so the OpenAPI document lists both schemes and the docs page can send a key;
# auto_error=False: the check below decides (the API may be open).
_api_key_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="one of AUSCULT_API_KEYS"
)
_bearer_scheme = HTTPBearer(auto_error=False, description="one of AUSCULT_API_KEYS")


def key_matches(key: str, keys: Iterable[str]) -> bool:
    """Whether `key` is one of `keys`, comparing with every one in constant time."""
    given = key.encode()
    matched = False
    for candidate in keys:
        matched |= hmac.compare_digest(given, candidate.encode())
    return matched


async def require_api_key(
    request: Request,
    settings: SettingsDep,
    _key: Annotated[str | None, Security(_api_key_scheme)],
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer_scheme)],
) -> None:
    """When API keys are configured, demand one (X-API-Key or Authorization: Bearer).

    Every configured key is compared in constant time; the key is never logged.
    """
    if not settings.api_keys:
        return
    key = presented_key(request)
    if key is None:
        raise Unauthorized("an API key is required: send X-API-Key or Authorization: Bearer")
    if not key_matches(key, settings.api_keys):
        raise Unauthorized("the API key is not valid")


_admin_key_scheme = APIKeyHeader(
    name="X-API-Key",
    scheme_name="AdminKey",
    auto_error=False,
    description="one of AUSCULT_ADMIN_KEYS (the admin routes: reload)",
)


async def require_admin_key(
    request: Request,
    settings: SettingsDep,
    _key: Annotated[str | None, Security(_admin_key_scheme)],
) -> None:
    """The admin routes take a key of AUSCULT_ADMIN_KEYS (X-API-Key or Bearer); a scoring
    key is not one. With no admin key set they are open only while the API is open."""
    if not settings.admin_keys:
        if settings.api_keys:
            raise Unauthorized(
                "the admin routes are closed: AUSCULT_API_KEYS is set and AUSCULT_ADMIN_KEYS is not"
            )
        return
    key = presented_key(request)
    if key is None:
        raise Unauthorized("an admin key is required: send X-API-Key or Authorization: Bearer")
    if not key_matches(key, settings.admin_keys):
        raise Unauthorized("the admin key is not valid")


def describe_open_access(app: FastAPI, closed: frozenset[str] = frozenset()) -> None:
    """Without AUSCULT_API_KEYS the API is open: every operation that lists the key schemes
    also gets the empty requirement `{}` (OpenAPI's "no credentials needed"), so the
    document says what the service does; the schemes stay, for the docs page's key field.
    Operations that name a scheme of `closed` (the admin key, when set) keep needing it."""
    build = app.openapi
    described: list[dict[str, Any]] = []  # the document already amended (built once, cached)

    def openapi() -> dict[str, Any]:
        schema = build()
        if not described or described[0] is not schema:
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    security = operation.get("security") if isinstance(operation, dict) else None
                    needed = {name for req in security or [] for name in req}
                    if security and {} not in security and not needed & closed:
                        security.append({})
            described[:] = [schema]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
