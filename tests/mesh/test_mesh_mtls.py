"""Service identity in the local mesh: mTLS between the proxies and RBAC on the inbound side.

Rendered: without certificates nothing changes (plaintext); with them every cluster to an
inbound listener presents its caller's certificate and checks the destination's SPIFFE id,
and every inbound listener requires a client certificate and carries the values' RBAC.

Live, on the real Envoy between real grpc.aio servers, with a CA made for the test (and a
second, foreign CA): plaintext to an inbound listener is refused; store's identity calling
ClawBackPoints gets PERMISSION_DENIED, payment's succeeds; a certificate of another CA is
refused; the caller's sidecar refuses a destination that presents the wrong identity.

The certificates themselves (stack/pki.py): reused while valid, renewed near expiry, renewed
with the CA, keys readable by their owner only.
"""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from google.rpc import error_details_pb2, status_pb2

from mesh.envoy import RenderError, RenderOptions, render_envoy_config, write_envoy_config
from mesh.policy import MeshPolicy
from mesh.process import validate_config
from mesh.security import (
    CALLER_NOT_ALLOWED,
    GATEWAY,
    LOCAL_NAMESPACE,
    MeshIdentities,
    MeshTls,
    callers_of_sidecars,
    load_identities,
)
from mesh.testing import FakeBackend, MeshHarness, call_unary, local_topology
from mesh.topology import GRPC_SERVICES, INTERNAL_METHODS, PUBLIC_METHODS, Topology
from services.kit.catalog import catalog, parse_catalog
from stack import pki

CLAW = "/phoneseller.promotion.v1.PromotionService/ClawBackPoints"
GRANT = "/phoneseller.promotion.v1.PromotionService/GetPointGrant"
BALANCE = "/phoneseller.promotion.v1.PromotionService/GetPointBalance"
PAY = "/phoneseller.payment.v1.PaymentService/Pay"
HEALTH = "/grpc.health.v1.Health/Check"
NAMES = (*catalog().names, GATEWAY)
#: What a refused TLS handshake looks like to a gRPC client: the connection never opens.
REFUSED = grpc.StatusCode.UNAVAILABLE


def methods(service: str) -> list[str]:
    full = GRPC_SERVICES[service]
    return [p for p in (*PUBLIC_METHODS, *INTERNAL_METHODS) if p.startswith(f"/{full}/")]


@pytest.fixture(scope="module")
def identities() -> MeshIdentities:
    return load_identities()


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory, identities: MeshIdentities) -> Path:
    """A CA of this test module and a certificate for every service and the gateway."""
    folder = tmp_path_factory.mktemp("pki")
    pki.ensure_certificates(folder, identities, NAMES)
    return folder


@pytest.fixture(scope="module")
def foreign_dir(tmp_path_factory: pytest.TempPathFactory, identities: MeshIdentities) -> Path:
    """Another CA, with a certificate that claims payment's identity."""
    folder = tmp_path_factory.mktemp("foreign-pki")
    pki.ensure_certificates(folder, identities, ["payment"])
    return folder


@pytest.fixture(scope="module")
def tls(pki_dir: Path) -> MeshTls:
    return MeshTls.in_dir(pki_dir)


def mtls_channel(
    address: str, tls: MeshTls, client: str | None, server: str, *, ca: Path | None = None
) -> grpc.aio.Channel:
    """A channel to an inbound listener of `server`, presenting `client`'s certificate (None:
    none), checking the server's certificate against the mesh's CA (or `ca`)."""
    cert = tls.certificate(client) if client is not None else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(ca or tls.ca).read_bytes(),
        private_key=cert.key.read_bytes() if cert else None,
        certificate_chain=cert.cert.read_bytes() if cert else None,
    )
    # The listener's certificate names the service's Kubernetes DNS name (and its SPIFFE id).
    name = tls.identities.dns_name(server)
    return grpc.aio.secure_channel(address, credentials, [("grpc.ssl_target_name_override", name)])


def listeners(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in config["static_resources"]["listeners"]}


def clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in config["static_resources"]["clusters"]}


def tls_context(socket: dict[str, Any]) -> dict[str, Any]:
    assert socket["name"] == "envoy.transport_sockets.tls"
    context: dict[str, Any] = socket["typed_config"]
    return context


