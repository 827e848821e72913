"""The push endpoints of PROTOCOL §2/§7, added to the Quart app by :func:`add_push_routes`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from quart import Response
from quart_trio import QuartTrio

from chatd.models import Principal
from chatd.services.push import PushService, subscriptions_json
from chatd.web import params


def _ok(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status=status, content_type="application/json")


def add_push_routes(
    app: QuartTrio,
    push: PushService,
    principal: Callable[[], Awaitable[Principal]],
    body: Callable[[], Awaitable[Mapping[str, Any]]],
) -> None:
    @app.post("/v1/push/subscriptions")
    async def subscribe() -> Response:
        who = await principal()
        found = await push.subscribe(who, await body())
        return _ok({"subscription_id": found.subscription_id}, 201)

    @app.get("/v1/push/subscriptions")
    async def subscriptions() -> Response:
        return _ok(subscriptions_json(await push.list(await principal())))

    @app.delete("/v1/push/subscriptions/<raw_id>")
    async def unsubscribe(raw_id: str) -> Response:
        who = await principal()
        await push.unsubscribe(who, params.path_id(raw_id, "subscription_id"))
        return Response("", status=204)

    @app.get("/v1/push/vapid")
    async def vapid() -> Response:
        await principal()
        _, public_key = await push.vapid_keys()
        return _ok({"public_key": public_key})
