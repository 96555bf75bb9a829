"""/v1/webhook-subscriptions: the URLs events are delivered to, as signed webhooks
(WebhookSubscriptionService over REST). The secret is write-only."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from agentry.workflows.v1 import workflows_pb2
from services.gateway.auth import Authorized
from services.gateway.clients import Services

router = APIRouter(prefix="/v1", tags=["webhooks"])

EventType = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=128, pattern=r"^(\*|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?)$"
    ),
]


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(
        min_length=1, max_length=2048, description="An http or https URL: events are POSTed here."
    )
    event_types: list[EventType] = Field(
        min_length=1,
        max_length=20,
        description='Event types ("task.dead_lettered"), prefixes with a wildcard ("task.*"),'
        ' or "*" for every event.',
    )
    secret: str = Field(
        min_length=16,
        max_length=256,
        description="Signs every delivery (Agentry-Webhook-Signature); never shown again.",
    )

    def to_proto(self) -> workflows_pb2.CreateSubscriptionRequest:
        return workflows_pb2.CreateSubscriptionRequest(
            url=self.url, event_types=self.event_types, secret=self.secret
        )


class SubscriptionOut(BaseModel):
    id: str
    url: str
    event_types: list[str]
    created_at: datetime
    created_by: str
    secret_set: bool

    @classmethod
    def from_proto(cls, s: workflows_pb2.WebhookSubscription) -> "SubscriptionOut":
        return cls(
            id=s.id,
            url=s.url,
            event_types=list(s.event_types),
            created_at=s.created_at.ToDatetime(tzinfo=UTC),
            created_by=s.created_by,
            secret_set=s.secret_set,
        )


class SubscriptionPage(BaseModel):
    items: list[SubscriptionOut]
    # Always null today: every subscription fits one page.
    next_page_token: str | None = None


def _services(request: Request) -> Services:
    return request.app.state.services


@router.post(
    "/webhook-subscriptions", status_code=status.HTTP_201_CREATED, response_model=SubscriptionOut
)
async def create_subscription(
    request: Request, body: SubscriptionIn, principal: Authorized
) -> SubscriptionOut:
    services = _services(request)
    reply = await services.call(services.subscriptions.CreateSubscription, body.to_proto())
    return SubscriptionOut.from_proto(reply.subscription)


@router.get("/webhook-subscriptions", response_model=SubscriptionPage)
async def list_subscriptions(request: Request, principal: Authorized) -> SubscriptionPage:
    services = _services(request)
    reply = await services.call(
        services.subscriptions.ListSubscriptions, workflows_pb2.ListSubscriptionsRequest()
    )
    return SubscriptionPage(items=[SubscriptionOut.from_proto(s) for s in reply.subscriptions])


@router.delete(
    "/webhook-subscriptions/{subscription_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
)
async def delete_subscription(
    request: Request, subscription_id: str, principal: Authorized
) -> Response:
    services = _services(request)
    await services.call(
        services.subscriptions.DeleteSubscription,
        workflows_pb2.DeleteSubscriptionRequest(subscription_id=subscription_id),
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
