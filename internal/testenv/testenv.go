package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
)

// Default server URLs, used when the GW_* variables are not set.
const (
	DefaultAMQPURL     = "amqp://guest:guest@127.0.0.1:5672/"
	DefaultAMQPMgmtURL = "http://guest:guest@127.0.0.1:15672"
	DefaultRedisURL    = "redis://127.0.0.1:6379/0"
)

// dialTimeout bounds every connection attempt to a server.
const dialTimeout = 3 * time.Second

// AMQPURL returns the RabbitMQ URL: GW_AMQP_URL, or DefaultAMQPURL.
func AMQPURL() string { return env("GW_AMQP_URL", DefaultAMQPURL) }

// AMQPMgmtURL returns the RabbitMQ management API URL: GW_AMQP_MGMT_URL, or
// DefaultAMQPMgmtURL.
func AMQPMgmtURL() string { return env("GW_AMQP_MGMT_URL", DefaultAMQPMgmtURL) }

// RedisURL returns the Redis URL: GW_REDIS_URL, or DefaultRedisURL.
func RedisURL() string { return env("GW_REDIS_URL", DefaultRedisURL) }

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// RequireServices marks t as an integration test. With -short it skips t.
// Otherwise it checks, within a few seconds, that RabbitMQ and Redis answer
// at AMQPURL and RedisURL, and fails t (it does not skip) when either does not,
// naming the server and how to start it.
func RequireServices(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()

	var wg sync.WaitGroup
	var amqpErr, redisErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		conn, err := dialAMQP()
		if err == nil {
			conn.Close()
		}
		amqpErr = err
	}()
	go func() {
		defer wg.Done()
		rdb, err := dialRedis(ctx, true)
		if err == nil {
			rdb.Close()
		}
		redisErr = err
	}()
	wg.Wait()

	var problems []string
	if amqpErr != nil {
		problems = append(problems, fmt.Sprintf("RabbitMQ is not reachable at %s (GW_AMQP_URL): %v", redact(AMQPURL()), amqpErr))
	}
	if redisErr != nil {
		problems = append(problems, fmt.Sprintf("Redis is not reachable at %s (GW_REDIS_URL): %v", redact(RedisURL()), redisErr))
	}
	if len(problems) > 0 {
		t.Fatalf("testenv: %s\nstart them with deployments/local/services.sh (or `make services`) from the repository root, or use go test -short to skip integration tests",
			strings.Join(problems, "\ntestenv: "))
	}
}

// Redis returns a client for RedisURL, closed when t ends. It calls
// RequireServices first.
func Redis(t testing.TB) *redis.Client {
	t.Helper()
	RequireServices(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*dialTimeout)
	defer cancel()
	rdb, err := dialRedis(ctx, false)
	if err != nil {
		t.Fatalf("testenv: cannot connect to Redis at %s: %v", redact(RedisURL()), err)
	}
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// AMQP returns a connection to AMQPURL, closed when t ends. It calls
// RequireServices first.
func AMQP(t testing.TB) *amqp.Connection {
	t.Helper()
	RequireServices(t)
	conn, err := dialAMQP()
	if err != nil {
		t.Fatalf("testenv: cannot connect to RabbitMQ at %s: %v", redact(AMQPURL()), err)
	}
	t.Cleanup(func() {
		if err := conn.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
			t.Logf("testenv: cannot close AMQP connection: %v", err)
		}
	})
	return conn
}

// dialAMQP connects to AMQPURL; connecting and the AMQP handshake together
// take at most dialTimeout.
func dialAMQP() (*amqp.Connection, error) {
	return amqp.DialConfig(AMQPURL(), amqp.Config{
		Dial:       amqp.DefaultDial(dialTimeout),
		Properties: amqp.Table{"connection_name": "testenv"},
	})
}

// dialRedis returns a client for RedisURL that has answered a PING. With
// probe, the client gives up at the first failure instead of retrying, for
// checks and cleanups; without it, it keeps go-redis's defaults.
func dialRedis(ctx context.Context, probe bool) (*redis.Client, error) {
	opts, err := redis.ParseURL(RedisURL())
	if err != nil {
		return nil, fmt.Errorf("cannot parse GW_REDIS_URL: %w", err)
	}
	opts.DialTimeout = dialTimeout
	if probe {
		opts.MaxRetries = -1
		opts.DialerRetries = 1
	}
	rdb := redis.NewClient(opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, err
	}
	return rdb, nil
}

// redact hides the password of a URL, for messages.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process may take it before the caller listens on it: prefer
// listening on "127.0.0.1:0" and asking the listener for its address where
// the code under test allows it.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: cannot find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreeAddr returns "127.0.0.1:N" for a port N from FreePort.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t))
}

// Logger returns a logger for the code under test. With GW_TEST_LOG=1 it
// writes every record, debug included, through t.Log (shown for failed tests,
// or with -v); otherwise it discards everything. Records logged after t has
// ended are dropped.
func Logger(t testing.TB) *slog.Logger {
	if os.Getenv("GW_TEST_LOG") != "1" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	w := &testWriter{t: t}
	t.Cleanup(w.close)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testWriter writes to t.Log until close; t.Log after the test has ended
// would panic.
type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
