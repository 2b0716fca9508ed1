"""Request/reply in the broker itself: a small "time" service.

MQTT 5 clients send a request to ``service/time/request`` with a Response Topic (and usually
Correlation Data); the app answers on the Response Topic with the same Correlation Data:

    python examples/request_reply.py
    mosquitto_rr -V mqttv5 -t service/time/request -e replies/me -m 'UTC'

Simpler clients (MQTT 3.1.1, curl) subscribe to ``service/time`` and get the answer at once,
because a subscribe handler's return value is sent to the new subscriber:

    curl --max-time 2 mqtt://127.0.0.1:1883/service/time
"""

from __future__ import annotations

import time

from mqttd import MQTTApp, MQTTClient, MQTTMessage

app = MQTTApp(port=1883)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@app.publish_handler("service/time/request")
async def answer(message: MQTTMessage, client: MQTTClient) -> None:
    reply_to = message.properties.get("response_topic")
    if reply_to is None:
        print(f"{client.client_id} sent a request without a response topic", flush=True)
        return
    properties = {}
    if "correlation_data" in message.properties:
        properties["correlation_data"] = message.properties["correlation_data"]
    await app.publish(reply_to, now(), qos=message.qos, properties=properties)


@app.subscribe("service/time")
def time_on_subscribe(topic: str, client: MQTTClient) -> str:
    return now()


if __name__ == "__main__":
    app.run()
