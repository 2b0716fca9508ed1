"""Client certificates (trustme makes the CAs): a listener with --cafile --require-certificate
refuses, at the handshake, a client without a certificate and one whose certificate another CA
signed; --use-identity-as-username makes the certificate's CN the user name the ACL sees, and
--use-subject-as-username its whole subject, written as OpenSSL's RFC 2253 form (Mosquitto's);
the library's authenticate hook sees the certificate."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_raw import PINGREQ_BYTES, PINGRESP, connect, publish

from tests.conftest import BrokerProc, require_program, start_broker, stop_broker

trustme = pytest.importorskip("trustme")


class Certs:
    """Files of one test module: the server's, a client's of the same CA, one of another CA."""

    def __init__(self, d: Path) -> None:
        ca, other = trustme.CA(), trustme.CA()
        self.server = d / "server.pem"
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(self.server))
        self.ca = d / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        self.alice = self._client(ca, d / "alice", "alice", "Plant")
        self.stranger = self._client(other, d / "stranger", "alice", "Plant")

    @staticmethod
    def _client(ca: object, base: Path, cn: str, org: str) -> tuple[Path, Path]:
        leaf = ca.issue_cert(f"{cn}@example.org", common_name=cn, organization_name=org)  # type: ignore[attr-defined]
        cert, key = base.with_suffix(".crt"), base.with_suffix(".key")
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


ACL = "user alice\ntopic readwrite alice/#\n"


@pytest.fixture(scope="module")
def strict(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProc]:
    acl = tmp_path_factory.mktemp("acl") / "acl"
    acl.write_text(ACL)
    b = start_broker(
        "--certfile", str(certs.server), "--cafile", str(certs.ca), "--require-certificate",
        "--use-identity-as-username", "--acl-file", str(acl),
    )  # fmt: skip
    try:
        yield b
    finally:
        stop_broker(b)


def _tls(port: int, certs: Certs, client: tuple[Path, Path] | None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    # TLS 1.3 reports a refused client certificate on the first read, not in the handshake
    return tls


def _connack(tls: ssl.SSLSocket, cid: str, level: int = 5) -> int:
    tls.sendall(connect(cid, level=level))
    data = tls.recv(64)
    if not data:
        raise ConnectionResetError("closed")
    return data[3]  # CONNACK: 20 LEN FLAGS CODE


@pytest.mark.parametrize("who", ["none", "stranger"])
def test_a_client_without_a_good_certificate_is_refused_at_the_handshake(
    strict: BrokerProc, certs: Certs, who: str
) -> None:
    client = None if who == "none" else certs.stranger
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        tls = _tls(strict.port, certs, client)
        _connack(tls, f"refused-{who}")  # no MQTT byte ever comes back


def test_the_certificate_cn_is_the_user_name(strict: BrokerProc, certs: Certs) -> None:
    """No user name or password in CONNECT: the CN 'alice' is who the ACL sees."""
    tls = _tls(strict.port, certs, certs.alice)
    try:
        assert _connack(tls, "alice-dev") == 0
        # alice may publish to alice/#, not elsewhere: PUBACK 0x87 [MQTT-3.4.2.1]
        tls.sendall(publish("bob/x", b"x", qos=1, pid=3, level=5))
        ack = tls.recv(64)
        assert ack[0] == 0x40 and ack[4] == 0x87, ack.hex()
        tls.sendall(publish("alice/x", b"x", qos=1, pid=4, level=5))
        ack = tls.recv(64)
        assert ack[0] == 0x40 and (len(ack) == 4 or ack[4] == 0), ack.hex()
        tls.sendall(PINGREQ_BYTES)
        assert tls.recv(2)[0] >> 4 == PINGRESP
    finally:
        tls.close()


def test_real_clients_with_certificates(strict: BrokerProc, certs: Certs) -> None:
    pub = require_program("mosquitto_pub")
    base = [pub, "-h", "127.0.0.1", "-p", str(strict.port), "--cafile", str(certs.ca),
            "-q", "1", "-m", "hi", "-i", "mosq-alice"]  # fmt: skip
    ok = subprocess.run(
        [*base, "--cert", str(certs.alice[0]), "--key", str(certs.alice[1]), "-t", "alice/m"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run([*base, "-t", "alice/m"], capture_output=True, text=True, timeout=20)
    assert refused.returncode != 0


def test_subject_as_user_name_is_openssl_rfc2253(certs: Certs, tmp_path: Path) -> None:
    """The user name is the subject as `openssl x509 -subject -nameopt RFC2253` prints it, which
    is what Mosquitto's use_subject_as_username uses: an ACL written for Mosquitto applies."""
    openssl = require_program("openssl")
    out = subprocess.run(
        [openssl, "x509", "-in", str(certs.alice[0]), "-noout", "-subject", "-nameopt", "RFC2253"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    subject = out.removeprefix("subject=").strip()
    acl = tmp_path / "acl"
    acl.write_text(f"user {subject}\ntopic readwrite plant/#\n")
    b = start_broker(
        "--certfile", str(certs.server), "--cafile", str(certs.ca), "--require-certificate",
        "--use-subject-as-username", "--acl-file", str(acl),
    )  # fmt: skip
    try:
        tls = _tls(b.port, certs, certs.alice)
        try:
            assert _connack(tls, "subject-dev") == 0
            tls.sendall(publish("plant/x", b"x", qos=1, pid=5, level=5))
            ack = tls.recv(64)
            assert ack[0] == 0x40 and (len(ack) == 4 or ack[4] == 0), (subject, ack.hex())
        finally:
            tls.close()
    finally:
        stop_broker(b)


def test_optional_certificate_and_password_clients_side_by_side(
    certs: Certs, tmp_path: Path
) -> None:
    """Without --require-certificate a client may come without one (and then authenticates as
    usual); --cafile still rejects a certificate from another CA."""
    b = start_broker("--certfile", str(certs.server), "--cafile", str(certs.ca))
    try:
        tls = _tls(b.port, certs, None)
        try:
            assert _connack(tls, "no-cert", level=4) == 0
        finally:
            tls.close()
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            _connack(_tls(b.port, certs, certs.stranger), "stranger")
    finally:
        stop_broker(b)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_below_1_2_is_refused(strict: BrokerProc, certs: Certs) -> None:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    raw = socket.create_connection(("127.0.0.1", strict.port), timeout=5)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    raw.close()


def test_library_hook_sees_the_certificate(certs: Certs) -> None:
    from mqttd import MQTTApp, MQTTClient
    from tests.library.conftest import AppRunner, local_app

    seen: list[object] = []
    app: MQTTApp = local_app(certfile=str(certs.server), cafile=str(certs.ca))

    @app.authenticate
    def check(client: MQTTClient, username: str | None, password: str | None) -> bool:
        seen.append(client.certificate)
        return client.certificate is not None

    runner = AppRunner(app)
    try:
        tls = _tls(runner.port, certs, certs.alice)
        try:
            assert _connack(tls, "hooked") == 0
        finally:
            tls.close()
        assert seen and seen[0] is not None
        subject = dict(x[0] for x in seen[0]["subject"])  # type: ignore[index]
        assert subject["commonName"] == "alice"
        plain = _tls(runner.port, certs, None)
        try:
            assert (
                _connack(plain, "no-cert") == 0x86
            )  # the hook said False: Bad user name or password
        finally:
            plain.close()
    finally:
        runner.stop()


def test_sighup_reloads_the_server_certificate(certs: Certs, tmp_path: Path) -> None:
    """A renewed certificate (same file name) is served to new clients after SIGHUP; clients
    connected before stay connected."""
    import signal
    import time

    ca = trustme.CA()
    server = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server))
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    b = start_broker("--certfile", str(server))
    try:

        def served() -> bytes:
            ctx = ssl.create_default_context(cafile=str(cafile))
            with socket.create_connection(("127.0.0.1", b.port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    der = tls.getpeercert(binary_form=True)
                    assert der is not None
                    return der

        before = served()
        kept = ssl.create_default_context(cafile=str(cafile)).wrap_socket(
            socket.create_connection(("127.0.0.1", b.port), timeout=5),
            server_hostname="127.0.0.1",
        )
        assert _connack(kept, "kept", level=4) == 0
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server))
        b.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while served() == before:
            assert time.monotonic() < deadline, "SIGHUP did not reload the certificate"
            time.sleep(0.05)
        kept.sendall(PINGREQ_BYTES)
        assert kept.recv(2)[0] >> 4 == PINGRESP
        kept.close()
    finally:
        stop_broker(b)
