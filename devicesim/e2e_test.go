package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/internal/testenv"
)

// startGatewayOn builds the real binaries and starts them as processes in
// a fresh namespace on free ports, with extraEnv added to each, and the
// gateway's state in the Redis of redisURL, in any of the three forms of
// GW_REDIS_URL. The namespace's
// keys there are deleted when t ends (testenv.Namespace cleans the shared
// Redis only).
func startGatewayOn(t *testing.T, redisURL string, workers, push int, extraEnv ...string) *gwproc.Gateway {
	t.Helper()
	testenv.RequireServices(t)
	ns := testenv.Namespace(t)
	if redisURL != testenv.RedisURL() {
		// Registered before the gateway starts: it runs after it stops.
		t.Cleanup(func() { cleanRedisNamespace(t, redisURL, ns) })
	}
	bin := builtBinaries(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	runDir := filepath.Join(t.TempDir(), "run")
	g, err := gwproc.Start(ctx, gwproc.Options{
		BinDir: bin, RunDir: runDir, Namespace: ns, Secret: "e2e-secret-" + ns,
		AMQPURL: testenv.AMQPURL(), RedisURL: redisURL,
		Workers: workers, PushServers: push, ExtraEnv: extraEnv,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.Stop()
		if t.Failed() {
			t.Logf("gateway logs:\n%s", g.Logs(3000))
		}
	})
	return g
}

// The gateway's binaries, built once for every test of the package (a
// build takes seconds; each test used to make its own) and removed by
// TestMain.
var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// builtBinaries returns the folder of the gateway's binaries, building
// them the first time; it fails t when the build fails.
func builtBinaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "devicesim-test-bin-")
		if buildErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		buildErr = gwproc.Build(ctx, binDir, false)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// testMainEnv makes the test binary run as devicesim itself (for the
// completion script, which runs "devicesim __complete …").
const testMainEnv = "DEVICESIM_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(testMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// redisForms are the Redis deployments the end-to-end load tests run the
// gateway's state in: the shared Redis server and the local Redis Cluster
// (GW_REDIS_URL in the Cluster form).
var redisForms = []struct {
	name string
	url  func(testing.TB) string
}{
	{"server", func(testing.TB) string { return testenv.RedisURL() }},
	{"cluster", testenv.RedisClusterURL},
}

// TestEndToEnd drives the real binaries with a simulated fleet that fails
// and drops some commands, under a bounded load, and checks the ledger:
// nothing lost, nothing unexpected, every result right for its device's
// behaviour. It runs with the state in each of redisForms, one after the
// other (the checks count timeouts, which a starved CPU would add to).
func TestEndToEnd(t *testing.T) {
	for _, form := range redisForms {
		t.Run(form.name, func(t *testing.T) { runEndToEnd(t, form.url(t)) })
	}
}

