#!/usr/bin/env bash
# send.sh sends one JSON-RPC command to a device with curl and prints the
# device's answer, which comes back over MQTT, with mosquitto_sub.
#
#   GW_API_URL=http://127.0.0.1:8080 GW_CLIENT=app-1 GW_TOKEN=<client token> GW_DEVICE=dev-1 \
#       examples/curl/send.sh echo '{"hello":"world"}'
#
# Mint a client token with
#   bin/devicesim token --role client --sub app-1 --devices 'dev-*' --secret <secret>
# Needs curl and mosquitto_sub (Debian, Ubuntu: apt-get install curl mosquitto-clients).
# Exit status: 0 the device answered with a result, 2 with an error (or the
# gateway ended the command: timeout, expired, ...), another status (1, or
# curl's own, with the answer printed) anything else.
set -euo pipefail

API=${GW_API_URL:-http://127.0.0.1:8080}
CLIENT=${GW_CLIENT:-app-1}
TOKEN=${GW_TOKEN:?set GW_TOKEN to a client token of GW_CLIENT}
DEVICE=${GW_DEVICE:-dev-1}
METHOD=${1:-echo}
PARAMS=${2:-'{"hello":"world"}'}
ID=sh-$(date +%s%N) # unique per client

# 1. Which push server holds the client's results?
#    {"node":"push-1","mqtt_url":"mqtt://127.0.0.1:1884"}
owner=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" "$API/v1/connect/$CLIENT")
mqtt_url=$(sed -n 's/.*"mqtt_url":"\([^"]*\)".*/\1/p' <<<"$owner")
hostport=${mqtt_url#*://}
tls=()
[[ $mqtt_url == mqtts://* ]] && tls=(--capath /etc/ssl/certs)

# 2. Subscribe to the results from this device, at QoS 1. Username and
#    client ID are the client's identity, the password its token.
exec 3< <(exec mosquitto_sub -h "${hostport%:*}" -p "${hostport##*:}" "${tls[@]}" \
	-i "$CLIENT" -u "$CLIENT" -P "$TOKEN" -q 1 -t "clients/$CLIENT/results/$DEVICE" -W 60)
sub=$!
trap 'kill "$sub" 2>/dev/null || true' EXIT

# 3. The command: 202 once it is durable in the gateway.
curl -sS --fail-with-body -X POST "$API/v1/devices/$DEVICE/commands?timeout=30s" \
	-H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
	-d "{\"jsonrpc\":\"2.0\",\"id\":\"$ID\",\"method\":\"$METHOD\",\"params\":$PARAMS}" >&2
echo >&2

# 4. The result with this command's id (others, an earlier run's say, are
#    skipped). A result waits in the client's mailbox while it is offline.
while IFS= read -r -u 3 line; do
	if [[ $line == *"\"id\":\"$ID\""* ]]; then
		printf '%s\n' "$line"
		[[ $line == *'"result":'* ]] && exit 0
		exit 2
	fi
done
echo "send.sh: no result for $ID (mosquitto_sub ended: refused, or 60 s passed)" >&2
exit 1
