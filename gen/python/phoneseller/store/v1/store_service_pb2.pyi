import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StoreOrderStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STORE_ORDER_STATUS_UNSPECIFIED: _ClassVar[StoreOrderStatus]
    STORE_ORDER_STATUS_RECEIVED: _ClassVar[StoreOrderStatus]
    STORE_ORDER_STATUS_SHIPPED: _ClassVar[StoreOrderStatus]
    STORE_ORDER_STATUS_CANCELLED: _ClassVar[StoreOrderStatus]
STORE_ORDER_STATUS_UNSPECIFIED: StoreOrderStatus
STORE_ORDER_STATUS_RECEIVED: StoreOrderStatus
STORE_ORDER_STATUS_SHIPPED: StoreOrderStatus
STORE_ORDER_STATUS_CANCELLED: StoreOrderStatus

class ListStoreOrdersRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: StoreOrderStatus
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[StoreOrderStatus, str]] = ...) -> None: ...

class ListStoreOrdersResponse(_message.Message):
    __slots__ = ("store_orders", "next_page_token")
    STORE_ORDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    store_orders: _containers.RepeatedCompositeFieldContainer[StoreOrder]
    next_page_token: str
    def __init__(self, store_orders: _Optional[_Iterable[_Union[StoreOrder, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ShipOrderRequest(_message.Message):
    __slots__ = ("order_id", "request_id")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    request_id: str
    def __init__(self, order_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class StoreOrder(_message.Message):
    __slots__ = ("order_id", "customer_id", "item", "quantity", "status", "create_time", "ship_time")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SHIP_TIME_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    customer_id: str
    item: str
    quantity: int
    status: StoreOrderStatus
    create_time: _timestamp_pb2.Timestamp
    ship_time: _timestamp_pb2.Timestamp
    def __init__(self, order_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., item: _Optional[str] = ..., quantity: _Optional[int] = ..., status: _Optional[_Union[StoreOrderStatus, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ship_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
