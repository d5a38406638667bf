"""Service identity on the whole local system (supervisord, Envoy, the five services, NATS):
the stack makes its own CA and a certificate per service under its run folder, Envoy's inbound
listeners refuse plaintext and other CAs' certificates and authorize by identity (a refusal
is PERMISSION_DENIED with the mesh's ErrorInfo), and the services' calls to each other pass,
over mTLS, as the identities the values name.
"""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from phoneseller.promotion.v1 import promotion_service_pb2 as promotion_pb
from phoneseller.promotion.v1 import promotion_service_pb2_grpc as promotion_grpc

from mesh.security import CALLER_NOT_ALLOWED, GATEWAY, MeshTls, load_identities
from stack import pki
from stack.supervisor import LocalStack
from tests.support.rich_errors import unpack_status
from tests.support.stack import admin, running_stack, stack_on_free_ports

pytestmark = pytest.mark.slow

CLAW = "/phoneseller.promotion.v1.PromotionService/ClawBackPoints"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(stack_on_free_ports(tmp_path_factory.mktemp("stack"))) as running:
        yield running


def inbound(stack: LocalStack, service: str) -> str:
    return str(stack.topology().instance(service).inbound)


def as_identity(
    stack: LocalStack, name: str | None, service: str, tls: MeshTls | None = None
) -> grpc.Channel:
    """A channel to `service`'s inbound listener presenting `name`'s certificate (None: no
    certificate) of the stack's CA (or of `tls`), trusting the stack's CA."""
    tls = tls or MeshTls.in_dir(stack.pki_dir)
    cert = tls.certificate(name) if name is not None else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=cert.key.read_bytes() if cert else None,
        certificate_chain=cert.cert.read_bytes() if cert else None,
    )
    target = [("grpc.ssl_target_name_override", tls.identities.dns_name(service))]
    return grpc.secure_channel(inbound(stack, service), credentials, target)


def claw_back_error(channel: grpc.Channel) -> grpc.RpcError | None:
    stub = promotion_grpc.PromotionServiceStub(channel)
    try:
        stub.ClawBackPoints(promotion_pb.ClawBackPointsRequest(), timeout=5)
    except grpc.RpcError as error:
        return error
    return None


def claw_back(channel: grpc.Channel) -> grpc.StatusCode:
    error = claw_back_error(channel)
    if error is None:
        return grpc.StatusCode.OK
    code: grpc.StatusCode = error.code()
    return code


def test_the_stack_keeps_a_ca_and_a_key_per_identity_of_its_own(stack: LocalStack) -> None:
    tls = MeshTls.in_dir(stack.pki_dir)
    assert tls.missing() == []
    assert stat.S_IMODE((stack.pki_dir / "ca-key.pem").stat().st_mode) == 0o600
    for name in tls.certificates:
        assert stat.S_IMODE(tls.certificate(name).key.stat().st_mode) == 0o600
    assert GATEWAY in tls.certificates


def test_promotions_inbound_side_refuses_plaintext(stack: LocalStack) -> None:
    with grpc.insecure_channel(inbound(stack, "promotion")) as channel:
        assert claw_back(channel) == grpc.StatusCode.UNAVAILABLE


def test_only_payments_identity_reaches_the_clawback(stack: LocalStack) -> None:
    """store's certificate: PERMISSION_DENIED from Envoy, with the mesh's ErrorInfo. payment's:
    the call reaches promotion, which answers the empty request itself (INVALID_ARGUMENT, with
    promotion's ErrorInfo)."""
    denied_stat = "http.inbound_promotion_0.rbac.denied"
    before = admin(stack).counter(denied_stat)
    with as_identity(stack, "store", "promotion") as channel:
        denied = claw_back_error(channel)
    assert denied is not None and denied.code() == grpc.StatusCode.PERMISSION_DENIED, denied
    info, _ = unpack_status(denied)
    assert (info.reason, info.metadata["service"]) == (CALLER_NOT_ALLOWED.reason, "mesh")
    assert admin(stack).counter(denied_stat) == before + 1
    with as_identity(stack, "payment", "promotion") as channel:
        invalid = claw_back_error(channel)
    assert invalid is not None and invalid.code() == grpc.StatusCode.INVALID_ARGUMENT, invalid
    assert unpack_status(invalid)[0].metadata["service"] == "promotion"
    with as_identity(stack, None, "promotion") as channel:
        assert claw_back(channel) == grpc.StatusCode.UNAVAILABLE


def raw_call(channel: grpc.Channel, path: str) -> grpc.StatusCode:
    """An empty request to `path` (no stubs needed): the status it ends with."""
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    try:
        call(b"", timeout=5)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


def test_orders_sidecar_presents_orders_identity(stack: LocalStack) -> None:
    """What order dials for payment (PHONESELLER_PAYMENT_ADDRESS) is its sidecar listener,
    which calls payment over mTLS as order: Pay is allowed through to payment (which answers
    the empty request itself), GetPayment — the gateway's alone — is refused."""
    envoy = admin(stack)
    allowed = "http.inbound_payment_0.rbac.allowed"
    before = envoy.counter(allowed)
    sidecar = stack.env_for("order", 0)["PHONESELLER_PAYMENT_ADDRESS"]
    with grpc.insecure_channel(sidecar) as channel:
        pay = raw_call(channel, "/phoneseller.payment.v1.PaymentService/Pay")
        read = raw_call(channel, "/phoneseller.payment.v1.PaymentService/GetPayment")
    assert pay not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE), pay
    assert envoy.counter(allowed) == before + 1
    assert read == grpc.StatusCode.PERMISSION_DENIED
    assert envoy.counter("cluster.outbound|payment.ssl.handshake") >= 1


def test_a_certificate_of_another_ca_is_refused(
    stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A certificate claiming payment's SPIFFE id, but issued by a CA of its own: the inbound
    listener refuses the handshake, so the clawback never reaches promotion's RBAC."""
    folder = Path(tmp_path_factory.mktemp("foreign-pki"))
    pki.ensure_certificates(folder, load_identities(), ["payment"])
    real = MeshTls.in_dir(stack.pki_dir)
    forged = dataclasses.replace(
        real, certificates={"payment": MeshTls.in_dir(folder).certificate("payment")}
    )
    envoy = admin(stack)
    rbac = "http.inbound_promotion_0.rbac.allowed"
    address = stack.topology().instance("promotion").inbound
    handshake = f"listener.{address.host}_{address.port}.ssl.fail_verify_error"
    before, failed = envoy.counter(rbac), envoy.counter(handshake)
    with as_identity(stack, "payment", "promotion", forged) as channel:
        assert claw_back(channel) == grpc.StatusCode.UNAVAILABLE
    assert envoy.counter(handshake) > failed, "the listener refused the certificate"
    assert envoy.counter(rbac) == before, "no request got as far as the authorization"
