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

class PointGrantStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POINT_GRANT_STATUS_UNSPECIFIED: _ClassVar[PointGrantStatus]
    POINT_GRANT_STATUS_GRANTED: _ClassVar[PointGrantStatus]
    POINT_GRANT_STATUS_REVERSED: _ClassVar[PointGrantStatus]

class LedgerEntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEDGER_ENTRY_KIND_UNSPECIFIED: _ClassVar[LedgerEntryKind]
    LEDGER_ENTRY_KIND_GRANT: _ClassVar[LedgerEntryKind]
    LEDGER_ENTRY_KIND_REVERSAL: _ClassVar[LedgerEntryKind]
POINT_GRANT_STATUS_UNSPECIFIED: PointGrantStatus
POINT_GRANT_STATUS_GRANTED: PointGrantStatus
POINT_GRANT_STATUS_REVERSED: PointGrantStatus
LEDGER_ENTRY_KIND_UNSPECIFIED: LedgerEntryKind
LEDGER_ENTRY_KIND_GRANT: LedgerEntryKind
LEDGER_ENTRY_KIND_REVERSAL: LedgerEntryKind

class ClawBackPointsRequest(_message.Message):
    __slots__ = ("order_id", "customer_id", "request_id")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    customer_id: str
    request_id: str
    def __init__(self, order_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetPointGrantRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetPointBalanceRequest(_message.Message):
    __slots__ = ("customer_id",)
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    def __init__(self, customer_id: _Optional[str] = ...) -> None: ...

class PointGrant(_message.Message):
    __slots__ = ("order_id", "customer_id", "points_granted", "points_reversed", "status")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_GRANTED_FIELD_NUMBER: _ClassVar[int]
    POINTS_REVERSED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    customer_id: str
    points_granted: int
    points_reversed: int
    status: PointGrantStatus
    def __init__(self, order_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., points_granted: _Optional[int] = ..., points_reversed: _Optional[int] = ..., status: _Optional[_Union[PointGrantStatus, str]] = ...) -> None: ...

class PointBalance(_message.Message):
    __slots__ = ("customer_id", "balance", "entries")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    balance: int
    entries: _containers.RepeatedCompositeFieldContainer[LedgerEntry]
    def __init__(self, customer_id: _Optional[str] = ..., balance: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[LedgerEntry, _Mapping]]] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("entry_id", "order_id", "kind", "points", "create_time")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    order_id: str
    kind: LedgerEntryKind
    points: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, entry_id: _Optional[str] = ..., order_id: _Optional[str] = ..., kind: _Optional[_Union[LedgerEntryKind, str]] = ..., points: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
