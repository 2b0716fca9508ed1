"""Exceptions shared by the compiled modules and their pure-Python twins."""

from __future__ import annotations


class PacketError(Exception):
    """A packet broke the protocol; the connection that sent it is closed.

    ``reason_code`` is the MQTT 5 reason code that fits (0x81 Malformed Packet, 0x82 Protocol
    Error, 0x84 Unsupported Protocol Version, 0x95 Packet Too Large, ...). ``packets`` holds the
    complete, valid packets that preceded the bad one in the same ``Reader.feed`` call: they are
    processed before the connection is closed.
    """

    def __init__(self, reason_code: int, message: str, packets: list | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.packets: list = packets if packets is not None else []
