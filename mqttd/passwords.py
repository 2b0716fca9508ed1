"""Password files in Mosquitto's format: read them, check a password, write them.

One ``user:hash`` line per user, as ``mosquitto_passwd`` writes it (docs/security.md):

- ``$7$ITERATIONS$SALT$HASH``: PBKDF2-HMAC-SHA512 (Mosquitto 2.0's default, at 101 iterations);
- ``$6$SALT$HASH``: one SHA-512 of the password followed by the salt (Mosquitto 1.x).

Salt and hash are standard base64. A line that is not one of these stops the start with the file
and line number: a password file that half loads could let a user in with no password at all.
``mqttd passwd`` writes ``$7$`` hashes at :data:`ITERATIONS` (Mosquitto 2.0.11 reads them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

#: PBKDF2 iterations of the hashes ``mqttd passwd`` writes: 100x Mosquitto's 101, about 7 ms
#: of one core per check here (docs/security.md has the measurement and the trade-off)
ITERATIONS = 10_000
SALT_BYTES = 12  # as mosquitto_passwd
SHA512_BYTES = 64


class PasswordFileError(ValueError):
    """A password file that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """One user's hash: ``iterations`` 0 for the ``$6$`` kind."""

    iterations: int
    salt: bytes
    digest: bytes

    def matches(self, password: bytes) -> bool:
        """True when ``password`` hashes to this digest (compared in constant time)."""
        if self.iterations:
            computed = hashlib.pbkdf2_hmac("sha512", password, self.salt, self.iterations)
        else:
            computed = hashlib.sha512(password + self.salt).digest()
        return hmac.compare_digest(computed, self.digest)

    def encode(self) -> str:
        salt = base64.b64encode(self.salt).decode()
        digest = base64.b64encode(self.digest).decode()
        if self.iterations:
            return f"$7${self.iterations}${salt}${digest}"
        return f"$6${salt}${digest}"


def make_hash(password: bytes, iterations: int = ITERATIONS) -> PasswordHash:
    """A new ``$7$`` hash of ``password`` with a random salt."""
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, not {iterations}")
    salt = secrets.token_bytes(SALT_BYTES)
    return PasswordHash(iterations, salt, hashlib.pbkdf2_hmac("sha512", password, salt, iterations))


def _b64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def parse_hash(text: str) -> PasswordHash:
    """``$7$...`` or ``$6$...``; ValueError saying what is wrong otherwise."""
    parts = text.split("$")
    try:
        if len(parts) == 5 and parts[0] == "" and parts[1] == "7":
            iterations = int(parts[2])
            if iterations < 1:
                raise ValueError(f"iteration count {iterations}")
            salt, digest = _b64(parts[3]), _b64(parts[4])
        elif len(parts) == 4 and parts[0] == "" and parts[1] == "6":
            iterations, salt, digest = 0, _b64(parts[2]), _b64(parts[3])
        else:
            raise ValueError("not a mosquitto_passwd hash ($7$ or $6$); plain text is refused")
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"bad base64 ({exc})") from None
    if len(digest) != SHA512_BYTES or not salt:
        raise ValueError(f"a SHA-512 hash is {SHA512_BYTES} bytes, this one {len(digest)}")
    return PasswordHash(iterations, salt, digest)


def parse_lines(lines: list[str], path: str) -> dict[str, PasswordHash]:
    """``user -> hash`` from a file's lines (blank lines and ``#`` comments skipped)."""
    users: dict[str, PasswordHash] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        where = f"{path}, line {number}"
        if not sep or not user:
            raise PasswordFileError(f"{where}: expected user:hash")
        try:
            users[user] = parse_hash(hashed.strip())
        except ValueError as exc:
            raise PasswordFileError(f"{where} (user {user!r}): {exc}") from None
    return users


def load(path: str) -> dict[str, PasswordHash]:
    """Read a password file; :class:`PasswordFileError` (file and line) if it cannot be used."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as exc:
        raise PasswordFileError(f"password file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PasswordFileError(f"password file {path}: not UTF-8 text") from None
    return parse_lines(lines, path)


def write(path: str, users: dict[str, PasswordHash]) -> None:
    """Write ``users`` to ``path`` at once (a temporary file renamed over it), mode 0600."""
    import tempfile  # (here: with shutil, bz2 and lzma, 0.5 MB at every node's start)

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".mqttd-passwd-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for user, hashed in users.items():
                f.write(f"{user}:{hashed.encode()}\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def check_user_name(user: str) -> str | None:
    """Why ``user`` cannot be written to a password file, or None."""
    if not user:
        return "the user name is empty"
    if ":" in user or "\n" in user or "\r" in user:
        return "a user name cannot contain ':' or a line break"
    return None


__all__ = [
    "ITERATIONS",
    "PasswordFileError",
    "PasswordHash",
    "check_user_name",
    "load",
    "make_hash",
    "parse_hash",
    "parse_lines",
    "write",
]
