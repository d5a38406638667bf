"""The local mesh's certificate authority: one CA and a certificate per identity.

In a cluster istiod is the CA and each sidecar's agent gets its pod a short-lived certificate
for the pod's service account. On one machine `make up` plays that part once per start:
`ensure_certificates(folder, identities, names)` keeps, in the run folder,

    pki/ca.pem, pki/ca-key.pem (0600)        the local CA (ECDSA P-256)
    pki/<name>.pem, pki/<name>-key.pem       one leaf per service and one for `gateway`

Each leaf carries the identity's SPIFFE id as its URI SAN, as Istio's do (and a DNS name, see
mesh.security.MeshIdentities.dns_name). Files are reused across `up`/`down` and renewed when
they are near expiry, were issued by another CA, or name another identity (the trust domain
changed); a renewed CA renews every leaf. Envoy reads the files when it starts, so renewal
happens at `up`, not while the system runs: the validity leaves a margin for a long session.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.security import CA_CERT, MeshIdentities, certificate_in

__all__ = [
    "CA_KEY",
    "CA_RENEW_BEFORE",
    "CA_VALIDITY",
    "LEAF_RENEW_BEFORE",
    "LEAF_VALIDITY",
    "Issued",
    "ensure_certificates",
    "make_ca",
]

CA_KEY: Final = "ca-key.pem"
#: The CA outlives many leaves; it is renewed (with every leaf) when this close to its end.
CA_VALIDITY: Final = dt.timedelta(days=90)
CA_RENEW_BEFORE: Final = dt.timedelta(days=14)
#: Short-lived like Istio's (a day there, rotated by the agent); a week here, as nothing
#: rotates them while the system runs. Renewed at `up` when less than this is left.
LEAF_VALIDITY: Final = dt.timedelta(days=7)
LEAF_RENEW_BEFORE: Final = dt.timedelta(days=2)
#: Clock skew between this process and a verifier: certificates are valid from a bit earlier.
BACKDATE: Final = dt.timedelta(minutes=5)


@dataclass
class Issued:
    """What `ensure_certificates` did: the names it (re)issued and those it kept."""

    ca_renewed: bool = False
    issued: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with `mode` from the start (a key is never readable by others, not
    even for a moment)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def make_ca(
    folder: str | Path,
    *,
    organization: str = "cluster.local",
    now: dt.datetime | None = None,
    validity: dt.timedelta = CA_VALIDITY,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new CA in `folder` (ca.pem, ca-key.pem 0600), replacing any there. Named like
    Istio's self-signed root (O=<trust domain>)."""
    base = Path(folder)
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    start = (now or _now()) - BACKDATE
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, "phoneseller local mesh CA"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(base / CA_KEY, _key_pem(key), 0o600)
    _write(base / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _issue(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    name: str,
    spiffe_id: str,
    dns_name: str,
    now: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    start = now - BACKDATE
    # A leaf never outlives its CA.
    end = min(start + LEAF_VALIDITY, ca.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        # The identity: Istio marks the SAN critical (its certificates have no subject).
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe_id), x509.DNSName(dns_name)]
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _usable_ca(
    folder: Path, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    cert, key = _load_cert(folder / CA_CERT), _load_key(folder / CA_KEY)
    if cert is None or key is None or not _same_key(cert, key):
        return None
    if cert.not_valid_after_utc - now < CA_RENEW_BEFORE:
        return None
    return cert, key


def _usable_leaf(
    cert_path: Path,
    key_path: Path,
    ca: x509.Certificate,
    spiffe_id: str,
    dns_name: str,
    now: dt.datetime,
) -> bool:
    cert, key = _load_cert(cert_path), _load_key(key_path)
    if cert is None or key is None or not _same_key(cert, key):
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if san.get_values_for_type(x509.UniformResourceIdentifier) != [spiffe_id]:
        return False
    if san.get_values_for_type(x509.DNSName) != [dns_name]:
        return False
    return cert.not_valid_after_utc - now >= LEAF_RENEW_BEFORE


def ensure_certificates(
    folder: str | Path,
    identities: MeshIdentities,
    names: Iterable[str],
    *,
    now: dt.datetime | None = None,
) -> Issued:
    """Make sure `folder` holds a usable CA and, for each name (a service or `gateway`), a
    certificate of that identity issued by it; (re)issue what is missing, expiring or wrong."""
    base = Path(folder)
    when = now or _now()
    report = Issued()
    usable = _usable_ca(base, when)
    if usable is None:
        usable = make_ca(base, organization=identities.trust_domain, now=when)
        report.ca_renewed = True
    ca, ca_key = usable
    for name in names:
        paths = certificate_in(base, name)
        spiffe_id, dns_name = identities.spiffe_id(name), identities.dns_name(name)
        if _usable_leaf(paths.cert, paths.key, ca, spiffe_id, dns_name, when):
            report.kept.append(name)
            continue
        cert, key = _issue(ca, ca_key, name, spiffe_id, dns_name, when)
        # The key first: a certificate is never on disk without its key.
        _write(paths.key, _key_pem(key), 0o600)
        _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        report.issued.append(name)
    return report
