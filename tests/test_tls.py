"""
Tests for L{yeti.tls}.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import stat

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from yeti.errors import ConfigError
from yeti.tls import context_factory, ensure_certificate


class _Echo(Protocol):
    """Echo bytes back; fire C{factory.lost} deferreds when the connection ends."""

    def connectionMade(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: object) -> None:
        self.lost.callback(None)


class _EchoFactory(Factory):
    protocol = _Echo

    def __init__(self) -> None:
        self.connections: list[_Echo] = []


def _client(
    port: int, cafile: str, minimum: ssl.TLSVersion, maximum: ssl.TLSVersion
) -> tuple[str, str, bytes]:
    """Handshake (blocking, in a thread), echo 4 bytes, return (version, cipher, echo)."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if minimum < ssl.TLSVersion.TLSv1_2:
        # OpenSSL 3 only offers TLS < 1.2 at security level 0.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = minimum
    ctx.maximum_version = maximum
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(b"ping")
            echoed = b""
            while len(echoed) < 4:
                chunk = tls.recv(4 - len(echoed))
                if not chunk:
                    break
                echoed += chunk
            version = tls.version()
            cipher = tls.cipher()
            assert version is not None and cipher is not None
            return version, cipher[0], echoed


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    """A certificate for C{subject}'s C{key}, signed by C{issuer_key}."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _root_intermediate_leaf(directory: str) -> tuple[str, str, str]:
    """
    Write a root CA, an intermediate and a leaf in C{directory}; return the
    paths of (leaf key, leaf + intermediate chain, root certificate).
    """
    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in "123")
    root = _issue("Test Root", root_key, "Test Root", root_key, ca=True)
    inter = _issue("Test Intermediate", inter_key, "Test Root", root_key, ca=True)
    leaf = _issue("localhost", leaf_key, "Test Intermediate", inter_key, ca=False)
    pem = serialization.Encoding.PEM
    os.makedirs(directory)
    files = {
        "leaf.key": leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "chain.pem": leaf.public_bytes(pem) + inter.public_bytes(pem),
        "root.pem": root.public_bytes(pem),
    }
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    key, chain, root_path = (os.path.join(directory, name) for name in files)
    return key, chain, root_path


class EnsureCertificateTests(TestCase):
    """
    Tests for L{ensure_certificate}.
    """

    def setUp(self) -> None:
        self.directory = os.path.join(self.mktemp(), "certs", "localhost")

    def test_creates(self) -> None:
        """
        The key and certificate are written into the (new) directory, the key
        readable by its owner only.
        """
        key_path, cert_path = ensure_certificate(self.directory)
        self.assertEqual(key_path, os.path.join(self.directory, "privkey.pem"))
        self.assertEqual(cert_path, os.path.join(self.directory, "cert.pem"))
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        with open(key_path, "rb") as f:
            self.assertIn(b"-----BEGIN PRIVATE KEY-----", f.read())
        self.assertEqual([n for n in os.listdir(self.directory) if n.startswith(".")], [])

    def test_reuses(self) -> None:
        """
        A second call returns the same files with the same bytes.
        """
        key_path, cert_path = ensure_certificate(self.directory)
        with open(key_path, "rb") as f:
            key = f.read()
        with open(cert_path, "rb") as f:
            cert = f.read()
        self.assertEqual(ensure_certificate(self.directory), (key_path, cert_path))
        with open(key_path, "rb") as f:
            self.assertEqual(f.read(), key)
        with open(cert_path, "rb") as f:
            self.assertEqual(f.read(), cert)

    def test_regenerates_when_missing(self) -> None:
        """
        If the certificate is gone, a new pair is generated that matches.
        """
        key_path, cert_path = ensure_certificate(self.directory)
        with open(key_path, "rb") as f:
            old_key = f.read()
        os.remove(cert_path)
        ensure_certificate(self.directory)
        with open(key_path, "rb") as f:
            self.assertNotEqual(f.read(), old_key)
        context_factory(key_path, cert_path)

    def test_names_and_validity(self) -> None:
        """
        The certificate is for localhost, 127.0.0.1 and ::1, valid now and for
        about a year.
        """
        _key, cert_path = ensure_certificate(self.directory)
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(
            set(san.get_values_for_type(x509.IPAddress)),
            {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")},
        )
        now = datetime.datetime.now(datetime.UTC)
        self.assertLess(cert.not_valid_before_utc, now)
        lifetime = cert.not_valid_after_utc - now
        self.assertGreater(lifetime, datetime.timedelta(days=360))
        self.assertLess(lifetime, datetime.timedelta(days=370))

    def test_unwritable(self) -> None:
        """
        A directory that cannot be created is a L{ConfigError} naming it.
        """
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        directory = os.path.join(blocker, "certs")
        error = self.assertRaises(ConfigError, ensure_certificate, directory)
        self.assertIn(directory, str(error))


class ContextFactoryErrorTests(TestCase):
    """
    L{context_factory} refuses unusable files with one line naming the file.
    """

    def setUp(self) -> None:
        self.key, self.cert = ensure_certificate(self.mktemp())

    def _write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def assertConfigError(self, key: str, cert: str, named: str, text: str) -> None:
        error = self.assertRaises(ConfigError, context_factory, key, cert)
        message = str(error)
        self.assertTrue(message.startswith(named + ":"), message)
        self.assertIn(text, message)
        self.assertNotIn("\n", message)

    def test_missing_key(self) -> None:
        """
        A key file that does not exist is named.
        """
        missing = self.mktemp()
        self.assertConfigError(missing, self.cert, missing, "cannot read")

    def test_missing_certificate(self) -> None:
        """
        A certificate file that does not exist is named.
        """
        missing = self.mktemp()
        self.assertConfigError(self.key, missing, missing, "cannot read")

    def test_bad_key(self) -> None:
        """
        A key file without a PEM key is named.
        """
        bad = self._write(b"not a key")
        self.assertConfigError(bad, self.cert, bad, "not a PEM private key")

    def test_bad_certificate(self) -> None:
        """
        A certificate file without a PEM certificate is named.
        """
        bad = self._write(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        self.assertConfigError(self.key, bad, bad, "not a PEM certificate")

    def test_encrypted_key(self) -> None:
        """
        A password-protected key is refused with a hint.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        encrypted = self._write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
        self.assertConfigError(encrypted, self.cert, encrypted, "encrypted")

    def test_mismatched_pair(self) -> None:
        """
        A key that does not belong to the certificate is refused.
        """
        other_key, _other_cert = ensure_certificate(self.mktemp())
        self.assertConfigError(other_key, self.cert, other_key, "does not match")


