from mqttd import MQTTApp, MQTTMessage, MQTTClient

app = MQTTApp(port=1883, redis_host="localhost")        # or redis_url="redis://:pw@host:6379/0"

@app.subscribe("sensors/temperature")
async def handle_temp(topic: str, client: MQTTClient):
    print(f"Client {client.client_id} subscribed to {topic}")

@app.publish_handler("sensors/+")
async def handle_publish(message: MQTTMessage, client: MQTTClient):
    print(f"Received: {message.topic} = {message.payload_str}")

app.run()
