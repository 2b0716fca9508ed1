"""User names and passwords, and who may publish and subscribe where.

Each user owns ``users/<name>/#``; everyone may read ``public/#``; only ``admin`` may publish to
``public/#``. Unknown users and wrong passwords are refused at CONNECT (MQTT 3.1.1: return code
4; MQTT 5: 0x86), a forbidden SUBSCRIBE gets 0x80 (3.1.1) / 0x87 (5) in its SUBACK, and a
forbidden PUBLISH is dropped (MQTT 5 publishers get 0x87 in their PUBACK).

    python examples/auth_server.py
    mosquitto_sub -u alice -P wonderland -t 'users/alice/#' -t 'public/#' -v &
    mosquitto_pub -u admin -P 's3cret!' -t public/news -m hello
    mosquitto_pub -u alice -P nope -t users/alice/x -m x      # Connection Refused: bad user...

Passwords are kept as salted PBKDF2 hashes and compared in constant time; a real deployment
would read them from its user store.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from mqttd import MQTTApp, MQTTClient, MQTTMessage

app = MQTTApp(port=1883)


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 10_000)


_SALT = os.urandom(16)
USERS: dict[str, bytes] = {
    name: _hash(pw, _SALT) for name, pw in {"alice": "wonderland", "admin": "s3cret!"}.items()
}


@app.authenticate
async def check_password(client: MQTTClient, username: str | None, password: str | None) -> bool:
    expected = USERS.get(username or "")
    if expected is None or password is None:
        return False
    return hmac.compare_digest(expected, _hash(password, _SALT))


def _owns(client: MQTTClient, topic: str) -> bool:
    return client.username == "admin" or topic.startswith(f"users/{client.username}/")


@app.authorize_subscribe
def may_subscribe(topic: str, qos: int, client: MQTTClient) -> bool:
    return topic.startswith("public/") or _owns(client, topic)


@app.authorize_publish
def may_publish(message: MQTTMessage, client: MQTTClient) -> bool:
    return _owns(client, message.topic)


@app.on_connect
def welcome(client: MQTTClient) -> None:
    print(f"{client.username} connected as {client.client_id}", flush=True)


if __name__ == "__main__":
    app.run()