class HandshakeTests(TestCase):
    """
    Real TLS handshakes on loopback between a Twisted server using
    L{context_factory} and a stdlib C{ssl} client that verifies the server.
    """

    def serve(self, key: str, cert: str) -> tuple[int, _EchoFactory]:
        factory = _EchoFactory()
        port = reactor.listenSSL(0, factory, context_factory(key, cert), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, factory

    async def handshake(
        self,
        key: str,
        cert: str,
        cafile: str,
        minimum: ssl.TLSVersion,
        maximum: ssl.TLSVersion,
    ) -> tuple[str, str, bytes]:
        """Run one client; wait for the server side to close before returning."""
        port, factory = self.serve(key, cert)
        try:
            return await deferToThread(_client, port, cafile, minimum, maximum)
        finally:
            for connection in factory.connections:
                await connection.lost

    async def test_tls12(self) -> None:
        """
        A TLS 1.2 client gets an ECDHE AEAD cipher and a working connection.
        """
        key, cert = ensure_certificate(self.mktemp())
        version, cipher, echoed = await self.handshake(
            key, cert, cert, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2
        )
        self.assertEqual(version, "TLSv1.2")
        self.assertTrue(cipher.startswith("ECDHE-"), cipher)
        self.assertTrue("GCM" in cipher or "CHACHA20" in cipher, cipher)
        self.assertEqual(echoed, b"ping")

    async def test_tls13(self) -> None:
        """
        A client allowing any version negotiates TLS 1.3, with the server's
        first choice of suite, AES-128-GCM (smaller per connection than
        OpenSSL's default first choice, AES-256-GCM).
        """
        key, cert = ensure_certificate(self.mktemp())
        version, cipher, echoed = await self.handshake(
            key, cert, cert, ssl.TLSVersion.MINIMUM_SUPPORTED, ssl.TLSVersion.MAXIMUM_SUPPORTED
        )
        self.assertEqual(version, "TLSv1.3")
        self.assertEqual(cipher, "TLS_AES_128_GCM_SHA256")
        self.assertEqual(echoed, b"ping")

    async def test_tls11_refused(self) -> None:
        """
        A client offering at most TLS 1.1 is refused by the server with a
        protocol_version alert.
        """
        key, cert = ensure_certificate(self.mktemp())
        error = None
        try:
            await self.handshake(key, cert, cert, ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
        except ssl.SSLError as e:
            error = e
        self.assertIsNotNone(error)
        self.assertEqual(error.reason, "TLSV1_ALERT_PROTOCOL_VERSION")

    async def test_chain(self) -> None:
        """
        The intermediates in the certificate file are sent, so a client that
        trusts only the root CA verifies the server.
        """
        key, chain, root = _root_intermediate_leaf(self.mktemp())
        _version, _cipher, echoed = await self.handshake(
            key, chain, root, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED
        )
        self.assertEqual(echoed, b"ping")
