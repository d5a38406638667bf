"""ListStoreOrders page tokens: opaque, round-trip exactly, refuse what we did not make."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from services.store.servicer import PageToken


def test_a_token_round_trips_to_the_microsecond() -> None:
    token = PageToken(datetime(2025, 3, 1, 12, 30, 5, 123456, tzinfo=UTC), "order-9", 2)

    encoded = token.encode()

    assert PageToken.decode(encoded) == token
    assert "order-9" not in encoded  # opaque, not a readable key


def b64(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "not base64 at all!",
        "eyJ",  # truncated
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        b64("just a string"),
        b64([1, 2]),
        b64({"t": "2025-03-01T12:00:00+00:00", "o": "x"}),  # no status
        b64({"t": "yesterday", "o": "x", "s": 0}),
        b64({"t": "2025-03-01T12:00:00+00:00", "o": 5, "s": 0}),
        b64({"t": "2025-03-01T12:00:00+00:00", "o": "x", "s": "RECEIVED"}),
        b64({"t": "2025-03-01T12:00:00+00:00", "o": "x", "s": True}),
    ],
)
def test_anything_else_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="page token"):
        PageToken.decode(token)
