// Command client is an example client written with public packages only:
// the API client generated from the gateway's OpenAPI document
// (examples/go/apiclient) and Eclipse Paho (MQTT 3.1.1).
//
// It sends one JSON-RPC command to a device over HTTP and prints the
// device's answer, which comes back over MQTT:
//
//  1. GET /v1/connect/{client}: which push server holds its results;
//  2. connect there (client ID and username the client's identity, the
//     token as password) and subscribe to clients/{client}/results/{device}
//     at QoS 1;
//  3. POST /v1/devices/{device}/commands: 202 once the command is durable;
//  4. print the result whose id is the command's id.
//
// A result that arrives while the client is offline waits in its mailbox,
// so the order of 2 and 3 only saves a round trip.
//
//	go run ./examples/go/client --api http://127.0.0.1:8080 --client app-1 --token "$CLIENT_TOKEN" \
//	    --device dev-1 --method echo --params '{"hello":"world"}'
//
// Mint a client token with
// `bin/devicesim token --role client --sub app-1 --devices 'dev-*' --secret <secret>`.
// The flags default to GW_API_URL, GW_CLIENT, GW_TOKEN and GW_DEVICE. Exit
// status: 0 the device answered with a result, 2 with an error (or the
// gateway ended the command: timeout, expired, ...), 1 anything else.
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
	"strconv"
	"strings"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/gateway/examples/go/apiclient"
)

// errDeviceError is the outcome of a command answered with an error.
var errDeviceError = errors.New("the command ended with an error")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:])
	switch {
	case errors.Is(err, errDeviceError):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	api := fs.String("api", envOr("GW_API_URL", "http://127.0.0.1:8080"), "the gateway's HTTP API")
	client := fs.String("client", envOr("GW_CLIENT", "app-1"), "this client's identity (the token's sub)")
	token := fs.String("token", os.Getenv("GW_TOKEN"), "a client token for --client")
	device := fs.String("device", envOr("GW_DEVICE", "dev-1"), "the device to command")
	method := fs.String("method", "echo", "the JSON-RPC method")
	params := fs.String("params", `{"hello":"world"}`, "the JSON-RPC params (JSON)")
	id := fs.String("id", "go-"+strconv.FormatInt(time.Now().UnixNano(), 36), "the command's id, unique for this client")
	timeout := fs.Duration("timeout", 30*time.Second, "how long the device has to answer, and this program to wait")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *token == "" {
		return errors.New("no token: give --token or GW_TOKEN")
	}
	if !json.Valid([]byte(*params)) {
		return fmt.Errorf("--params is not JSON: %s", *params)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout+10*time.Second)
	defer cancel()

	gw, err := apiclient.NewClientWithResponses(*api, apiclient.WithRequestEditorFn(bearer(*token)))
	if err != nil {
		return fmt.Errorf("cannot make the API client: %w", err)
	}

	// 1 and 2: the results' subscription.
	conn, err := gw.ConnectWithResponse(ctx, *client)
	if err != nil {
		return fmt.Errorf("cannot ask the gateway for the push server: %w", err)
	}
	if conn.JSON200 == nil {
		return fmt.Errorf("GET /v1/connect/%s answered %s: %s", *client, conn.Status(), conn.Body)
	}
	broker, err := brokerURL(conn.JSON200.MqttUrl)
	if err != nil {
		return err
	}
	idJSON, _ := json.Marshal(*id)
	results := make(chan []byte, 16)
	m := mqtt.NewClient(mqtt.NewClientOptions().
		AddBroker(broker).
		SetClientID(*client).
		SetUsername(*client).
		SetPassword(*token).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second))
	if err := wait(m.Connect()); err != nil {
		return fmt.Errorf("cannot connect to %s: %w", broker, err)
	}
	defer m.Disconnect(250)
	topic := "clients/" + *client + "/results/" + *device
	if err := wait(m.Subscribe(topic, 1, func(_ mqtt.Client, msg mqtt.Message) {
		var res struct {
			ID json.RawMessage `json:"id"`
		}
		// Other commands' results (an earlier run's, say) are skipped.
		if json.Unmarshal(msg.Payload(), &res) == nil && string(res.ID) == string(idJSON) {
			results <- msg.Payload()
		}
	})); err != nil {
		return fmt.Errorf("cannot subscribe to %s: %w", topic, err)
	}

	// 3: the command.
	body := fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"method":%q,"params":%s}`, idJSON, *method, *params)
	secs := strconv.Itoa(int(timeout.Seconds()))
	sent, err := gw.SendCommandsWithBodyWithResponse(ctx, *device, &apiclient.SendCommandsParams{Timeout: &secs},
		"application/json", strings.NewReader(body))
	if err != nil {
		return fmt.Errorf("cannot send the command: %w", err)
	}
	switch sent.StatusCode() {
	case http.StatusAccepted, http.StatusOK: // 200: the same command was sent before
	default:
		return fmt.Errorf("POST /v1/devices/%s/commands answered %s: %s", *device, sent.Status(), sent.Body)
	}
	fmt.Fprintf(os.Stderr, "accepted: %s\n", strings.TrimSpace(string(sent.Body)))

	// 4: the result.
	select {
	case <-ctx.Done():
		return fmt.Errorf("no result for %s: %w", *id, ctx.Err())
	case res := <-results:
		fmt.Println(string(res))
		var r struct {
			Error json.RawMessage `json:"error"`
		}
		if json.Unmarshal(res, &r) == nil && len(r.Error) > 0 {
			return errDeviceError
		}
		return nil
	}
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
