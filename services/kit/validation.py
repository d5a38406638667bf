"""Request validation that reports every bad field at once, as `BadRequest` violations."""

from __future__ import annotations

import re

from services.kit import errors

ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: Largest amount in won the system accepts: far above any phone order, far below int64.
MAX_AMOUNT = 10_000_000_000


class Violations:
    """Collects (field, description) pairs; `check()` raises INVALID_ARGUMENT if any."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def identifier(self, field: str, value: str, *, required: bool = True) -> None:
        if not value:
            if required:
                self.add(field, "is required")
        elif not ID_PATTERN.match(value):
            self.add(field, "must be 1 to 64 characters of letters, digits, '.', '_' or '-'")

    def text(self, field: str, value: str, *, max_length: int) -> None:
        if not value.strip():
            self.add(field, "is required")
        elif len(value) > max_length:
            self.add(field, f"must be at most {max_length} characters")
        elif not value.isprintable():
            self.add(field, "must not contain control characters")

    def in_range(self, field: str, value: int, low: int, high: int) -> None:
        if not low <= value <= high:
            self.add(field, f"must be between {low:,} and {high:,}")

    def check(self) -> None:
        if self.items:
            raise errors.invalid_argument(self.items)
