#!/usr/bin/env python3
"""An example device for the IoT command gateway, with paho-mqtt (1.6 or 2.x).

It asks the gateway which push server owns it (GET /v1/connect/{device}),
connects there over MQTT 3.1.1 (client ID and username its identity, the
token as password), subscribes to devices/{device}/commands at QoS 1 and
answers each command on devices/{device}/responses with the same id: "echo"
returns its params, anything else the JSON-RPC error -32601. A command
delivered again (the same id) gets the same answer again. After a lost
connection it asks /v1/connect again, since the owner may have changed.

    GW_API_URL=http://127.0.0.1:8080 GW_DEVICE=dev-1 GW_TOKEN=<device token> python3 device.py

Mint a device token with
`bin/devicesim token --role device --sub dev-1 --secret <secret>`.
It prints "ready" once subscribed and one line per answer; Ctrl-C stops it.
paho-mqtt: `apt-get install python3-paho-mqtt` (Debian, Ubuntu) or
`pip install paho-mqtt`.
"""

import json
import os
import sys
import time
import urllib.parse
import urllib.request

import paho.mqtt.client as mqtt

API = os.environ.get("GW_API_URL", "http://127.0.0.1:8080")
DEVICE = os.environ.get("GW_DEVICE", "dev-1")
TOKEN = os.environ.get("GW_TOKEN", "")


def owner(identity):
    """Asks the gateway for the push server that owns identity: (host, port, tls)."""
    req = urllib.request.Request(
        f"{API}/v1/connect/{urllib.parse.quote(identity)}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        url = urllib.parse.urlsplit(json.load(resp)["mqtt_url"])
    return url.hostname, url.port or (8883 if url.scheme == "mqtts" else 1883), url.scheme == "mqtts"


def new_client(identity):
    """A paho client for MQTT 3.1.1 under paho-mqtt 1.x and 2.x alike."""
    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=identity, clean_session=True)
    return mqtt.Client(client_id=identity, clean_session=True)


def failed(code):
    """Whether a CONNACK or SUBACK code (an int, or a 2.x ReasonCode) is a failure."""
    return int(getattr(code, "value", code)) not in (0, 1, 2)


def respond(request):
    """The device's behaviour: "echo" returns its params."""
    answer = {"jsonrpc": "2.0", "id": request["id"]}
    if request.get("method") == "echo":
        answer["result"] = request.get("params")
    else:
        answer["error"] = {"code": -32601, "message": f"method not found: {request.get('method')}"}
    return json.dumps(answer).encode()


answers = {}  # by command id: a redelivery gets the same answer


def on_message(client, _userdata, msg):
    try:
        request = json.loads(msg.payload)
        key = json.dumps(request["id"])
    except (ValueError, KeyError, TypeError):
        print(f"not a JSON-RPC request: {msg.payload!r}", file=sys.stderr)
        return
    if key not in answers:
        answers[key] = respond(request)
    client.publish(f"devices/{DEVICE}/responses", answers[key], qos=1)
    print(f"answered {key} {request.get('method')}", flush=True)


def on_connect(client, _userdata, _flags, code, *_):
    if failed(code):
        print(f"connection refused: {code}", file=sys.stderr)
        client.disconnect()  # ends loop_forever: ask /v1/connect again
        return
    client.subscribe(f"devices/{DEVICE}/commands", qos=1)


def on_subscribe(client, _userdata, _mid, granted, *_):
    if any(failed(g) for g in granted):
        print(f"subscription refused: {granted}", file=sys.stderr)
        client.disconnect()
        return
    print("ready", flush=True)


def on_disconnect(client, _userdata, *_):
    # Stop paho's own reconnect to the same server: the owner may have
    # changed, so the loop in main asks the gateway again.
    client.disconnect()


def main():
    if not TOKEN:
        sys.exit("device.py: no token: set GW_TOKEN")
    backoff = 0.2
    while True:
        try:
            host, port, tls = owner(DEVICE)
            client = new_client(DEVICE)
            client.username_pw_set(DEVICE, TOKEN)
            if tls:
                client.tls_set()
            client.on_connect = on_connect
            client.on_subscribe = on_subscribe
            client.on_message = on_message
            client.on_disconnect = on_disconnect
            client.connect(host, port, keepalive=10)
            client.loop_forever()
        except KeyboardInterrupt:
            return
        except OSError as err:  # the API or the push server is unreachable
            print(f"session ended: {err}", file=sys.stderr)
        time.sleep(backoff)
        backoff = min(2 * backoff, 5.0)


if __name__ == "__main__":
    main()
