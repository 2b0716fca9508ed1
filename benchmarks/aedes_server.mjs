// Aedes, the common Node.js MQTT broker, as its docs/Examples.md runs it: MQTT on TCP and
// MQTT over WebSocket (ws's createWebSocketStream) on two ports, for benchmarks/websocket.py.
// Usage: node aedes_server.mjs TCP_PORT WS_PORT  (0: a free port); prints one JSON line
// {"tcp": PORT, "ws": PORT, "pid": PID} once both listen. Run from a folder where
// `npm install aedes ws` was done (NODE_PATH is not read by ES modules: the script is copied
// there by websocket.py).
import { createServer as createTcp } from 'node:net'
import { createServer as createHttp } from 'node:http'
import { Aedes } from 'aedes'
import { WebSocketServer, createWebSocketStream } from 'ws'

const [tcpPort, wsPort] = process.argv.slice(2).map(Number)
const aedes = await Aedes.createBroker()
const tcp = createTcp(aedes.handle)
const http = createHttp()
const wss = new WebSocketServer({ server: http })
wss.on('connection', (websocket, req) => {
  const stream = createWebSocketStream(websocket)
  aedes.handle(stream, req)
})
await new Promise((resolve) => tcp.listen(tcpPort, '127.0.0.1', resolve))
await new Promise((resolve) => http.listen(wsPort, '127.0.0.1', resolve))
console.log(JSON.stringify({ tcp: tcp.address().port, ws: http.address().port, pid: process.pid }))
