"""One node of a cluster: run it on several machines (or ports) against one Redis, and a client
of any node gets what a client of any other node publishes.

    export REDIS_URL=redis://localhost:6379/0          # the default
    MQTTD_PORT=1883 python examples/redis_server.py &
    MQTTD_PORT=1884 python examples/redis_server.py &
    mosquitto_sub -p 1883 -t 'sensors/#' -v &
    mosquitto_pub -p 1884 -t sensors/temperature -m 25.5C    # printed by the subscriber on 1883

The publish handler runs once, on the node the message entered; the subscribe handler on the
node the client subscribed to.
"""

from __future__ import annotations

import os

from mqttd import MQTTApp, MQTTClient, MQTTMessage

app = MQTTApp(port=1883, redis_url=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))


@app.subscribe("sensors/temperature")
async def handle_temp(topic: str, client: MQTTClient) -> None:
    print(f"Client {client.client_id} subscribed to {topic}", flush=True)


@app.publish_handler("sensors/+")
async def handle_publish(message: MQTTMessage, client: MQTTClient) -> None:
    print(f"Received: {message.topic} = {message.payload_str}", flush=True)


if __name__ == "__main__":
    app.run()
