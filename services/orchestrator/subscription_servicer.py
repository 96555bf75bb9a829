"""WebhookSubscriptionService over gRPC: protobuf in, a call on the subscriptions,
protobuf out. The secret goes in and never comes out."""

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agentry.workflows.v1 import workflows_pb2 as W
from agentry.workflows.v1 import workflows_pb2_grpc
from libs.common.call_guard import current_caller
from services.orchestrator.subscriptions import Subscription, Subscriptions


def subscription_to_proto(subscription: Subscription) -> W.WebhookSubscription:
    created_at = Timestamp()
    created_at.FromDatetime(subscription.created_at)
    return W.WebhookSubscription(
        id=str(subscription.id),
        url=subscription.url,
        event_types=list(subscription.event_types),
        created_at=created_at,
        secret_set=True,
        created_by=subscription.created_by,
    )


class WebhookSubscriptionServicer(workflows_pb2_grpc.WebhookSubscriptionServiceServicer):
    def __init__(self, subscriptions: Subscriptions) -> None:
        self._subscriptions = subscriptions

    async def CreateSubscription(
        self, request: W.CreateSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> W.CreateSubscriptionResponse:
        created = await self._subscriptions.create(
            request.url, list(request.event_types), request.secret, current_caller().principal
        )
        return W.CreateSubscriptionResponse(subscription=subscription_to_proto(created))

    async def ListSubscriptions(
        self, request: W.ListSubscriptionsRequest, context: grpc.aio.ServicerContext
    ) -> W.ListSubscriptionsResponse:
        found = await self._subscriptions.list()
        return W.ListSubscriptionsResponse(subscriptions=[subscription_to_proto(s) for s in found])

    async def DeleteSubscription(
        self, request: W.DeleteSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> W.DeleteSubscriptionResponse:
        await self._subscriptions.delete(request.subscription_id)
        return W.DeleteSubscriptionResponse()
