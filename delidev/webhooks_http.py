"""``POST /webhooks/{github|gitlab}/{repository_id}``: the thin route in front of
``delidev.services.webhooks``. No user authentication: the delivery's signature (GitHub) or
token (GitLab), checked by the service against the repository's secret, is the
authentication.

The body is read with a cap (``webhook_max_body_bytes``): a larger declared length is
refused before reading, a stream that grows past it is refused as soon as it does. Each
delivery gets one log line (provider, event, delivery id, outcome — never the body or a
secret) and one count in ``delidev_webhook_deliveries_total``.
"""

from __future__ import annotations

import datetime as dt
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from delidev import metrics
from delidev.errors import DeliDevError, InvalidArgument, NotFound, Unauthenticated
from delidev.services import auto_fix as auto_fix_service
from delidev.services import webhooks
from delidev.settings import Settings

log = logging.getLogger(__name__)

PATH = "/webhooks/{provider}/{repository_id}"
_STATUS = {
    webhooks.Outcome.PROCESSED: 200,
    webhooks.Outcome.DUPLICATE: 200,
    webhooks.Outcome.IGNORED: 202,
}


class _TooLarge(Exception):
    pass


async def _read_capped(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise _TooLarge
    return bytes(body)


def _refusal(error: DeliDevError) -> tuple[int, str]:
    if isinstance(error, NotFound):
        return 404, "not_found"
    if isinstance(error, Unauthenticated):
        return 401, "unauthenticated"
    if isinstance(error, InvalidArgument) and error.field == "content-type":
        return 415, "unsupported_media_type"
    if isinstance(error, InvalidArgument):
        return 400, "invalid"
    return 500, "error"


def webhook_routes(settings: Settings, auto_fix: webhooks.AutoFix | None = None) -> list[Route]:
    """The route; ``auto_fix`` (default: the auto-fix service) receives what deliveries
    ask of it."""
    fixer: webhooks.AutoFix = auto_fix or auto_fix_service
    retention = dt.timedelta(hours=settings.webhook_delivery_retention_hours)
    cap = settings.webhook_max_body_bytes

    async def receive(request: Request) -> Response:
        provider = request.path_params["provider"]
        headers = {k.lower(): v for k, v in request.headers.items()}
        event = headers.get("x-github-event") or headers.get("x-gitlab-event")
        delivery = (
            headers.get("x-github-delivery")
            or headers.get("idempotency-key")
            or headers.get("x-gitlab-event-uuid")
        )
        status, outcome, body = 500, "error", {"error": "internal error"}
        try:
            raw = await _read_capped(request, cap)
            received = await webhooks.receive_delivery(
                provider=provider,
                repository_id=request.path_params["repository_id"],
                headers=headers,
                body=raw,
                retention=retention,
                auto_fix=fixer,
                max_json_depth=settings.max_json_depth,
            )
        except _TooLarge:
            status, outcome = 413, "too_large"
            body = {"error": f"the body is larger than {cap} bytes"}
        except DeliDevError as error:
            status, outcome = _refusal(error)
            body = {"error": error.message if status != 500 else "internal error"}
        except Exception as error:  # logged by kind only: its text may hold payload values
            log.error("webhook delivery failed: %s", type(error).__name__)
        else:
            status, outcome = _STATUS[received.outcome], received.outcome.value
            body = {"status": outcome}
        metrics.webhook_delivery(provider, event, outcome)
        log.info(
            "webhook delivery provider=%s event=%s delivery=%s repository=%s outcome=%s",
            provider,
            event,
            delivery,
            request.path_params["repository_id"],
            outcome,
            extra={
                "webhook_provider": provider,
                "webhook_event": event,
                "webhook_delivery": delivery,
                "webhook_outcome": outcome,
                "status": status,
            },
        )
        return JSONResponse(body, status_code=status)

    return [Route(PATH, receive, methods=["POST"])]