def http_filters(listener: dict[str, Any]) -> list[dict[str, Any]]:
    (chain,) = listener["filter_chains"]
    found: list[dict[str, Any]] = chain["filters"][0]["typed_config"]["http_filters"]
    return found


def every_service() -> Topology:
    """One instance of every service (never started: for rendering) and both sidecars."""
    return local_topology(
        {name: [f"127.0.0.1:{50051 + i}"] for i, name in enumerate(GRPC_SERVICES)}
    )


# --- Rendered --------------------------------------------------------------------------------


def test_without_certificates_the_mesh_stays_plaintext(policy: MeshPolicy, tmp_path: Path) -> None:
    config = render_envoy_config(policy, every_service(), None)
    for listener in listeners(config).values():
        assert "transport_socket" not in listener["filter_chains"][0]
        names = [f["name"] for f in http_filters(listener)]
        if listener["name"].startswith("inbound|"):
            assert "envoy.filters.http.rbac" not in names
    for cluster in clusters(config).values():
        assert "transport_socket" not in cluster


def test_every_hop_between_proxies_is_mutual_tls(
    policy: MeshPolicy, tls: MeshTls, identities: MeshIdentities, tmp_path: Path
) -> None:
    """Each cluster to an inbound listener presents its caller's certificate (the gateway's,
    or the one caller of the sidecar it belongs to) and accepts only the destination's SPIFFE
    id; each inbound listener presents its service's certificate and requires the client's."""
    topo = every_service()
    config = render_envoy_config(policy, topo, None, options=RenderOptions(mtls=tls))
    caller_of = callers_of_sidecars(catalog())
    assert caller_of == {"payment": "order", "promotion": "payment"}
    seen = set()
    for name, cluster in clusters(config).items():
        side, service = name.split("|")[:2]
        if side == "inbound":
            assert "transport_socket" not in cluster, "the service's own port is plaintext"
            continue
        client = GATEWAY if side == "gateway" else caller_of[service]
        context = tls_context(cluster["transport_socket"])["common_tls_context"]
        (certificate,) = context["tls_certificates"]
        assert certificate["certificate_chain"]["filename"] == str(tls.certificate(client).cert)
        assert certificate["private_key"]["filename"] == str(tls.certificate(client).key)
        validation = context["validation_context"]
        assert validation["trusted_ca"]["filename"] == str(tls.ca)
        assert validation["match_typed_subject_alt_names"] == [
            {"san_type": "URI", "matcher": {"exact": identities.spiffe_id(service)}}
        ]
        assert context["alpn_protocols"] == ["h2"]
        # The active health check keeps going straight to the plaintext service port.
        (check,) = cluster["health_checks"]
        criteria = check["transport_socket_match_criteria"]
        (plain,) = [m for m in cluster["transport_socket_matches"] if m["match"] == criteria]
        assert plain["transport_socket"]["name"] == "envoy.transport_sockets.raw_buffer"
        seen.add(name)
    assert {"outbound|promotion|clawback", "outbound|payment", "gateway|store"} <= seen
    for inst in topo.all_instances():
        listener = listeners(config)[f"inbound|{inst.service}|{inst.index}"]
        (chain,) = listener["filter_chains"]
        context = tls_context(chain["transport_socket"])
        assert context["require_client_certificate"] is True
        (certificate,) = context["common_tls_context"]["tls_certificates"]
        assert certificate["certificate_chain"]["filename"] == str(
            tls.certificate(inst.service).cert
        )
        names = [f["name"] for f in http_filters(listener)]
        assert names[0] == "envoy.filters.http.rbac", "authorization before the fault"
        assert names[-1] == "envoy.filters.http.router"


def rbac_grants(listener: dict[str, Any]) -> set[tuple[str, str]]:
    """(source, path) pairs an inbound listener's RBAC allows; source = SPIFFE id or
    "ns:<regex>", path = exact or "<prefix>*"."""
    (rbac,) = [f for f in http_filters(listener) if f["name"] == "envoy.filters.http.rbac"]
    rules = rbac["typed_config"]["rules"]
    assert rules["action"] == "ALLOW"
    pairs = set()
    for policy in rules["policies"].values():
        paths = [
            m["url_path"]["path"].get("exact") or m["url_path"]["path"]["prefix"] + "*"
            for p in policy["permissions"]
            for m in p["or_rules"]["rules"]
        ]
        sources = [
            i["authenticated"]["principal_name"].get("exact")
            or "ns:" + i["authenticated"]["principal_name"]["safe_regex"]["regex"]
            for p in policy["principals"]
            for i in p["or_ids"]["ids"]
        ]
        pairs |= {(s, p) for s in sources for p in paths}
    return pairs


