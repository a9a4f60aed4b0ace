package main

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// TestLeanClient runs the bench's lean client against a real MQTT broker
// (mochi, in process, over TCP): it subscribes, receives QoS 1 messages
// in order, and PUBACKs every one (the broker's in-flight store empties).
func TestLeanClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := mochi.New(&mochi.Options{InlineClient: true, Logger: nil})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "t", Address: addr})); err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() { _ = srv.Close() })

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
}
