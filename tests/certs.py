# -*- test-case-name: tests.test_tls -*-
"""
Certificates for tests, made when the tests run.

Nothing is checked in: a private key in the repository would be copied into
real deployments sooner or later, and a checked-in certificate expires.
Keys are P-256, which are made in microseconds, so every test can have its
own authority.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateAuthority", "Issued"]

_PEM = serialization.Encoding.PEM


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=2)
    )


@attrs.frozen
class Issued:
    """
    A server certificate and its private key, both PEM.
    """

    certificate: bytes
    key: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """
        Write C{STEM.crt} and C{STEM.key} into C{directory}, as C{ssl:}
        endpoints want them.

        @return: The certificate's path and the key's path.
        """
        cert_path = directory / f"{stem}.crt"
        key_path = directory / f"{stem}.key"
        cert_path.write_bytes(self.certificate)
        key_path.write_bytes(self.key)
        return cert_path, key_path

    def write_pem(self, directory: Path, stem: str) -> Path:
        """
        Write key and certificate into one C{STEM.pem}, as Twisted's C{tls:}
        endpoint reads a directory of them.
        """
        path = directory / f"{stem}.pem"
        path.write_bytes(self.key + self.certificate)
        return path


class CertificateAuthority:
    """
    A throwaway certificate authority that issues server certificates.

    @ivar certificate: The authority's own certificate, PEM, for clients to
        trust.
    """

    def __init__(self, common_name: str = "txrevproxy test CA") -> None:
        self._key = _key()
        self._name = _name(common_name)
        builder = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
        )
        self._certificate = _validity(builder).sign(self._key, hashes.SHA256())
        self.certificate = self._certificate.public_bytes(_PEM)

    def issue(
        self, dns_names: Sequence[str] = ("localhost",), ip_addresses: Sequence[str] = ("127.0.0.1",)
    ) -> Issued:
        """
        A server certificate for the given DNS names and IP addresses (as
        subject alternative names; the first DNS name is also the common
        name).
        """
        key = _key()
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        common = dns_names[0] if dns_names else ip_addresses[0]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        certificate = _validity(builder).sign(self._key, hashes.SHA256())
        return Issued(certificate.public_bytes(_PEM), _key_pem(key))

    def write(self, directory: Path, stem: str = "ca") -> Path:
        """
        Write the authority's certificate to C{STEM.crt} in C{directory}.
        """
        path = directory / f"{stem}.crt"
        path.write_bytes(self.certificate)
        return path