def test_the_clawback_is_allowed_to_payments_identity_only(
    policy: MeshPolicy, tls: MeshTls, identities: MeshIdentities, tmp_path: Path
) -> None:
    config = render_envoy_config(policy, every_service(), None, options=RenderOptions(mtls=tls))
    promotion = rbac_grants(listeners(config)["inbound|promotion|0"])
    assert {s for s, p in promotion if p == CLAW} == {identities.spiffe_id("payment")}
    assert {s for s, p in promotion if p == BALANCE} == {identities.spiffe_id(GATEWAY)}
    payment = rbac_grants(listeners(config)["inbound|payment|0"])
    assert {s for s, p in payment if p == PAY} == {identities.spiffe_id("order")}
    store = rbac_grants(listeners(config)["inbound|store|0"])
    assert not {p for s, p in store if s == identities.spiffe_id("payment")}, (
        "payment calls no store"
    )
    # The namespace's identities may ask for health and reflection, as the chart allows.
    namespace = f"ns:.*/ns/{LOCAL_NAMESPACE}/.*"
    assert (namespace, "/grpc.health.v1.Health/*") in store


def test_envoy_accepts_the_mtls_configuration(
    policy: MeshPolicy, tls: MeshTls, tmp_path: Path, envoy_available: Path
) -> None:
    config = render_envoy_config(policy, every_service(), None, options=RenderOptions(mtls=tls))
    validate_config(write_envoy_config(config, tmp_path / "envoy.yaml"))


def test_a_service_with_two_callers_is_refused_rather_than_given_one_identity() -> None:
    values: dict[str, Any] = {
        "services": {
            "a": {"localPort": 1, "grpcService": "x.A", "callers": {}},
            "b": {"localPort": 2, "grpcService": "x.B", "callers": {}},
            "c": {"localPort": 3, "grpcService": "x.C", "callers": {"a": ["M"], "b": ["M"]}},
        }
    }
    with pytest.raises(ValueError, match="several callers"):
        callers_of_sidecars(parse_catalog(values))


def test_a_sidecar_of_a_service_nobody_calls_is_refused(
    policy: MeshPolicy, tls: MeshTls, tmp_path: Path
) -> None:
    topo = local_topology({"store": ["127.0.0.1:50054"]}, sidecars=("store",))
    with pytest.raises(RenderError, match="no service calls it"):
        render_envoy_config(policy, topo, None, options=RenderOptions(mtls=tls))


# --- Live ------------------------------------------------------------------------------------


@pytest.fixture
async def promotion(tmp_path: Path) -> Any:
    async with FakeBackend("promotion", methods("promotion")) as backend:
        yield backend


async def start(
    start_mesh: Any, policy: MeshPolicy, backend: FakeBackend, tls: MeshTls
) -> MeshHarness:
    topo = local_topology({"promotion": [backend.address]}, sidecars=("promotion",))
    mesh: MeshHarness = await start_mesh(policy, topo, options=RenderOptions(mtls=tls))
    # Envoy's health checks pass: they go to the plaintext service port, outside mTLS.
    for cluster in ("outbound|promotion", "outbound|promotion|clawback", "gateway|promotion"):
        await mesh.wait_healthy(cluster, 1)
    return mesh


def inbound(mesh: MeshHarness) -> str:
    return str(mesh.topology.instance("promotion").inbound)


