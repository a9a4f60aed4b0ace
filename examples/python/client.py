#!/usr/bin/env python3
"""An example client for the IoT command gateway, with paho-mqtt (1.6 or 2.x).

It sends one JSON-RPC command to a device over HTTP and prints the device's
answer, which comes back over MQTT:

1. GET /v1/connect/{client}: which push server holds its results;
2. connect there (client ID and username the client's identity, the token
   as password) and subscribe to clients/{client}/results/{device} at QoS 1;
3. POST /v1/devices/{device}/commands: 202 once the command is durable;
4. print the result whose id is the command's id.

    GW_API_URL=http://127.0.0.1:8080 GW_CLIENT=app-1 GW_TOKEN=<client token> GW_DEVICE=dev-1 \\
        python3 client.py echo '{"hello":"world"}'

Mint a client token with
`bin/devicesim token --role client --sub app-1 --devices 'dev-*' --secret <secret>`.
Exit status: 0 the device answered with a result, 2 with an error (or the
gateway ended the command: timeout, expired, ...), 1 anything else.
paho-mqtt: `apt-get install python3-paho-mqtt` (Debian, Ubuntu) or
`pip install paho-mqtt`.
"""

import json
import os
import queue
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import paho.mqtt.client as mqtt

API = os.environ.get("GW_API_URL", "http://127.0.0.1:8080")
CLIENT = os.environ.get("GW_CLIENT", "app-1")
TOKEN = os.environ.get("GW_TOKEN", "")
DEVICE = os.environ.get("GW_DEVICE", "dev-1")
TIMEOUT = int(os.environ.get("GW_TIMEOUT", "30"))  # seconds


def api(method, path, body=None):
    """One request to the gateway's HTTP API: (status, parsed JSON body)."""
    req = urllib.request.Request(
        API + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:  # 4xx and 5xx carry a JSON-RPC error object
        return err.code, json.load(err)


def new_client(identity):
    """A paho client for MQTT 3.1.1 under paho-mqtt 1.x and 2.x alike."""
    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=identity, clean_session=True)
    return mqtt.Client(client_id=identity, clean_session=True)


def failed(code):
    """Whether a CONNACK or SUBACK code (an int, or a 2.x ReasonCode) is a failure."""
    return int(getattr(code, "value", code)) not in (0, 1, 2)


def main():
    if not TOKEN:
        sys.exit("client.py: no token: set GW_TOKEN")
    method = sys.argv[1] if len(sys.argv) > 1 else "echo"
    params = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {"hello": "world"}
    command_id = f"py-{time.time_ns()}"

    # 1 and 2: the results' subscription.
    status, owner = api("GET", f"/v1/connect/{urllib.parse.quote(CLIENT)}")
    if status != 200:
        sys.exit(f"client.py: GET /v1/connect/{CLIENT} answered {status}: {owner}")
    url = urllib.parse.urlsplit(owner["mqtt_url"])
    results, subscribed = queue.Queue(), queue.Queue()

    def on_connect(client, _userdata, _flags, code, *_):
        if failed(code):
            subscribed.put(f"connection refused: {code}")
            return
        client.subscribe(f"clients/{CLIENT}/results/{DEVICE}", qos=1)

    def on_subscribe(_client, _userdata, _mid, granted, *_):
        subscribed.put(f"subscription refused: {granted}" if any(failed(g) for g in granted) else None)

    def on_message(_client, _userdata, msg):
        result = json.loads(msg.payload)
        if result.get("id") == command_id:  # skip other commands' results
            results.put(result)

    client = new_client(CLIENT)
    client.username_pw_set(CLIENT, TOKEN)
    if url.scheme == "mqtts":
        client.tls_set()
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect(url.hostname, url.port or 1883, keepalive=30)
    client.loop_start()
    try:
        problem = subscribed.get(timeout=10)
        if problem:
            sys.exit(f"client.py: {problem}")

        # 3: the command.
        request = {"jsonrpc": "2.0", "id": command_id, "method": method, "params": params}
        status, accepted = api("POST", f"/v1/devices/{urllib.parse.quote(DEVICE)}/commands?timeout={TIMEOUT}", request)
        if status not in (200, 202):
            sys.exit(f"client.py: POST answered {status}: {accepted}")
        print(f"accepted: {json.dumps(accepted)}", file=sys.stderr)

        # 4: the result.
        try:
            result = results.get(timeout=TIMEOUT + 10)
        except queue.Empty:
            sys.exit(f"client.py: no result for {command_id} within {TIMEOUT + 10}s")
        print(json.dumps(result))
        sys.exit(2 if "error" in result else 0)
    finally:
        client.disconnect()
        client.loop_stop()


if __name__ == "__main__":
    main()
