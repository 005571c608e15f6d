"""
TLS: a self-signed development certificate and the server context factory.

The server speaks TLS 1.2 and 1.3 only, with forward-secret AEAD ciphers.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion

from yeti.errors import ConfigError

KEY_FILE = "privkey.pem"
CERT_FILE = "cert.pem"

# TLS 1.2 suites; the TLS 1.3 suites (all AEAD) are set separately.
_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
# OpenSSL's TLS 1.3 suites with AES-128-GCM first instead of AES-256-GCM:
# its cipher and SHA-256 contexts make an established connection about
# 0.2 KiB smaller, and it encrypts with 10 AES rounds instead of 14.
_TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
_VALIDITY = datetime.timedelta(days=365)


def ensure_certificate(cert_dir: str) -> tuple[str, str]:
    """
    Return (key path, certificate path) of a self-signed localhost certificate.

    The pair is created in C{cert_dir} on first use and reused afterwards; it
    is regenerated only if one of the files is missing. Files are written to a
    temporary name and renamed, so a crash never leaves half a file.

    @raise ConfigError: if the directory or the files cannot be written.
    """
    key_path = os.path.join(cert_dir, KEY_FILE)
    cert_path = os.path.join(cert_dir, CERT_FILE)
    if os.path.isfile(key_path) and os.path.isfile(cert_path):
        return key_path, cert_path
    key, cert = _self_signed(datetime.datetime.now(datetime.UTC))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        os.makedirs(cert_dir, mode=0o700, exist_ok=True)
        # The key first: a crash between the two leaves no certificate, so the
        # next start generates a fresh pair.
        _write_atomically(key_path, key_pem, 0o600)
        _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as e:
        raise ConfigError(f"{cert_dir}: cannot write certificate: {e.strerror or e}") from None
    return key_path, cert_path


def _self_signed(now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """An EC P-256 key and a certificate for localhost, 127.0.0.1 and ::1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    directory = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def context_factory(key_path: str, cert_path: str) -> CertificateOptions:
    """
    Build the server's TLS options from a PEM key and a PEM certificate chain.

    The certificate file holds the server certificate first, then any
    intermediates.

    @raise ConfigError: naming the file, if it cannot be read or parsed, or
        if the key does not match the certificate.
    """
    key = _load_key(key_path)
    chain = _load_chain(cert_path)
    if _public_der(key.public_key()) != _public_der(chain[0].public_key()):
        raise ConfigError(f"{key_path}: private key does not match the certificate {cert_path}")
    options = CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(_CIPHERS),
    )
    # CertificateOptions makes its context once and gives it to every connection.
    options.getContext().set_tls13_ciphersuites(_TLS13_SUITES)
    return options


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None


def _load_key(path: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"{path}: the private key is encrypted; give it without a password"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{path}: not a PEM private key") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ConfigError(f"{path}: unsupported key type; use RSA or ECDSA")
    return key


def _load_chain(path: str) -> list[x509.Certificate]:
    data = _read(path)
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{path}: not a PEM certificate") from None
    if not chain:
        raise ConfigError(f"{path}: no certificate found")
    return chain


def _public_der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
