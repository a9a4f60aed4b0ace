// Command device is an example device written with public packages only:
// the API client generated from the gateway's OpenAPI document
// (examples/go/apiclient) and Eclipse Paho (MQTT 3.1.1).
//
// It asks the gateway which push server owns it (GET /v1/connect/{device}),
// connects there with its identity as client ID and username and its token
// as password, subscribes to devices/{device}/commands at QoS 1 and answers
// each command on devices/{device}/responses with the same id: "echo"
// returns its params, anything else the JSON-RPC error -32601. A command
// delivered again (the same id) gets the same answer again. After a lost
// connection it asks /v1/connect again, since the owner may have changed.
//
//	go run ./examples/go/device --api http://127.0.0.1:8080 --device dev-1 --token "$DEVICE_TOKEN"
//
// Mint a device token with
// `bin/devicesim token --role device --sub dev-1 --secret <secret>`.
// The flags default to GW_API_URL, GW_DEVICE and GW_TOKEN. It prints "ready"
// once subscribed and one line per answer; Ctrl-C stops it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/gateway/examples/go/apiclient"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "device:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("device", flag.ContinueOnError)
	api := fs.String("api", envOr("GW_API_URL", "http://127.0.0.1:8080"), "the gateway's HTTP API")
	deviceID := fs.String("device", envOr("GW_DEVICE", "dev-1"), "this device's identity (the token's sub)")
	token := fs.String("token", os.Getenv("GW_TOKEN"), "a device token for --device")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *token == "" {
		return errors.New("no token: give --token or GW_TOKEN")
	}
	gw, err := apiclient.NewClientWithResponses(*api, apiclient.WithRequestEditorFn(bearer(*token)))
	if err != nil {
		return fmt.Errorf("cannot make the API client: %w", err)
	}
	d := &device{id: *deviceID, answers: map[string][]byte{}}
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := d.session(ctx, gw, *token)
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintln(os.Stderr, "device: session ended:", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return nil
}

type device struct {
	id string

	mu      sync.Mutex
	answers map[string][]byte // by command id: a redelivery gets the same answer
}

// session connects to the push server that owns the device and serves
// commands until the connection is lost or ctx is done.
func (d *device) session(ctx context.Context, gw *apiclient.ClientWithResponses, token string) error {
	broker, err := owner(ctx, gw, d.id)
	if err != nil {
		return err
	}
	lost := make(chan error, 1)
	opts := mqtt.NewClientOptions().
		AddBroker(broker).
		SetClientID(d.id).
		SetUsername(d.id).
		SetPassword(token).
		SetCleanSession(true).
		SetAutoReconnect(false). // ask /v1/connect again instead
		SetOrderMatters(false).  // handlers may wait for their PUBACK
		SetConnectTimeout(5 * time.Second).
		SetKeepAlive(10 * time.Second).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
	c := mqtt.NewClient(opts)
	if err := wait(c.Connect()); err != nil {
		return fmt.Errorf("cannot connect to %s: %w", broker, err)
	}
	defer c.Disconnect(250)
	if err := wait(c.Subscribe("devices/"+d.id+"/commands", 1, d.onCommand)); err != nil {
		return fmt.Errorf("cannot subscribe: %w", err)
	}
	fmt.Println("ready")
	select {
	case <-ctx.Done():
		return ctx.Err()
	case err := <-lost:
		return fmt.Errorf("connection lost: %w", err)
	}
}

// onCommand answers one command. paho acknowledges it when this returns,
// after the answer was acknowledged by the push server.
func (d *device) onCommand(c mqtt.Client, m mqtt.Message) {
	var req struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
	}
	if err := json.Unmarshal(m.Payload(), &req); err != nil || len(req.ID) == 0 {
		fmt.Fprintf(os.Stderr, "device: not a JSON-RPC request: %s\n", m.Payload())
		return
	}
	key := string(req.ID)
	d.mu.Lock()
	answer, seen := d.answers[key]
	if !seen {
		answer = respond(req.ID, req.Method, req.Params)
		d.answers[key] = answer
	}
	d.mu.Unlock()
	if err := wait(c.Publish("devices/"+d.id+"/responses", 1, false, answer)); err != nil {
		fmt.Fprintln(os.Stderr, "device: cannot answer:", err)
		return
	}
	fmt.Printf("answered %s %s\n", key, req.Method)
}

// respond is the device's behaviour: "echo" returns its params.
func respond(id json.RawMessage, method string, params json.RawMessage) []byte {
	type rpcError struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	out := struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Result  json.RawMessage `json:"result,omitempty"`
		Error   *rpcError       `json:"error,omitempty"`
	}{JSONRPC: "2.0", ID: id}
	switch method {
	case "echo":
		out.Result = params
		if len(out.Result) == 0 {
			out.Result = json.RawMessage("null")
		}
	default:
		out.Error = &rpcError{Code: -32601, Message: "method not found: " + method}
	}
	b, _ := json.Marshal(out)
	return b
}

// owner asks the gateway which push server owns identity and returns its
// address in paho's form (tcp:// or ssl://).
func owner(ctx context.Context, gw *apiclient.ClientWithResponses, identity string) (string, error) {
	resp, err := gw.ConnectWithResponse(ctx, identity)
	if err != nil {
		return "", fmt.Errorf("cannot ask the gateway for the push server: %w", err)
	}
	if resp.JSON200 == nil {
		return "", fmt.Errorf("GET /v1/connect/%s answered %s: %s", identity, resp.Status(), resp.Body)
	}
	return brokerURL(resp.JSON200.MqttUrl)
}

// brokerURL turns the gateway's mqtt:// or mqtts:// URL into paho's form.
func brokerURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("bad mqtt_url %q: %w", s, err)
	}
	switch u.Scheme {
	case "mqtt", "tcp":
		return "tcp://" + u.Host, nil
	case "mqtts", "ssl", "tls":
		return "ssl://" + u.Host, nil
	}
	return "", fmt.Errorf("mqtt_url %q: scheme %q, want mqtt or mqtts", s, u.Scheme)
}

func bearer(token string) apiclient.RequestEditorFn {
	return func(_ context.Context, r *http.Request) error {
		r.Header.Set("Authorization", "Bearer "+token)
		return nil
	}
}

// wait waits for a paho token, at most 10 s.
func wait(t mqtt.Token) error {
	if !t.WaitTimeout(10 * time.Second) {
		return errors.New("no answer within 10s")
	}
	return t.Error()
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
