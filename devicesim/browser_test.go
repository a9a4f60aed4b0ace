package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// mqttJSBundle is MQTT.js's browser bundle, from the npm package that
// deployments/local/services.sh installs for the push server's Node test.
const mqttJSBundle = "pushserver/testdata/mqttjs/node_modules/mqtt/dist/mqtt.min.js"

// browserReport is one step a page reported (testdata/browser/index.html).
type browserReport struct {
	Step   string          `json:"step"`
	Error  string          `json:"error"`
	Status int             `json:"status"`
	QoS    int             `json:"qos"`
	Body   json.RawMessage `json:"body"`
	Topic  string          `json:"topic"`
	Result json.RawMessage `json:"result"`
}

// TestBrowserClient: a page in headless Chromium, served on an origin of
// its own, sends a command over HTTP to the apiserver of another origin
// (CORS, GW_CORS_ORIGINS) and receives its result over MQTT over
// WebSocket (GW_MQTT_WS_ADDR) with MQTT.js, from a simulated device; the
// command is then succeeded in the gateway's own record. The same page on
// an origin that is not listed cannot send the command.
func TestBrowserClient(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	t.Parallel()
	bin := testenv.Chromium(t)
	root, err := gwproc.RepoRoot()
	require.NoError(t, err)
	bundle := filepath.Join(root, mqttJSBundle)
	if _, err := os.Stat(bundle); err != nil {
		t.Fatalf("MQTT.js is not installed (%v): run npm ci --no-audit --no-fund --prefix pushserver/testdata/mqttjs (or make services)", err)
	}

	page, reports := pageServer(t, bundle)
	// The same page on an origin the apiserver does not list.
	otherPage, otherReports := pageServer(t, bundle)

	wsAddr := testenv.FreeAddr(t)
	g := startGatewayOn(t, testenv.RedisURL(), 1, 1, "GW_MQTT_WS_ADDR="+wsAddr, "GW_CORS_ORIGINS="+page.URL)

	// One simulated device, which answers echo with its params.
	gl := &globals{API: g.APIURL, Secret: g.Opts.Secret, stdout: io.Discard, stderr: io.Discard, log: telemetry.Discard()}
	fleetCtx, stopFleet := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { stopFleet(); wg.Wait() }()
	fl, err := StartFleet(fleetCtx, gl, FleetOptions{Devices: 1, Prefix: "dev-browser-", Connect: 1}, &wg)
	require.NoError(t, err)
	waitCtx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	require.NoError(t, fl.WaitOnline(waitCtx))

	const client, device, id = "app-browser", "dev-browser-0", "from-chromium-1"
	tok, err := g.Token("client", client, []string{device})
	require.NoError(t, err)
	url := fmt.Sprintf("%s/#api=%s&ws=ws://%s/mqtt&token=%s&client=%s&device=%s&id=%s",
		page.URL, g.APIURL, wsAddr, tok, client, device, id)
	start := time.Now()
	stop, output := testenv.StartChromium(t, bin, url)

	var posted, result *browserReport
	deadline := time.After(20 * time.Second)
	// The page reports each step as it happens: the result over MQTT may
	// come before the POST's answer is reported, so wait for both.
	for result == nil || posted == nil {
		select {
		case rep := <-reports:
			require.Empty(t, rep.Error, "the page failed; chromium:\n%s", output())
			t.Logf("page, after %s: %s", time.Since(start).Round(time.Millisecond), rep.Step)
			switch rep.Step {
			case "subscribed":
				require.Equal(t, 1, rep.QoS, "SUBACK over WebSocket")
			case "posted":
				posted = &rep
			case "result":
				result = &rep
			}
		case <-deadline:
			t.Fatalf("no result and POST answer in the page within 20 s (posted: %+v, result: %+v); chromium:\n%s", posted, result, output())
		}
	}
	stop()

	require.Equal(t, http.StatusAccepted, posted.Status, "POST from the page's origin: %s", posted.Body)
	require.Equal(t, protocol.ClientResultsTopic(client, device), result.Topic)
	var res struct {
		ID     string          `json:"id"`
		Result json.RawMessage `json:"result"`
		Error  json.RawMessage `json:"error"`
	}
	require.NoError(t, json.Unmarshal(result.Result, &res), "result %s", result.Result)
	require.Equal(t, id, res.ID, "result %s", result.Result)
	require.Nil(t, res.Error, "result %s", result.Result)
	require.JSONEq(t, `{"from":"chromium"}`, string(res.Result), "echo's result")

	// The gateway's record says the same.
	status, rec := getCommand(t, g.APIURL, tok, id)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, protocol.StatusSucceeded, rec.Status, "GET /v1/commands/%s", id)

	// From an origin GW_CORS_ORIGINS does not list, the browser refuses
	// the POST after its preflight: the page gets an error, and there is
	// no command.
	const otherID = "from-chromium-2"
	url = fmt.Sprintf("%s/#api=%s&ws=ws://%s/mqtt&token=%s&client=%s&device=%s&id=%s",
		otherPage.URL, g.APIURL, wsAddr, tok, client, device, otherID)
	stop, output = testenv.StartChromium(t, bin, url)
	defer stop()
	deadline = time.After(20 * time.Second)
	for refused := false; !refused; {
		select {
		case rep := <-otherReports:
			t.Logf("page of another origin: %s%s", rep.Step, rep.Error)
			require.NotEqual(t, "posted", rep.Step, "the POST from an origin not listed went through: %d %s", rep.Status, rep.Body)
			if rep.Error != "" {
				require.Equal(t, "POST: Failed to fetch", rep.Error, "chromium:\n%s", output())
				refused = true
			}
		case <-deadline:
			t.Fatalf("the page of another origin reported no refused POST within 20 s; chromium:\n%s", output())
		}
	}
	status, _ = getCommand(t, g.APIURL, tok, otherID)
	require.Equal(t, http.StatusNotFound, status, "GET /v1/commands/%s: a command from the origin not listed", otherID)
}

// commandRecord is the part of GET /v1/commands/{id} the test reads.
type commandRecord struct {
	Status protocol.Status `json:"status"`
}

// getCommand reads command id with token tok.
func getCommand(t *testing.T, api, tok, id string) (int, commandRecord) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, api+"/v1/commands/"+id, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var rec commandRecord
	if resp.StatusCode == http.StatusOK {
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&rec))
	}
	return resp.StatusCode, rec
}

// pageServer serves testdata/browser/index.html and MQTT.js's bundle on
// an origin of its own, and passes on what the page reports.
func pageServer(t *testing.T, bundle string) (*httptest.Server, <-chan browserReport) {
	reports := make(chan browserReport, 16)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, filepath.Join("testdata", "browser", "index.html"))
	})
	mux.HandleFunc("GET /mqtt.min.js", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, bundle) })
	mux.HandleFunc("POST /report", func(w http.ResponseWriter, r *http.Request) {
		var rep browserReport
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
		if err := json.Unmarshal(b, &rep); err != nil {
			rep.Error = fmt.Sprintf("test: report %q: %v", b, err)
		}
		select {
		case reports <- rep:
		default:
		}
	})
	page := httptest.NewServer(mux)
	t.Cleanup(page.Close)
	return page, reports
}
