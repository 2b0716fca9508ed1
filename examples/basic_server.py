"""The smallest mqttd program: a broker on port 1883 that tells what its clients do.

    python examples/basic_server.py
    mosquitto_sub -t sensors/temperature &             # "Client ... subscribed to ..."
    mosquitto_pub -t sensors/temperature -m 25.5C      # "Received: sensors/temperature = 25.5C"

Every client gets every message it subscribed to: the handlers only watch.
``MQTTD_PORT=1884 python examples/basic_server.py`` serves another port without editing.
"""

from __future__ import annotations

from mqttd import MQTTApp, MQTTClient, MQTTMessage

app = MQTTApp(port=1883)


@app.subscribe("sensors/temperature")
async def on_subscribe(topic: str, client: MQTTClient) -> None:
    print(f"Client {client.client_id} subscribed to {topic}", flush=True)


@app.publish_handler("sensors/+")
async def on_publish(message: MQTTMessage, client: MQTTClient) -> None:
    print(f"Received: {message.topic} = {message.payload_str}", flush=True)


@app.on_connect
def on_connect(client: MQTTClient) -> None:
    print(f"Connected: {client.client_id} from {client.address}", flush=True)


if __name__ == "__main__":
    app.run()
