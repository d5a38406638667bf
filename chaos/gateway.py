"""The gateway as the chaos clients and the checker reach it: a few grpc.aio channels, the
stubs over them, and what a failed call said.

A few channels rather than one: Envoy serves one connection on one worker thread, so a single
connection would load one Envoy thread. Reconnect back-off is capped at a second: gRPC's
default grows to two minutes, and a client whose channel is still backing off after Envoy
came back would report an outage that is over.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from phoneseller.customer.v1 import customer_service_pb2_grpc as customer_grpc
from phoneseller.order.v1 import order_service_pb2_grpc as order_grpc
from phoneseller.payment.v1 import payment_service_pb2_grpc as payment_grpc
from phoneseller.promotion.v1 import promotion_service_pb2_grpc as promotion_grpc
from phoneseller.store.v1 import store_service_pb2_grpc as store_grpc

from chaos.history import NO_REASON, Attempt

CHANNEL_OPTIONS = [
    # Otherwise gRPC shares one connection between channels with the same target.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A customer's history holds every order with its timeline: more than gRPC's 4 MiB default.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class Stubs:
    orders: order_grpc.OrderServiceStub
    payments: payment_grpc.PaymentServiceStub
    promotion: promotion_grpc.PromotionServiceStub
    store: store_grpc.StoreServiceStub
    customers: customer_grpc.CustomerServiceStub


class Gateway:
    """`count` channels to the gateway; `stubs(i)` are the stubs over channel i mod count."""

    def __init__(self, address: str, count: int = 4) -> None:
        self.address = address
        self._channels = [
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(count)
        ]
        self._stubs = [
            Stubs(
                order_grpc.OrderServiceStub(c),
                payment_grpc.PaymentServiceStub(c),
                promotion_grpc.PromotionServiceStub(c),
                store_grpc.StoreServiceStub(c),
                customer_grpc.CustomerServiceStub(c),
            )
            for c in self._channels
        ]

    def stubs(self, index: int) -> Stubs:
        return self._stubs[index % len(self._stubs)]

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def failed_attempt(error: grpc.aio.AioRpcError, at: float) -> Attempt:
    """The code, the ErrorInfo reason and the RetryInfo delay of a failed call."""
    reason, delay = NO_REASON, None
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        # The details' code disagrees with the call's: someone on the way rewrote the status.
        status = None
        reason = "(details disagree with code)"
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason or NO_REASON
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToMilliseconds() / 1000
    return Attempt(at=round(at, 4), code=error.code().name, reason=reason, retry_delay=delay)
