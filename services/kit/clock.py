"""UTC time, and the conversions between database datetimes and protobuf Timestamps."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands datetimes back without a zone; everything we store is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def timestamp(value: datetime | None) -> Timestamp | None:
    """The protobuf Timestamp of a datetime (naive ones are UTC), to the microsecond.

    Built from the epoch seconds rather than with Timestamp.FromDatetime, whose calendar
    arithmetic runs in Python: every response carries two or more of these.
    """
    if value is None:
        return None
    return Timestamp(seconds=int(as_utc(value).timestamp()), nanos=value.microsecond * 1000)
