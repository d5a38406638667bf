"""Who is calling: the gateway's verified claims, read by the services, and the ownership rules."""

from __future__ import annotations

import base64
import json

import grpc
import pytest

from services.kit import errors, identity
from services.kit.identity import Caller


def header(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()


def test_the_claims_envoy_forwards_are_read_as_the_caller() -> None:
    # Envoy's forward_payload_header: the payload as base64url without padding.
    value = header({"iss": "phoneseller-dev", "sub": "alice", "roles": ["customer"], "exp": 1})
    assert identity.from_claims(value) == Caller("alice", frozenset({"customer"}))
    made = identity.claims_header("alice", "customer")
    assert made == (identity.CLAIMS_HEADER, header({"sub": "alice", "roles": ["customer"]}))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not base64!",
        header([1, 2]),
        header({"roles": ["customer"]}),
        header({"sub": 3}),
        header({"sub": "a", "roles": "customer"}),
    ],
)
def test_claims_that_are_not_a_payload_are_unauthenticated(value: str) -> None:
    with pytest.raises(errors.ServiceError) as refused:
        identity.from_claims(value or "@@")
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.reason == "CLAIMS_MALFORMED"


def test_a_call_without_claims_has_no_caller() -> None:
    with identity.bound({}), pytest.raises(errors.ServiceError) as refused:
        identity.current()
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED
    with identity.bound(dict([identity.claims_header("bob", "customer")])):
        assert identity.current().subject == "bob"


def test_a_customer_acts_only_for_themselves_and_an_operator_only_reads() -> None:
    alice = Caller("alice", frozenset({"customer"}))
    operator = Caller("op", frozenset({"operator"}))
    dealer = Caller("alice", frozenset({"dealer"}))
    assert alice.acts_for("alice") and alice.reads_for("alice")
    assert not alice.acts_for("bob") and not alice.reads_for("bob")
    assert operator.reads_for("bob") and not operator.acts_for("bob")
    assert not dealer.acts_for("alice"), "the subject alone is not the customer"
    with pytest.raises(errors.ServiceError) as refused:
        operator.require_acting_for("bob", "the orders")
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.reason == "NOT_THE_CUSTOMERS_OWN"
