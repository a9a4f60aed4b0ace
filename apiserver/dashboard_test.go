package main

import (
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/apiserver/web"
	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/ring"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// The dashboard and its files are served from the binary, next to the
// API, and do not shadow the API's 404s.
func TestDashboardFiles(t *testing.T) {
	t.Parallel()
	g := opsGW(t)
	get := func(path string) (*http.Response, string) {
		resp, err := http.Get(g.ts.URL + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, string(b)
	}
	// (Not g.do: the OpenAPI validator cannot decode text/html.)
	resp, body := get("/")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	assert.Contains(t, body, "<title>Gateway operations</title>")
	assert.Equal(t, web.ContentSecurityPolicy, resp.Header.Get("Content-Security-Policy"))
	for _, f := range web.Files() {
		resp, _ := get(web.AssetPrefix + f)
		assert.Equal(t, http.StatusOK, resp.StatusCode, f)
	}
	resp, _ = get("/assets/missing.js")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, body = get("/v1/nothing")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Contains(t, body, `"code":-32012`, "API 404s stay JSON-RPC errors")
}

// textOf returns the text of the element with id in html ("" when there
// is none): the element must hold text only.
func textOf(html, id string) string {
	m := regexp.MustCompile(`id="` + regexp.QuoteMeta(id) + `"[^>]*>([^<]*)<`).FindStringSubmatch(html)
	if m == nil {
		return ""
	}
	return strings.TrimSpace(m[1])
}

// The dashboard, driven by a real browser against a real apiserver: it
// signs in from the URL fragment, polls /v1/stats and shows the queue
// depth that was published, the dead letters and the push servers. The
// screenshot goes to docs/dashboard.png with GW_UPDATE_SCREENSHOT=1, else
// to a temporary folder.
// mustGroupID parses a group command's id.
func mustGroupID(t *testing.T, s string) protocol.ID {
	t.Helper()
	id, err := protocol.ParseIDKey(s)
	require.NoError(t, err)
	return id
}

func TestDashboardInChromium(t *testing.T) {
	t.Parallel()
	g := opsGW(t)
	bin := testenv.Chromium(t)
	ctx := context.Background()

	// A known state: three dead commands, one of them replayed; k
	// commands waiting in all (no worker); a push server with sessions.
	g.deadCommands(t, "fw-update-17", 4242, "cfg-9")
	op := token(t, "ops", auth.RoleOperator)
	require.Equal(t, http.StatusAccepted, g.do(http.MethodPost, "/v1/dead/cfg-9/replay?client=app-1", op, nil).Status)
	const k = 23
	g.postN(t, "app-1", "dash", k-1)
	r := ring.New(g.rdb, g.ns, ring.Options{Logger: testenv.Logger(t)})
	jctx, stop := context.WithCancel(ctx)
	require.NoError(t, r.Join(jctx, ring.Member{Node: "push-1", URL: "mqtt://127.0.0.1:1884"}))
	t.Cleanup(func() { _ = r.Leave(context.Background()); stop() })
	for _, id := range []string{"dev-1", "dev-2", "dev-3", "app-1"} {
		require.NoError(t, g.store.SetSession(ctx, id, "push-1"))
	}
	require.Eventually(t, func() bool { return len(g.ring.Members()) == 1 }, 5*time.Second, 20*time.Millisecond)
	// Two commands reserved in lane "valve" of dev-1 (not published:
	// the queue counts stay as they are).
	for _, id := range []string{"v1", "v2"} {
		mid, err := protocol.ParseIDKey(id)
		require.NoError(t, err)
		_, _, err = g.store.Reserve(ctx, &mailbox.Command{Client: "app-1", Device: "dev-1", ID: mid, Method: "open",
			Fingerprint: "lane-" + id, Timeout: 30 * time.Second, ExpiresIn: time.Hour, Lane: "valve"})
		require.NoError(t, err)
	}

	// A group command of three children, two of them final (created
	// by the store as a worker would: no message in the queues).
	grp := &mailbox.Group{Client: "app-1", ID: mustGroupID(t, "roll-9"), Method: "reboot", Timeout: time.Minute,
		ExpiresIn: time.Hour, Fingerprint: "dash"}
	_, _, err := g.store.ClaimGroup(ctx, grp, []string{"dev-7", "dev-8", "dev-9"})
	require.NoError(t, err)
	require.NoError(t, g.store.MarkGroupQueued(ctx, "app-1", "roll-9"))
	require.NoError(t, g.store.RunGroup(ctx, "app-1", "roll-9", ""))
	for _, d := range []string{"dev-7", "dev-8"} {
		id := json.RawMessage(`"app-1:roll-9:` + d + `"`)
		_, err := g.store.Complete(ctx, "app-1", "roll-9:"+d, d, protocol.NewResult(id, json.RawMessage(`true`)), 0, "")
		require.NoError(t, err)
	}

	// The token in the fragment, a link to one command and one device.
	url := g.ts.URL + "/#token=" + op + "&client=app-1&id=4242&device=dev-1"
	dom := testenv.RunChromium(t, bin, url, "--virtual-time-budget=5000", "--dump-dom")

	assert.Equal(t, "23", textOf(dom, "commands-ready"), "the commands tile")
	assert.Equal(t, fmt.Sprintf("%d queues", g.topo.QueueCount), textOf(dom, "commands-queues"))
	assert.Equal(t, "23", textOf(dom, "q-commands-ready"), "the queue table")
	assert.Equal(t, "0", textOf(dom, "q-commands-consumers"))
	// Each command queue in a row of its own under the sum.
	sum := 0
	for q := range g.topo.QueueCount {
		n, err := strconv.Atoi(textOf(dom, fmt.Sprintf("q-commands.%d-ready", q)))
		require.NoError(t, err, "command queue %d", q)
		sum += n
		assert.Contains(t, dom, ">"+g.topo.CommandQueue(q)+"<")
	}
	assert.Equal(t, 23, sum, "the command queues add up")
	// No results queue (device answers do not cross RabbitMQ): no tile,
	// no row.
	assert.NotContains(t, dom, `id="results-ready"`)
	assert.NotContains(t, dom, ">"+g.ns+".results<")
	assert.NotContains(t, dom, ">"+g.ns+".results.dead<")
	assert.Equal(t, "0", textOf(dom, "q-commands.dead-ready"))
	assert.Equal(t, "3", textOf(dom, "dead-count"))
	assert.Regexp(t, `id="outcome-dead"><span class="n">3</span>`, dom, "dead in the recent outcomes")
	assert.Equal(t, "4", textOf(dom, "sessions-total"))
	assert.Equal(t, "1 push server", textOf(dom, "push-count"))
	assert.Equal(t, g.ns, textOf(dom, "namespace"))
	assert.Contains(t, textOf(dom, "live-text"), "live · updated")
	assert.Regexp(t, `<section class="card signin" id="signin" hidden`, dom, "the sign-in form is hidden")
	assert.Contains(t, dom, `class="uplot`, "the chart is drawn")
	assert.NotContains(t, dom, op, "the token stays out of the page")
	// The dead letters, with a replay button each.
	assert.Contains(t, dom, "fw-update-17")
	assert.Contains(t, dom, ">4242<")
	assert.Contains(t, dom, "delivery limit reached for 4242")
	assert.Equal(t, 2, strings.Count(dom, ">Replay</button>"))
	assert.Equal(t, 1, strings.Count(dom, ">Publish again</button>"), "the replayed one")
	assert.Contains(t, dom, "push-1")
	// The group command and its progress.
	assert.Equal(t, "2 / 3", textOf(dom, "group-final-app-1-roll-9"), "the group's progress")
	assert.Contains(t, dom, `<span class="badge running">running</span>`)
	assert.Contains(t, dom, "succeeded 2")
	// The command of the link, with its status and history.
	i := strings.Index(dom, `id="lookup-result"`)
	require.Positive(t, i, "no lookup result")
	lookup := dom[i:]
	assert.Contains(t, lookup, `<span class="badge dead">dead</span>`)
	assert.Contains(t, lookup, "app-1 → dev-1")
	assert.Contains(t, lookup, "Reason: delivery limit reached for 4242")
	assert.Contains(t, lookup, `"code": -32003`, "the client's response")
	// The device of the link: how it connects, its lane and the head.
	assert.Equal(t, "MQTT session", textOf(dom, "device-connection"))
	i = strings.Index(dom, `id="device-lanes"`)
	require.Positive(t, i, "no lanes table for dev-1")
	lanes := dom[i:]
	assert.Contains(t, lanes, ">valve<")
	assert.Contains(t, lanes, "app-1 · v1", "the head, for an operator")
	assert.Contains(t, lanes, `<span class="badge pending">pending</span>`)

	// Without a token: the sign-in form, and no data.
	dom = testenv.RunChromium(t, bin, g.ts.URL+"/", "--virtual-time-budget=2000", "--dump-dom")
	assert.Regexp(t, `<section class="card signin" id="signin">`, dom, "the sign-in form shows")
	assert.Regexp(t, `<div id="dashboard" hidden`, dom)
	assert.Equal(t, "—", textOf(dom, "commands-ready"))
	// A token the API refuses: back to the sign-in form, saying why.
	dom = testenv.RunChromium(t, bin, g.ts.URL+"/#token="+token(t, "app-1", auth.RoleClient, "dev-*"), "--virtual-time-budget=2000", "--dump-dom")
	assert.Regexp(t, `<section class="card signin" id="signin">`, dom)
	assert.Contains(t, textOf(dom, "signin-error"), "The token was refused")

	// The screenshot, with a queue that grows while the page polls.
	shot := filepath.Join(t.TempDir(), "dashboard.png")
	if os.Getenv("GW_UPDATE_SCREENSHOT") == "1" {
		shot = filepath.Join("..", "docs", "dashboard.png")
		require.NoError(t, os.MkdirAll(filepath.Dir(shot), 0o755))
	}
	stopLoad := g.backgroundLoad(t)
	if os.Getenv("GW_UPDATE_SCREENSHOT") == "1" {
		// Let RabbitMQ's 5-s samples see the load, for the rates.
		time.Sleep(11 * time.Second)
	}
	testenv.RunChromium(t, bin, url, "--virtual-time-budget=40000", "--window-size=1280,900", "--screenshot="+shot)
	stopLoad()
	f, err := os.Open(shot)
	require.NoError(t, err, "no screenshot")
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	require.NoError(t, err)
	assert.Equal(t, 1280, cfg.Width)
	assert.Equal(t, 900, cfg.Height)
	t.Logf("screenshot: %s", shot)
}

// backgroundLoad publishes commands (raw envelopes) and
// consumes commands a little slower, like a worker falling behind, until
// the returned function is called, so that the charts have something to
// draw.
func (g *gw) backgroundLoad(t *testing.T) func() {
	t.Helper()
	ch, err := g.conn.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.Qos(20, 0, false))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(8 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			exchange, key := g.topo.DeviceRoute(fmt.Sprintf("dev-%d", i))
			pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
			_ = g.pub.Publish(pctx, exchange, key, []byte(`{}`), amqpx.Headers{})
			pcancel()
		}
	}()
	// Every command queue is consumed, each a little slower than its
	// share of the publishes.
	for _, q := range g.topo.CommandQueues() {
		deliveries, err := ch.Consume(q, "dashboard-test-"+q, false, false, false, false, nil)
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case d, ok := <-deliveries:
					if !ok {
						return
					}
					time.Sleep(time.Duration(14*g.topo.QueueCount) * time.Millisecond)
					_ = d.Ack(false)
				}
			}
		}()
	}
	return func() { cancel(); wg.Wait(); ch.Close() }
}
