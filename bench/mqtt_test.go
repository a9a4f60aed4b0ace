package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// startMochi starts a real MQTT broker (mochi, in process, over TCP,
// everyone allowed) and returns it with its address.
func startMochi(t *testing.T) (*mochi.Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "t", Address: addr})); err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() { _ = srv.Close() })
	return srv, addr
}

// TestLeanClient runs the bench's lean client against a real MQTT broker
// (mochi, in process, over TCP): it subscribes, receives QoS 1 messages
// in order, and PUBACKs every one (the broker's in-flight store empties).
func TestLeanClient(t *testing.T) {
	srv, addr := startMochi(t)

	const n = 500
	var mu sync.Mutex
	var got []string
	all := make(chan struct{})
	c, err := leanConnect(addr, "lean-1", "", "", func(p []byte) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, string(p)) // the slice is reused: copy
		if len(got) == n {
			close(all)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Subscribe("t/lean-1/#"); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := srv.Publish(fmt.Sprintf("t/lean-1/%d", i%3), []byte(fmt.Sprintf("m%04d", i)), false, 1); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		t.Fatalf("got %d of %d messages", len(got), n)
	}
	for i, p := range got {
		if want := fmt.Sprintf("m%04d", i); p != want {
			t.Fatalf("message %d = %q, want %q (in order)", i, p, want)
		}
	}
	cl, ok := srv.Clients.Get("lean-1")
	if !ok {
		t.Fatal("the broker does not know lean-1")
	}
	deadline := time.Now().Add(5 * time.Second)
	for cl.State.Inflight.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if k := cl.State.Inflight.Len(); k != 0 {
		t.Errorf("%d messages in flight at the broker, want 0 (every one PUBACKed)", k)
	}
	if st, want := statsOf([]*leanClient{c}), (leanStats{n, n, n * int64(2+2+len("t/lean-1/0")+2+len("m0000"))}); st != want {
		t.Errorf("stats = %+v (%s), want %+v", st, st, want)
	}
}

// TestLeanPublish publishes through the lean publisher, with a window
// smaller than the messages, to a lean client subscribed at QoS 1: every
// publish is acknowledged, every message arrives once, at QoS 1.
func TestLeanPublish(t *testing.T) {
	_, addr := startMochi(t)
	tests := []struct {
		name      string
		n, window int
	}{{"window smaller than the messages", 700, 16}, {"window of one", 50, 1}, {"window larger", 20, 1024}}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			seen := map[string]int{}
			all := make(chan struct{})
			c, err := leanConnect(addr, "sub-"+strconv.Itoa(i), "", "", func(p []byte) {
				mu.Lock()
				defer mu.Unlock()
				seen[string(p)]++
				if len(seen) == tt.n {
					close(all)
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			topic := "p/" + strconv.Itoa(tt.window)
			if err := c.Subscribe(topic + "/#"); err != nil {
				t.Fatal(err)
			}
			err = leanPublish(context.Background(), addr, "pub-"+strconv.Itoa(i), tt.n, tt.window, func(k int) (string, []byte) {
				return topic + "/" + strconv.Itoa(k%5), []byte("m" + strconv.Itoa(k))
			}, time.Now().Add(10*time.Second))
			if err != nil {
				t.Fatalf("leanPublish: %v, want every PUBACK", err)
			}
			select {
			case <-all:
			case <-time.After(10 * time.Second):
				t.Fatalf("got %d of %d messages", len(seen), tt.n)
			}
			mu.Lock()
			defer mu.Unlock()
			for k := range tt.n {
				if got := seen["m"+strconv.Itoa(k)]; got != 1 {
					t.Errorf("message %d arrived %d times, want once", k, got)
				}
			}
			if st := statsOf([]*leanClient{c}); st.pubs != int64(tt.n) || st.qos1 != st.pubs {
				t.Errorf("subscriber stats %+v, want %d PUBLISHes all at QoS 1", st, tt.n)
			}
		})
	}
}

// TestIdleClients runs the idle-client process's loop against a real
// broker: each line of its input connects sessions up to that count, each
// subscribed, and its answer says how many it holds; a count it cannot
// reach is an error; the end of its input disconnects them all.
func TestIdleClients(t *testing.T) {
	srv, addr := startMochi(t)
	ids := filepath.Join(t.TempDir(), "ids")
	if err := os.WriteFile(ids, []byte("idle-a\nidle-b\nidle-c\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	getenv := func(k string) string {
		if k == idleSecretEnv {
			return "test-secret"
		}
		return ""
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- runIdleClients(context.Background(), []string{"--addr", addr, "--ids", ids, "--keepalive", "1m"}, getenv, inR, outW)
		outW.Close()
	}()
	out := bufio.NewScanner(outR)
	subscribed := func() int {
		n := 0
		for _, cl := range srv.Clients.GetAll() {
			if !cl.Closed() && cl.State.Subscriptions.Len() == 1 {
				n++
			}
		}
		return n
	}
	for _, want := range []int{1, 3} {
		fmt.Fprintf(inW, "%d\n", want)
		if !out.Scan() {
			t.Fatalf("no answer to %d: %v", want, out.Err())
		}
		var r idleReply
		if err := json.Unmarshal(out.Bytes(), &r); err != nil || r.Connected != want || r.Err != "" {
			t.Fatalf("answer %s (%v), want %d connected and no error", out.Text(), err, want)
		}
		if got := subscribed(); got != want {
			t.Errorf("the broker has %d subscribed sessions, want %d", got, want)
		}
	}
	inW.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("runIdleClients = %v, want nil at the end of its input", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("runIdleClients did not return at the end of its input")
	}
	deadline := time.Now().Add(5 * time.Second)
	for subscribed() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := subscribed(); got != 0 {
		t.Errorf("%d sessions still connected after the end of the input, want 0", got)
	}

	// A count beyond its identities is refused.
	err := runIdleClients(context.Background(), []string{"--addr", addr, "--ids", ids}, getenv, strings.NewReader("4\n"), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "bad request") {
		t.Errorf("runIdleClients(4 of 3) = %v, want a bad request error", err)
	}
}