func runEndToEnd(t *testing.T, redisURL string) {
	// The load keeps at most 256 requests in flight; a client's share of
	// the apiserver's bound (an eighth) is raised to that, so that a
	// starved CPU, where each POST waits longer, does not turn the load
	// into 429s: this test checks the ledger, the flood tests the shares.
	g := startGatewayOn(t, redisURL, 2, 3, "GW_MAX_INFLIGHT=2048")
	gl := &globals{API: g.APIURL, Secret: g.Opts.Secret, stdout: io.Discard, stderr: io.Discard, log: telemetry.Discard()}

	fleetCtx, stopFleet := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { stopFleet(); wg.Wait() }()
	fl, err := StartFleet(fleetCtx, gl, FleetOptions{
		Devices: 40, Prefix: "dev-", Connect: 16,
		Behaviour: Behaviour{Latency: time.Millisecond, Jitter: 2 * time.Millisecond, FailRate: 0.1, DropRate: 0.05},
	}, &wg)
	if err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := fl.WaitOnline(waitCtx); err != nil {
		t.Fatal(err)
	}

	rep, err := RunLoad(t.Context(), gl, LoadOptions{
		Clients: 4, ClientPrefix: "app-", Devices: 40, Prefix: "dev-",
		Rate: 200, Duration: 5 * time.Second, Method: "echo",
		Timeout: 2 * time.Second, ExpiresIn: time.Minute, Drain: 30 * time.Second, MaxInflight: 256,
	})
	if err != nil {
		t.Fatal(err)
	}
	ft := fl.Totals()
	t.Logf("load: %+v", *rep)
	t.Logf("fleet: %+v", ft)

	checks := []struct {
		name      string
		got, want int64
	}{
		{"rejected", rep.Rejected, 0},
		{"indeterminate", rep.Indeterminate, 0},
		{"accepted", rep.Accepted, rep.Sent},
		{"lost", rep.Lost, 0},
		{"unexpected", rep.Unexpected, 0},
		{"wrong", rep.Wrong, 0},
		{"conflicting", rep.Conflicting, 0},
		{"received", rep.Received, rep.Accepted},
		{"outcomes = accepted", rep.Outcomes.Succeeded + rep.Outcomes.DeviceError + rep.Outcomes.Timeout, rep.Accepted},
		{"expired", rep.Outcomes.Expired, 0},
		{"other gateway errors", rep.Outcomes.OtherGW, 0},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	// A command ends as its device behaved: simulated failures as device
	// errors, dropped ones as timeouts. On a starved CPU an answer can
	// also reach the push server after its timeout; the command then ends
	// timeout, honestly, and the answer is recorded as late. So every
	// timeout beyond the dropped commands must show up as a late answer
	// (the gateway counts them in /v1/stats), and none may be missing.
	if rep.Outcomes.DeviceError > ft.Failed {
		t.Errorf("device errors = %d, more than the %d simulated failures", rep.Outcomes.DeviceError, ft.Failed)
	}
	extra := rep.Outcomes.Timeout - ft.Dropped
	if extra < 0 {
		t.Errorf("timeouts = %d, fewer than the %d dropped commands", rep.Outcomes.Timeout, ft.Dropped)
	}
	if extra > 0 {
		t.Logf("%d answers reached the gateway after their timeout (a starved CPU): checking that each is recorded as late", extra)
		tok, err := g.Token("operator", "ops", nil)
		if err != nil {
			t.Fatal(err)
		}
		var late int64
		deadline := time.Now().Add(30 * time.Second)
		for late < extra && time.Now().Before(deadline) {
			var st struct {
				Statuses struct {
					Events map[string]int64 `json:"events"`
				} `json:"statuses"`
			}
			if code, err := NewAPI(g.APIURL).Do(t.Context(), http.MethodGet, "/v1/stats", tok, nil, &st); err == nil && code == http.StatusOK {
				late = st.Statuses.Events["late"]
			}
			if late < extra {
				time.Sleep(200 * time.Millisecond) // polling for the evidence, not asserting after a sleep
			}
		}
		if late < extra {
			t.Errorf("timeouts beyond the dropped commands = %d, but the gateway recorded %d late answers", extra, late)
		}
	}
	// The load must really have run: 1,000 commands are scheduled (200/s
	// for 5 s); a starved CPU sends fewer in the time (the open loop does
	// not catch up), but never only a few.
	if rep.Sent < 500 {
		t.Errorf("sent = %d, want most of the 1000 scheduled (200/s for 5s)", rep.Sent)
	}
	if rep.Outcomes.Succeeded == 0 || rep.Outcomes.DeviceError == 0 || rep.Outcomes.Timeout == 0 {
		t.Errorf("outcomes = %+v, want some of each of succeeded, device error, timeout", rep.Outcomes)
	}
}

// cleanRedisNamespace deletes the keys of namespace ns ("ns:…" and
// "{ns:…}…") from the Redis of redisURL, on every primary of a Cluster.
func cleanRedisNamespace(t *testing.T, redisURL, ns string) {
	c := config.Common{RedisURL: redisURL}
	rdb, err := c.NewRedis(nil)
	if err != nil {
		t.Logf("cannot clean namespace %s: %v", ns, err)
		return
	}
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clean := func(ctx context.Context, node redis.Cmdable) error {
		for _, pattern := range []string{ns + ":*", "{" + ns + ":*"} {
			iter := node.Scan(ctx, 0, pattern, 1000).Iterator()
			for iter.Next(ctx) {
				// One key at a time: on Cluster the keys of a node
				// span slots.
				if err := node.Unlink(ctx, iter.Val()).Err(); err != nil {
					return err
				}
			}
			if err := iter.Err(); err != nil {
				return err
			}
		}
		return nil
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return clean(ctx, n) })
	} else {
		err = clean(ctx, rdb)
	}
	if err != nil {
		t.Logf("cannot clean namespace %s: %v", ns, err)
	}
}
