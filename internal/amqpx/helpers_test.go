package amqpx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// commandKey routes to command queue 0, the queue the tests use.
var commandKey = func() string {
	_, key := protocol.NewTopology("any", 1, 1).CommandRoute(0)
	return key
}()

// setup gives an integration test its own namespace, declared with one
// command queue (CommandQueue(0)), and options for its connections (named
// after the namespace and role).
func setup(t *testing.T) (protocol.Topology, Options) {
	t.Helper()
	testenv.RequireServices(t)
	ns := testenv.Namespace(t) // first, so its cleanup runs last
	topo := protocol.NewTopology(ns, 1, 1)
	dropQueues(t, topo)
	ch, err := testenv.AMQP(t).Channel()
	if err != nil {
		t.Fatalf("cannot open channel: %v", err)
	}
	if err := Declare(ch, topo); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	_ = ch.Close()
	return topo, Options{
		URL:            testenv.AMQPURL(),
		ConfirmTimeout: 15 * time.Second, // generous: CI machines can be slow
		Name:           ns,
		Logger:         testenv.Logger(t),
		MinBackoff:     50 * time.Millisecond,
		MaxBackoff:     500 * time.Millisecond,
	}
}

// dropQueues deletes the command queues and the fence of topo when t ends
// (testenv's cleanup finds them by name only through the management API).
func dropQueues(t *testing.T, topo protocol.Topology) {
	t.Cleanup(func() {
		conn, err := amqp.Dial(testenv.AMQPURL())
		if err != nil {
			t.Logf("cannot delete the queues of %s: %v", topo.NS, err)
			return
		}
		defer conn.Close()
		for _, q := range append(topo.CommandQueues(), topo.FenceQueue) {
			ch, err := conn.Channel()
			if err != nil {
				t.Logf("cannot delete queue %s: %v", q, err)
				return
			}
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				t.Logf("cannot delete queue %s: %v", q, err)
			}
			_ = ch.Close()
		}
	})
}

func newPublisher(t *testing.T, opts Options, topo protocol.Topology) *Publisher {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := NewPublisher(ctx, opts, topo)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// publish publishes a command and fails t on error.
func publish(t *testing.T, p *Publisher, topo protocol.Topology, id, body string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Publish(ctx, topo.CommandsExchange, commandKey, []byte(body), Headers{MessageID: id}); err != nil {
		t.Fatalf("Publish(%q) = %v, want nil", id, err)
	}
}

// startConsumer runs c until the test ends (or until the returned stop
// is called, which returns Run's error).
func startConsumer(t *testing.T, c *Consumer) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				err = errors.New("Run did not return 20s after cancel")
			}
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return stop
}

// getOne reads one message of queue with basic.get, waiting up to 10s.
func getOne(t *testing.T, conn *amqp.Connection, queue string) amqp.Delivery {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("cannot open channel: %v", err)
	}
	defer ch.Close()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatalf("Get(%s): %v", queue, err)
		}
		if ok {
			return d
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no message in %s within 10s", queue)
	return amqp.Delivery{}
}

// depth returns the ready messages of queue.
func depth(t *testing.T, conn *amqp.Connection, queue string) int {
	t.Helper()
	m, err := QueueDepth(context.Background(), conn, queue)
	if err != nil {
		t.Fatalf("QueueDepth(%s): %v", queue, err)
	}
	return m[queue].Messages
}

// eventually polls cond every 20ms for up to d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mgmt calls the RabbitMQ management API and decodes the JSON answer into
// out (if not nil).
func mgmt(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(testenv.AMQPMgmtURL(), "/")+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// forceClose closes, from the server side, every connection whose
// connection_name is name, through the management API (which lists a new
// connection within its stats interval, up to ~5s). It returns how many it
// closed.
func forceClose(t *testing.T, name string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		var conns []struct {
			Name             string `json:"name"`
			UserProvidedName string `json:"user_provided_name"`
		}
		if err := mgmt(ctx, http.MethodGet, "/api/connections?columns=name,user_provided_name", &conns); err != nil {
			t.Fatalf("cannot list connections: %v", err)
		}
		n := 0
		for _, c := range conns {
			if c.UserProvidedName != name {
				continue
			}
			if err := mgmt(ctx, http.MethodDelete, "/api/connections/"+url.PathEscape(c.Name), nil); err != nil {
				t.Logf("cannot close %s: %v", c.Name, err)
				continue
			}
			n++
		}
		if n > 0 {
			return n
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no connection named %q listed by the management API", name)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
