"""Enhanced authentication (MQTT 5 §4.12): the hook a deployment plugs its method into.

A client names a method in CONNECT (Authentication Method); the broker looks it up in
``Broker.authenticators`` and runs the exchange: ``start`` with the CONNECT's Authentication
Data, then ``step`` with each AUTH packet's data, until one returns success or failure. A CONNECT
naming a method the broker does not know is refused with 0x8C Bad authentication method. The
same calls serve re-authentication (AUTH with reason 0x19) on a connected client.
"""

from __future__ import annotations

from typing import Any, Protocol

from mqttd import constants as C

#: reason codes an authenticator returns: mqttd.constants' values, under the names this module
#: has always exported
SUCCESS = C.SUCCESS
CONTINUE = C.CONTINUE_AUTHENTICATION
NOT_AUTHORIZED = C.NOT_AUTHORIZED
BAD_USERNAME_OR_PASSWORD = C.BAD_USER_NAME_OR_PASSWORD
#: and the library's hooks (mqttd.app) too
UNSPECIFIED_ERROR = C.UNSPECIFIED_ERROR
QUOTA_EXCEEDED = C.QUOTA_EXCEEDED


class Authenticator(Protocol):
    """One enhanced-authentication method, e.g. SCRAM-SHA-256 or a challenge of your own."""

    method: str

    def start(self, conn: Any, data: bytes | None) -> tuple[int, bytes | None]:
        """First step, with the CONNECT's (or re-authenticating AUTH's) Authentication Data.

        Returns ``(SUCCESS, data)``, ``(CONTINUE, challenge)`` or ``(failure code, None)``.
        ``conn`` is the connection (``client_id``, ``username``, ``peer``).
        """
        ...

    def step(self, conn: Any, data: bytes | None) -> tuple[int, bytes | None]:
        """A further step, with the Authentication Data of the client's AUTH packet."""
        ...
