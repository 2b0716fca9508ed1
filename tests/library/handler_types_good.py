"""Handlers of every form docs/library.md shows, and the other forms that work: ``mypy --strict``
must find nothing here (tests/library/test_handler_typing.py). Not run, only type-checked."""

from __future__ import annotations

import functools
from typing import Any

from mqttd import MQTTApp, MQTTClient, MQTTMessage
from mqttd.app import BAD_USERNAME_OR_PASSWORD, NOT_AUTHORIZED

app = MQTTApp(port=1883)


# -- @app.subscribe: bytes, str or None, sync or async ---------------------------------------------
@app.subscribe("sensors/temperature")
async def on_subscribe(topic: str, client: MQTTClient) -> None:
    print(f"{client.client_id} subscribed to {topic}")


@app.subscribe("hello/world")
async def hello(topic: str, client: MQTTClient) -> str:
    return f"hi {client.client_id}"


@app.subscribe("devices/+/cmd", qos=1)
def ready(topic: str, client: MQTTClient) -> bytes:
    return b"ready"


@app.subscribe("maybe")
def maybe(topic: str, client: MQTTClient) -> str | None:
    return None if client.username is None else "welcome"


# -- @app.publish_handler ----------------------------------------------------------------------------
@app.publish_handler("sensors/+")
async def on_publish(message: MQTTMessage, client: MQTTClient) -> None:
    print(f"{message.topic} = {message.payload_str} (from {client.client_id})")


@app.publish_handler()
def everything(message: MQTTMessage, client: MQTTClient) -> None:
    pass


@app.publish_handler(None)
def with_defaults(message: MQTTMessage, client: MQTTClient, verbose: bool = False) -> None:
    pass


# -- @app.on_connect / @app.on_disconnect ----------------------------------------------------------
@app.on_connect
async def hello_client(client: MQTTClient) -> None:
    pass


@app.on_disconnect
def bye(client: MQTTClient) -> None:
    pass


@app.on_connect
def anything(*args: Any, **kwargs: Any) -> None:
    pass


@app.on_disconnect
def wider(client: object) -> None:  # a wider parameter type takes what is passed
    pass


# -- hooks -------------------------------------------------------------------------------------------
@app.authenticate
async def check(client: MQTTClient, username: str | None, password: str | None) -> bool:
    return username is not None and password == "s3cret"


@app.authenticate
def check_code(client: MQTTClient, username: str | None, password: str | None) -> bool | int:
    if username == "banned":
        return NOT_AUTHORIZED
    return BAD_USERNAME_OR_PASSWORD if password is None else True


@app.authorize_publish
def policy(message: MQTTMessage, client: MQTTClient) -> bool | MQTTMessage:
    if message.topic.startswith("secret/"):
        return False
    if message.topic == "greeting":
        return MQTTMessage("greeting", message.payload.upper(), message.qos)
    return True


@app.authorize_publish
async def async_policy(message: MQTTMessage, client: MQTTClient) -> int:
    return 0x10  # routed, No matching subscribers


@app.authorize_subscribe
def may_subscribe(topic: str, qos: int, client: MQTTClient) -> bool | int:
    return False if topic.startswith("admin/") else 1


@app.authorize_subscribe
async def async_may_subscribe(topic: str, qos: int, client: MQTTClient) -> bool:
    return True


# -- other callables: methods, partials, callable objects, the call form --------------------------
class Users:
    def __init__(self) -> None:
        self.known = {"alice"}

    def check(self, client: MQTTClient, username: str | None, password: str | None) -> bool:
        return username in self.known

    async def __call__(self, topic: str, qos: int, client: MQTTClient) -> int:
        return qos


users = Users()
app.authenticate(users.check)
app.authorize_subscribe(users)


def tenant_policy(tenant: str, message: MQTTMessage, client: MQTTClient) -> bool:
    return message.topic.startswith(f"{tenant}/")


app.authorize_publish(functools.partial(tenant_policy, "acme"))
app.on_connect(lambda client: print(client.client_id))
app.subscribe("ping")(lambda topic, client: b"pong")


# The decorators return the function unchanged: it keeps its own signature (keyword arguments,
# its own return type), so it can still be called as itself, e.g. from the program's tests.
async def use_directly(client: MQTTClient) -> bool:
    ok: bool = await check(client=client, username="alice", password="s3cret")
    reply: bytes = ready("devices/1/cmd", client)
    return ok and bool(reply) and with_defaults.__name__ == "with_defaults"
