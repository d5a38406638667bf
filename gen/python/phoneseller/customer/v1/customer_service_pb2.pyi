import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from phoneseller.order.v1 import order_service_pb2 as _order_service_pb2
from phoneseller.payment.v1 import payment_service_pb2 as _payment_service_pb2
from phoneseller.store.v1 import store_service_pb2 as _store_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetCustomerHistoryRequest(_message.Message):
    __slots__ = ("customer_id",)
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    def __init__(self, customer_id: _Optional[str] = ...) -> None: ...

class CustomerHistory(_message.Message):
    __slots__ = ("customer_id", "orders", "point_balance")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    POINT_BALANCE_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    orders: _containers.RepeatedCompositeFieldContainer[OrderHistory]
    point_balance: int
    def __init__(self, customer_id: _Optional[str] = ..., orders: _Optional[_Iterable[_Union[OrderHistory, _Mapping]]] = ..., point_balance: _Optional[int] = ...) -> None: ...

class OrderHistory(_message.Message):
    __slots__ = ("order_id", "item", "quantity", "unit_price", "amount", "status", "payment_status", "store_status", "payment_id", "points_granted", "points_reversed", "timeline", "create_time", "update_time")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_STATUS_FIELD_NUMBER: _ClassVar[int]
    STORE_STATUS_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_GRANTED_FIELD_NUMBER: _ClassVar[int]
    POINTS_REVERSED_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    item: str
    quantity: int
    unit_price: int
    amount: int
    status: _order_service_pb2.OrderStatus
    payment_status: _payment_service_pb2.PaymentStatus
    store_status: _store_service_pb2.StoreOrderStatus
    payment_id: str
    points_granted: int
    points_reversed: int
    timeline: _containers.RepeatedCompositeFieldContainer[TimelineEntry]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, order_id: _Optional[str] = ..., item: _Optional[str] = ..., quantity: _Optional[int] = ..., unit_price: _Optional[int] = ..., amount: _Optional[int] = ..., status: _Optional[_Union[_order_service_pb2.OrderStatus, str]] = ..., payment_status: _Optional[_Union[_payment_service_pb2.PaymentStatus, str]] = ..., store_status: _Optional[_Union[_store_service_pb2.StoreOrderStatus, str]] = ..., payment_id: _Optional[str] = ..., points_granted: _Optional[int] = ..., points_reversed: _Optional[int] = ..., timeline: _Optional[_Iterable[_Union[TimelineEntry, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TimelineEntry(_message.Message):
    __slots__ = ("event_type", "event_id", "occurred_at", "description")
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    event_type: str
    event_id: str
    occurred_at: _timestamp_pb2.Timestamp
    description: str
    def __init__(self, event_type: _Optional[str] = ..., event_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., description: _Optional[str] = ...) -> None: ...