async def refusal(channel: grpc.aio.Channel, path: str) -> tuple[grpc.StatusCode, str, str]:
    """Call `path`, expecting an error: its code and its ErrorInfo's reason and "service"."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(path)(b"", timeout=5)
    error = raised.value
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(raw, bytes), f"{error.code()} without grpc-status-details-bin"
    status = status_pb2.Status.FromString(raw)
    assert status.code == error.code().value[0]
    assert status.message == error.details(), "the header and grpc-message must agree"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "phoneseller"
    return error.code(), info.reason, info.metadata["service"]


async def test_payments_sidecar_calls_promotion_over_mtls_as_payment(
    policy: MeshPolicy, tls: MeshTls, start_mesh: Any, promotion: FakeBackend
) -> None:
    """The caller talks plaintext to its sidecar listener (as to a sidecar in its pod); the
    sidecar presents payment's certificate, and promotion's inbound side lets payment call
    what the values allow it, and nothing else. The service learns who called."""
    seen: list[str] = []

    async def claw(request: bytes, context: Any) -> bytes:
        seen.extend(v for k, v in context.invocation_metadata() if k == "x-forwarded-client-cert")
        return b""

    promotion.handlers[CLAW] = claw
    mesh = await start(start_mesh, policy, promotion, tls)
    async with grpc.aio.insecure_channel(mesh.address("promotion")) as channel:
        claw_back = await call_unary(channel, CLAW)
        grant = await call_unary(channel, GRANT)
        balance = await call_unary(channel, BALANCE)
    assert claw_back.ok, claw_back
    assert grant.ok, grant
    assert balance.code == grpc.StatusCode.PERMISSION_DENIED, "payment may not read balances"
    assert promotion.calls[BALANCE] == 0
    (xfcc,) = seen
    assert f"URI={tls.identities.spiffe_id('payment')}" in xfcc


async def test_plaintext_to_an_inbound_listener_is_refused(
    policy: MeshPolicy, tls: MeshTls, start_mesh: Any, promotion: FakeBackend
) -> None:
    mesh = await start(start_mesh, policy, promotion, tls)
    async with grpc.aio.insecure_channel(inbound(mesh)) as channel:
        result = await call_unary(channel, CLAW, deadline=3)
    assert result.code == REFUSED, result
    assert promotion.total_calls == 0


async def test_stores_identity_may_not_claw_back_points_and_payments_may(
    policy: MeshPolicy, tls: MeshTls, start_mesh: Any, promotion: FakeBackend
) -> None:
    """The policy "ClawBackPoints only from payment", on the real Envoy: the same call with
    store's certificate is denied before it reaches promotion, with payment's it goes through;
    the gateway's identity may call the public method and not the clawback."""
    mesh = await start(start_mesh, policy, promotion, tls)
    address = inbound(mesh)
    async with mtls_channel(address, tls, "store", "promotion") as channel:
        denied = await refusal(channel, CLAW)
        health = await call_unary(channel, HEALTH)
    # As the gateway's own refusals: a proper error, naming the mesh as the one that refused.
    assert denied == (grpc.StatusCode.PERMISSION_DENIED, CALLER_NOT_ALLOWED.reason, "mesh")
    assert promotion.calls[CLAW] == 0
    assert health.ok, "any identity of the namespace may ask for health"
    async with mtls_channel(address, tls, "payment", "promotion") as channel:
        allowed = await call_unary(channel, CLAW)
    assert allowed.ok, allowed
    assert promotion.calls[CLAW] == 1
    async with mtls_channel(address, tls, GATEWAY, "promotion") as channel:
        public = await call_unary(channel, BALANCE)
        internal = await call_unary(channel, CLAW)
    assert public.ok, public
    assert internal.code == grpc.StatusCode.PERMISSION_DENIED, internal
    assert promotion.calls[CLAW] == 1
    denied_stat = "http.inbound_promotion_0.rbac.denied"
    assert (await mesh.admin.stats_async("rbac"))[denied_stat] == 2


async def test_a_certificate_of_another_ca_or_none_is_refused(
    policy: MeshPolicy,
    tls: MeshTls,
    foreign_dir: Path,
    start_mesh: Any,
    promotion: FakeBackend,
) -> None:
    """A certificate that claims payment's SPIFFE id but was issued by another CA does not
    open a connection; neither does a client without a certificate."""
    mesh = await start(start_mesh, policy, promotion, tls)
    foreign = MeshTls.in_dir(foreign_dir)
    # Trust the real CA (so the server's certificate checks out) but present the foreign one.
    forged = dataclasses.replace(tls, certificates={"payment": foreign.certificate("payment")})
    async with mtls_channel(inbound(mesh), forged, "payment", "promotion") as channel:
        result = await call_unary(channel, CLAW, deadline=3)
    assert result.code == REFUSED, result
    async with mtls_channel(inbound(mesh), tls, None, "promotion") as channel:
        anonymous = await call_unary(channel, CLAW, deadline=3)
    assert anonymous.code == REFUSED, anonymous
    assert promotion.total_calls == 0
    # It is the inbound listener that refused, in the handshake (not the client giving up).
    address = mesh.topology.instance("promotion").inbound
    prefix = f"listener.{address.host}_{address.port}.ssl."
    ssl = {k.removeprefix(prefix): v for k, v in (await mesh.admin.stats_async("ssl")).items()}
    assert ssl.get("fail_verify_error", 0) >= 1, ssl
    assert ssl.get("fail_verify_no_cert", 0) >= 1, ssl


