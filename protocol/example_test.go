package protocol_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/iotgw/gateway/protocol"
)

// ParseBody reads one request or a batch. A body-level problem (not JSON,
// an empty batch, too many entries) is one error; otherwise every element
// gets either a request or its own error.
func ExampleParseBody() {
	body := []byte(`[
		{"jsonrpc": "2.0", "method": "reboot", "params": {"delay": 5}, "id": "r-1"},
		{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
		{"jsonrpc": "2.0", "method": "rpc.discover", "id": 2},
		{"jsonrpc": "2.0", "method": "ping", "id": 3}
	]`)
	entries, batch, err := protocol.ParseBody(body)
	if err != nil {
		fmt.Println(protocol.HTTPStatus(err.Code), err.Message)
		return
	}
	fmt.Println("batch:", batch)
	for _, e := range entries {
		if e.Err != nil {
			fmt.Printf("error %d id=%s: %s\n", e.Err.Code, e.ID, e.Err.Message)
			continue
		}
		fmt.Println(strings.TrimSpace(fmt.Sprintf("request %s %s %s", e.Req.ID.Key(), e.Req.Method, e.Req.Params)))
	}

	_, _, err = protocol.ParseBody([]byte(`{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]`))
	fmt.Println(err.Code, protocol.HTTPStatus(err.Code))
	// Output:
	// batch: true
	// request r-1 reboot {"delay":5}
	// error -32600 id=: invalid request: "id" is missing: notifications are not accepted, every command is tracked
	// error -32600 id=2: invalid request: "method" names starting with "rpc." are reserved
	// request 3 ping
	// -32700 400
}

// 1 and "1" are the same message ID: they have the same Key, which is
// also how an ID appears in a URL path (ParseIDKey).
func ExampleParseID() {
	a, _ := protocol.ParseID(json.RawMessage(`1`))
	b, _ := protocol.ParseID(json.RawMessage(`"1"`))
	c, _ := protocol.ParseIDKey("1")
	fmt.Println(a.Key() == b.Key(), b.Key() == c.Key())
	fmt.Printf("%s %s\n", a.Raw(), b.Raw())

	for _, raw := range []string{`1.5`, `null`, `1234567890123456`, `"a b"`} {
		_, err := protocol.ParseID(json.RawMessage(raw))
		fmt.Println(raw, "->", err)
	}
	// Output:
	// true true
	// 1 "1"
	// 1.5 -> protocol: id must be an integer, not a fraction or exponent
	// null -> protocol: id is null
	// 1234567890123456 -> protocol: integer id has more than 15 digits
	// "a b" -> protocol: id may only contain A-Z a-z 0-9 . _ : - and must start with a letter or digit
}

// A device sees "{client}:{id}" as the id of a command, so that ids of
// different clients never collide; its response carries it back.
func ExampleDeviceMsgID() {
	id, _ := protocol.ParseID(json.RawMessage(`"r-42"`))
	s := protocol.DeviceMsgID("app-1", id)
	fmt.Println(s)

	client, back, err := protocol.ParseDeviceMsgID(s)
	fmt.Println(client, back.Key(), err)
	// Output:
	// app-1:r-42
	// app-1 r-42 <nil>
}

func ExampleEnvelope_DeviceRequest() {
	id, _ := protocol.ParseID(json.RawMessage(`42`))
	e := &protocol.Envelope{
		Kind: protocol.KindCommand, Client: "app-1", Device: "dev-1", MsgID: id,
		Payload: json.RawMessage(`{"jsonrpc":"2.0","method":"reboot","params":{"delay":5},"id":42}`),
	}
	b, _ := e.DeviceRequest()
	fmt.Println(protocol.DeviceCommandsTopic(e.Device), string(b))
	// Output:
	// devices/dev-1/commands {"jsonrpc":"2.0","method":"reboot","params":{"delay":5},"id":"app-1:42"}
}

// Every identity gets its own topics, and may subscribe only to those.
func ExampleMaySubscribe() {
	fmt.Println(protocol.DeviceCommandsTopic("dev-1"))
	fmt.Println(protocol.DeviceResponsesTopic("dev-1"))
	fmt.Println(protocol.ClientResultsTopic("app-1", "dev-1"))
	fmt.Println(protocol.ClientResultsFilter("app-1"))

	for _, f := range []string{"clients/app-1/results/+", "clients/app-1/results/#", "clients/app-2/results/+", "#", "$SYS/#", "$share/g/clients/app-1/results/+"} {
		fmt.Println(f, protocol.MaySubscribe("app-1", f))
	}
	fmt.Println(protocol.MayPublish("dev-1", "devices/dev-1/responses"), protocol.MayPublish("dev-1", "devices/dev-2/responses"))

	t, _ := protocol.ParseTopic("clients/app-1/results/dev-1")
	fmt.Println(t.Kind == protocol.TopicClientResults, t.Identity, t.Device)
	// Output:
	// devices/dev-1/commands
	// devices/dev-1/responses
	// clients/app-1/results/dev-1
	// clients/app-1/results/+
	// clients/app-1/results/+ true
	// clients/app-1/results/# false
	// clients/app-2/results/+ false
	// # false
	// $SYS/# false
	// $share/g/clients/app-1/results/+ false
	// true false
	// true app-1 dev-1
}

// Fingerprint tells a harmless retry from a conflicting reuse of an id:
// key order and whitespace do not matter, number literals do.
func ExampleFingerprint() {
	a := protocol.Fingerprint("dev-1", "set", json.RawMessage(`{"a":1,"b":2}`), 30*time.Second, time.Hour)
	b := protocol.Fingerprint("dev-1", "set", json.RawMessage(`{ "b": 2, "a": 1 }`), 30*time.Second, time.Hour)
	c := protocol.Fingerprint("dev-1", "set", json.RawMessage(`{"a":1.0,"b":2}`), 30*time.Second, time.Hour)
	fmt.Println(a == b, a == c)

	canon, _ := protocol.CanonicalJSON(json.RawMessage(`{ "b": 2, "a": [1.0, {"d":0,"c":0}] }`))
	fmt.Println(string(canon))
	// Output:
	// true false
	// {"a":[1.0,{"c":0,"d":0}],"b":2}
}

func ExampleStatus_ThingsBoard() {
	for _, s := range protocol.Statuses {
		fmt.Printf("%-9s final=%-5v %-10s %d\n", s, s.Final(), s.ThingsBoard(), s.ResultCode())
	}
	// Output:
	// pending   final=false QUEUED     0
	// queued    final=false QUEUED     0
	// scheduled final=false QUEUED     0
	// sent      final=false SENT       0
	// delivered final=false DELIVERED  0
	// succeeded final=true  SUCCESSFUL 0
	// failed    final=true  FAILED     0
	// timeout   final=true  TIMEOUT    -32001
	// expired   final=true  EXPIRED    -32002
	// cancelled final=true  FAILED     -32004
	// rejected  final=true  FAILED     -32005
	// dead      final=true  FAILED     -32003
	// lost      final=true  FAILED     -32006
	// void      final=false            0
}
