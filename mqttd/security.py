"""Who may connect, as whom, and what they may do: the command's security (docs/security.md).

A :class:`Security` is built from the configuration when any of it is set (a password file, an
ACL file, a certificate identity, ``allow_anonymous``); the connection core asks it at CONNECT
(:meth:`Security.authenticate`) and takes the client's :class:`mqttd.acl.Rights` from it
(:meth:`Security.rights`). SIGHUP calls :meth:`Security.reload`: the files are read again and
every session's rights replaced, so a client whose rights were removed stops receiving what it
may no longer read (a file that no longer parses is reported and the old rules stay).

Password checks run in a worker thread (``hashlib.pbkdf2_hmac`` releases the GIL): the event
loop keeps serving while a ``$7$`` hash is computed. A user whose password was verified is
remembered as a keyed digest of that password, so a reconnect storm does not redo the PBKDF2
work. Failures are logged at INFO with client id, user name and address (never the password),
and an address that keeps failing waits longer for each answer (:class:`FailureThrottle`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import ssl
import time
from typing import TYPE_CHECKING, Any

from mqttd import acl as acl_file
from mqttd import passwords
from mqttd.constants import BAD_USER_NAME_OR_PASSWORD, NOT_AUTHORIZED, SUCCESS

if TYPE_CHECKING:
    from mqttd.broker import BrokerConfig

log = logging.getLogger("mqttd")

#: failures from one address within this many seconds count together
FAILURE_WINDOW = 60.0
#: failures an address may have in the window before its answers are delayed
FREE_FAILURES = 3
#: the longest delay before a refusal (seconds); it doubles from 0.5 s per further failure
MAX_FAILURE_DELAY = 8.0
#: addresses remembered at most (the oldest are forgotten first)
MAX_FAILING_ADDRESSES = 10_000


class FailureThrottle:
    """Refusals for an address that keeps failing come later and later (bounded memory)."""

    def __init__(self) -> None:
        #: address -> (failures in the window, start of the window)
        self.failures: dict[str, tuple[int, float]] = {}

    def delay(self, address: str, now: float) -> float:
        """Seconds to wait before answering a failed attempt from ``address``, counting it."""
        count, since = self.failures.pop(address, (0, now))
        if now - since > FAILURE_WINDOW:
            count, since = 0, now
        count += 1
        failures = self.failures
        if len(failures) >= MAX_FAILING_ADDRESSES:
            del failures[next(iter(failures))]  # dicts keep order: the oldest entry
        failures[address] = (count, since)
        if count <= FREE_FAILURES:
            return 0.0
        return float(min(MAX_FAILURE_DELAY, 0.5 * 2.0 ** (count - FREE_FAILURES - 1)))

    def succeeded(self, address: str) -> None:
        self.failures.pop(address, None)


#: OpenSSL's short names of the attributes a subject has, as RFC 2253 writes them
_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _rfc2253_value(value: str) -> str:
    """Escape a subject value as RFC 2253 section 2.4 does."""
    out = "".join("\\" + ch if ch in ',+"\\<>;=' else ch for ch in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out


def certificate_identity(cert: dict[str, Any] | None, subject: bool) -> str | None:
    """The user name a client certificate stands for: its CN, or (``subject``) its whole
    subject, last RDN first, as ``openssl x509 -subject -nameopt RFC2253`` prints it, which is
    what Mosquitto's use_subject_as_username gives (``CN=dev1,O=Plant,C=DE``)."""
    if not cert:
        return None
    rdns = cert.get("subject", ())
    if subject:
        text = ",".join(
            "+".join(f"{_SHORT_NAMES.get(k, k)}={_rfc2253_value(str(v))}" for k, v in rdn)
            for rdn in reversed(rdns)
        )
        return text or None
    for rdn in rdns:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class Security:
    """Authentication and ACLs from the configuration's files."""

    def __init__(self, config: BrokerConfig, has_hook: bool = False) -> None:
        self.config = config
        #: user -> hash, from password_file (None: no password file)
        self.passwords: dict[str, passwords.PasswordHash] | None = None
        self.acl: acl_file.Acl | None = None
        self.identity = (
            "subject"
            if config.use_subject_as_username
            else "cn"
            if config.use_identity_as_username
            else None
        )
        #: an authentication hook of the library decides about anonymous clients itself
        self.has_hook = has_hook
        self.throttle = FailureThrottle()
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self.failures = 0
        self.load()

    @property
    def allow_anonymous(self) -> bool:
        """Explicit, or (as Mosquitto 2.0) true only while nothing authenticates clients."""
        if self.config.allow_anonymous is not None:
            return self.config.allow_anonymous
        return self.passwords is None and self.identity is None

    @property
    def authenticates(self) -> bool:
        """True when clients are authenticated at all (for the open-broker warning)."""
        return (
            self.passwords is not None
            or self.identity is not None
            or self.has_hook
            or not self.allow_anonymous
        )

    def load(self) -> None:
        """Read the password and ACL files (PasswordFileError / AclFileError: nothing changed)."""
        cfg = self.config
        users = passwords.load(cfg.password_file) if cfg.password_file else None
        rules = acl_file.load(cfg.acl_file) if cfg.acl_file else None
        self.passwords, self.acl = users, rules
        self._verified.clear()
        # What an unknown user's attempt is checked against: the file's own kind of hash (its
        # iterations), so that the time taken does not tell who exists; made here, without
        # hashing anything (the zero digest matches no password)
        model = next(iter(users.values()), None) if users else None
        self._unknown = passwords.PasswordHash(
            model.iterations if model is not None else passwords.ITERATIONS,
            model.salt if model is not None else bytes(passwords.SALT_BYTES),
            bytes(passwords.SHA512_BYTES),
        )

    def reload(self) -> bool:
        """SIGHUP: read the files again; False (and the old ones kept) when one is bad."""
        try:
            self.load()
        except ValueError as exc:
            log.error("reload: %s; the previous rules stay", exc)
            return False
        return True

    def rights(self, username: str | None, client_id: str) -> acl_file.Rights | None:
        """The client's rights under the ACL file; None when there is none (all allowed)."""
        if self.acl is None:
            return None
        return self.acl.rights(username, client_id)

    async def authenticate(self, conn: Any, username: str | None, password: bytes | None) -> int:
        """SUCCESS, or the reason code to refuse the CONNECT with. May set ``conn.username``
        (certificate identity)."""
        address = _address(conn)
        if self.identity is not None:
            name = certificate_identity(conn.certificate, self.identity == "subject")
            if name is None:
                return await self._refused(conn, address, username, "no client certificate")
            conn.username = name  # the certificate says who it is; a password is not asked
            self.throttle.succeeded(address)
            return SUCCESS
        if username is None:
            if self.allow_anonymous:
                return SUCCESS
            return await self._refused(conn, address, None, "anonymous clients not allowed")
        users = self.passwords
        if users is None:
            # Nothing here checks credentials: a user name is a label while anonymous clients are
            # welcome (or a hook of the program checks it); refused otherwise, as Mosquitto
            if self.allow_anonymous or self.has_hook:
                return SUCCESS
            return await self._refused(conn, address, username, "no password file to check")
        hashed = users.get(username)
        if hashed is None or password is None:
            # Unknown user: still spend the same work, so timing does not tell who exists
            if password is not None:
                await asyncio.to_thread(self._unknown.matches, password)
            return await self._refused(conn, address, username, "bad user name or password")
        token = hmac.new(self._key, password, hashlib.sha256).digest()
        known = self._verified.get(username)
        if known is not None and hmac.compare_digest(known, token):
            ok = True
        else:
            ok = await asyncio.to_thread(hashed.matches, password)
            if ok and self.passwords is users:  # not reloaded meanwhile
                self._verified[username] = token
        if not ok:
            return await self._refused(conn, address, username, "bad user name or password")
        self.throttle.succeeded(address)
        return SUCCESS

    async def _refused(self, conn: Any, address: str, username: str | None, why: str) -> int:
        self.failures += 1
        delay = self.throttle.delay(address, time.monotonic())
        log.info(
            "refusing client %r, user %r from %s: %s%s",
            conn.client_id,
            username,
            address,
            why,
            f" (answered after {delay:.1f} s: repeated failures)" if delay else "",
        )
        if delay:
            await asyncio.sleep(delay)
        if why == "bad user name or password":
            return BAD_USER_NAME_OR_PASSWORD
        return NOT_AUTHORIZED


def _address(conn: Any) -> str:
    peer = conn.peer
    if isinstance(peer, tuple):
        return str(peer[0])
    return str(peer or "")


def client_tls_settings(ctx: ssl.SSLContext, cafile: str | None, required: bool) -> None:
    """Client certificates on a listener's context: trust ``cafile``; ask for a certificate
    (and refuse the handshake without one) when ``required``."""
    if cafile:
        try:
            ctx.load_verify_locations(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cafile {cafile}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL


__all__ = ["FailureThrottle", "Security", "certificate_identity", "client_tls_settings"]