async def test_the_sidecar_refuses_a_destination_with_the_wrong_identity(
    policy: MeshPolicy, tls: MeshTls, start_mesh: Any, promotion: FakeBackend
) -> None:
    """As ISTIO_MUTUAL checks the destination's service account: if promotion's inbound side
    presented store's certificate, payment's sidecar would not send it the clawback."""
    impostor = dataclasses.replace(
        tls, certificates={**tls.certificates, "promotion": tls.certificate("store")}
    )
    mesh = await start(start_mesh, policy, promotion, impostor)
    async with grpc.aio.insecure_channel(mesh.address("promotion")) as channel:
        result = await call_unary(channel, CLAW, deadline=3)
    assert result.code == grpc.StatusCode.UNAVAILABLE, result
    assert promotion.total_calls == 0
    stats = await mesh.admin.cluster_stats_async("outbound|promotion|clawback")
    assert stats["ssl.fail_verify_san"] >= 1


# --- The certificates (stack/pki.py) ---------------------------------------------------------


def leaf(folder: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((folder / f"{name}.pem").read_bytes())


def test_certificates_carry_the_charts_identities(
    pki_dir: Path, identities: MeshIdentities
) -> None:
    for name in NAMES:
        san = leaf(pki_dir, name).extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert san.critical
        (uri,) = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        assert uri == identities.spiffe_id(name)
    assert identities.spiffe_id("payment") == (
        "spiffe://cluster.local/ns/shop/sa/phoneseller-payment"
    )
    assert identities.spiffe_id(GATEWAY) == (
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
    )


def test_keys_are_readable_by_their_owner_only(pki_dir: Path) -> None:
    assert stat.S_IMODE(pki_dir.stat().st_mode) == 0o700
    for key in [pki_dir / pki.CA_KEY, *(pki_dir / f"{n}-key.pem" for n in NAMES)]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


@pytest.fixture
def fresh(tmp_path: Path, identities: MeshIdentities) -> Path:
    pki.ensure_certificates(tmp_path, identities, ["order", "payment"])
    return tmp_path


def test_certificates_are_reused_until_near_expiry(fresh: Path, identities: MeshIdentities) -> None:
    before = leaf(fresh, "order").serial_number
    again = pki.ensure_certificates(fresh, identities, ["order", "payment"])
    assert (again.ca_renewed, again.issued) == (False, [])
    assert leaf(fresh, "order").serial_number == before
    near_end = leaf(fresh, "order").not_valid_after_utc - pki.LEAF_RENEW_BEFORE / 2
    later = pki.ensure_certificates(fresh, identities, ["order", "payment"], now=near_end)
    assert (later.ca_renewed, sorted(later.issued)) == (False, ["order", "payment"])
    assert leaf(fresh, "order").not_valid_after_utc > near_end + pki.LEAF_RENEW_BEFORE


def test_a_renewed_ca_renews_every_certificate(fresh: Path, identities: MeshIdentities) -> None:
    ca = x509.load_pem_x509_certificate((fresh / "ca.pem").read_bytes())
    near_end = ca.not_valid_after_utc - pki.CA_RENEW_BEFORE / 2
    report = pki.ensure_certificates(fresh, identities, ["order", "payment"], now=near_end)
    assert report.ca_renewed
    assert sorted(report.issued) == ["order", "payment"]
    renewed = x509.load_pem_x509_certificate((fresh / "ca.pem").read_bytes())
    leaf(fresh, "order").verify_directly_issued_by(renewed)


def test_another_identity_gets_a_new_certificate(fresh: Path, identities: MeshIdentities) -> None:
    other = dataclasses.replace(identities, trust_domain="example.org")
    report = pki.ensure_certificates(fresh, other, ["order"])
    assert report.issued == ["order"]
    san = leaf(fresh, "order").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/ns/shop/sa/phoneseller-order"
    ]
