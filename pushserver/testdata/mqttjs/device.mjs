// device.mjs is a device on MQTT.js over WebSocket, for
// pushserver/websocket_node_test.go:
//
//   node device.mjs URL IDENTITY answer   subscribes to its commands,
//                                         answers the first one, exits 0
//   node device.mjs URL IDENTITY refused  expects the CONNECT refused,
//                                         prints the CONNACK, exits 0
//
// The token is MQTTJS_TOKEN, the MQTT version MQTTJS_VERSION (default 5).
// Each step is printed as one JSON line; any other outcome exits 1.
import mqtt from 'mqtt';

const [url, identity, mode] = process.argv.slice(2);
const out = (o) => console.log(JSON.stringify(o));
const fail = (msg) => {
  console.error(msg);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 20000);

const client = mqtt.connect(url, {
  clientId: identity,
  username: identity,
  password: process.env.MQTTJS_TOKEN,
  protocolVersion: Number(process.env.MQTTJS_VERSION || 5),
  clean: true,
  reconnectPeriod: 0,
  connectTimeout: 10000,
  keepalive: 10,
});
client.on('packetreceive', (pk) => {
  if (pk.cmd === 'connack') {
    out({ connack: pk.reasonCode ?? pk.returnCode, serverReference: pk.properties?.serverReference });
  }
});

if (mode === 'refused') {
  client.on('connect', () => fail(`connected, but this node does not own ${identity}`));
  client.on('error', (err) => {
    out({ refused: err.code });
    client.end(true, () => process.exit(0));
  });
} else {
  client.on('error', (err) => fail(`error: ${err.message}`));
  client.on('connect', () => {
    client.subscribe(`devices/${identity}/commands`, { qos: 1 }, (err, granted) => {
      if (err) fail(`subscribe: ${err.message}`);
      out({ subscribed: granted[0].qos });
    });
  });
  client.on('message', (topic, payload) => {
    const req = JSON.parse(payload.toString());
    out({ command: req });
    const resp = { jsonrpc: '2.0', result: { from: 'mqtt.js' }, id: req.id };
    client.publish(`devices/${identity}/responses`, JSON.stringify(resp), { qos: 1 }, (err) => {
      if (err) fail(`publish: ${err.message}`);
      out({ answered: req.id });
      client.end(false, () => process.exit(0));
    });
  });
}
