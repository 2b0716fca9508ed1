"""Handlers the library cannot call as they are, or whose answer it cannot use: ``mypy --strict``
must report an error on each line marked ``# error: <decorator>`` (the decorator, or the call that
registers the handler), naming that decorator, and nowhere else
(tests/library/test_handler_typing.py). Not run (most would be refused at registration), only
type-checked."""

from __future__ import annotations

from mqttd import MQTTApp, MQTTClient, MQTTMessage

app = MQTTApp(port=1883)


# -- wrong number of parameters ----------------------------------------------------------------------
@app.authenticate  # error: authenticate
def auth(client: MQTTClient) -> bool:
    return True


@app.subscribe("a/b")  # error: subscribe
async def one_parameter(topic: str) -> None:
    pass


@app.publish_handler("a/+")  # error: publish_handler
def three(message: MQTTMessage, client: MQTTClient, extra: int) -> None:
    pass


@app.on_connect  # error: on_connect
def no_client() -> None:
    pass


@app.on_disconnect  # error: on_disconnect
async def two(client: MQTTClient, reason: int) -> None:
    pass


@app.authorize_subscribe  # error: authorize_subscribe
def without_qos(topic: str, client: MQTTClient) -> bool:
    return True


@app.authorize_publish  # error: authorize_publish
def keyword_only(message: MQTTMessage, client: MQTTClient, *, strict: bool) -> bool:
    return True


# -- wrong parameter types ---------------------------------------------------------------------------
@app.authenticate  # error: authenticate
def no_anonymous(client: MQTTClient, username: str, password: str) -> bool:  # both may be None
    return True


@app.on_connect  # error: on_connect
def client_id(client: str) -> None:
    pass


# -- wrong return types ------------------------------------------------------------------------------
@app.subscribe("a/c")  # error: subscribe
def number(topic: str, client: MQTTClient) -> int:  # only bytes or str are sent
    return 1


@app.authenticate  # error: authenticate
async def forgot_return(client: MQTTClient, username: str | None, password: str | None) -> None:
    pass


@app.authorize_publish  # error: authorize_publish
def text(message: MQTTMessage, client: MQTTClient) -> str:
    return "yes"


@app.publish_handler()  # error: publish_handler
async def answers(message: MQTTMessage, client: MQTTClient) -> bytes:  # ignored: not a reply
    return b"reply"


# -- the call form -------------------------------------------------------------------------------------
def policy(topic: str, qos: int) -> bool:
    return True


app.authorize_subscribe(policy)  # error: authorize_subscribe
