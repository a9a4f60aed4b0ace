package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// produce puts rounds messages into each follower's mailbox, signalling
// the current owner, calling crash before round crashAt.
func produce(t *testing.T, e *env, fs []*follower, rounds, crashAt int, crash func()) {
	t.Helper()
	for r := range rounds {
		if r == crashAt {
			crash()
		}
		for _, f := range fs {
			owner, _ := e.ring.Owner(f.identity)
			e.put(f.identity, f.topic, fmt.Sprintf("%s#%d", f.identity, r), owner.Node)
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// checkAll waits until every follower got every message, and every
// mailbox is empty.
func checkAll(t *testing.T, e *env, fs []*follower, rounds int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for _, f := range fs {
		for f.col.distinct() < rounds {
			if time.Now().After(deadline) {
				t.Fatalf("%s received %d distinct messages, want %d; connected to %q, owner %q, mailbox holds %d",
					f.identity, f.col.distinct(), rounds, f.connectedTo(), e.ownerAddr(f.identity), e.mailboxLen(f.identity))
			}
			time.Sleep(20 * time.Millisecond)
		}
		for r := range rounds {
			require.True(t, f.col.has(fmt.Sprintf("%s#%d", f.identity, r)), "%s#%d missing", f.identity, r)
		}
	}
	for _, f := range fs {
		eventually(t, 10*time.Second, func() bool { return e.mailboxLen(f.identity) == 0 }, "mailbox of %s empty", f.identity)
	}
}

// TestKilledNodeLosesNothing: a push server dies abruptly (in-process: its
// heartbeat stops, every connection drops, nothing is cleaned up) while
// messages are being delivered; every message reaches its identity once
// it has reconnected to the new owner.
func TestKilledNodeLosesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b, members := e.twoNodes()
	ids := append(identitiesOwnedBy(members, a.NodeID(), "dev-k", 6), identitiesOwnedBy(members, b.NodeID(), "dev-k", 3)...)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var fs []*follower
	for _, id := range ids {
		fs = append(fs, e.follow(ctx, id))
	}
	eventually(t, 10*time.Second, func() bool {
		for _, f := range fs {
			if f.connectedTo() == "" {
				return false
			}
		}
		return true
	}, "all followers connected")

	const rounds = 30
	produce(t, e, fs, rounds, 10, a.kill)
	checkAll(t, e, fs, rounds, 20*time.Second)
	for _, id := range ids {
		require.Equal(t, b.Addr(), e.ownerAddr(id))
	}
}

// TestSIGKILLSubprocess: the same with a real pushserver process killed
// with SIGKILL.
func TestSIGKILLSubprocess(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	bin := filepath.Join(t.TempDir(), "pushserver")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	require.NoError(t, build.Run(), "go build")

	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		"GW_MQTT_ADDR=127.0.0.1:0",
		"GW_NODE_ID=killed",
		"GW_NAMESPACE="+e.ns,
		"GW_AUTH_SECRET="+testSecret,
		"GW_REDIS_URL="+testenv.RedisURL(),
		"GW_AMQP_URL="+testenv.AMQPURL(),
		"GW_METRICS_ADDR=127.0.0.1:0",
		"GW_LOG_FORMAT=json",
	)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "push server listening" {
				addr <- line.Addr
			}
			if testing.Verbose() {
				t.Log("pushserver: " + sc.Text())
			}
		}
	}()
	var killedAddr string
	select {
	case killedAddr = <-addr:
	case <-time.After(20 * time.Second):
		t.Fatal("the pushserver process did not start")
	}
	b := e.startNode()
	members := e.members()
	require.Len(t, members, 2)
	ids := append(identitiesOwnedBy(members, "killed", "dev-s", 5), identitiesOwnedBy(members, b.NodeID(), "dev-s", 2)...)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var fs []*follower
	for _, id := range ids {
		fs = append(fs, e.follow(ctx, id))
	}
	eventually(t, 10*time.Second, func() bool {
		on := 0
		for _, f := range fs {
			if f.connectedTo() == killedAddr {
				on++
			}
			if f.connectedTo() == "" {
				return false
			}
		}
		return on == 5
	}, "all followers connected")

	const rounds = 20
	produce(t, e, fs, rounds, 8, func() {
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	})
	checkAll(t, e, fs, rounds, 30*time.Second)
	for _, f := range fs {
		require.Equal(t, b.Addr(), f.connectedTo())
	}
	require.False(t, strings.Contains(killedAddr, b.Addr()))
}

// TestSilentNodeSessionsCleared: the sessions a killed node had
// registered are cleared by the node that prunes it from the ring, so no
// identity is reported online on a dead node; a node started under the
// name of a killed one clears what that one left.
func TestSilentNodeSessionsCleared(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b, members := e.twoNodes()
	id := identitiesOwnedBy(members, a.NodeID(), "dev-silent", 1)[0]
	c := mustV3(t, a.Addr(), id)
	c.subscribe(t, protocol.DeviceCommandsTopic(id), 1, newCollector())
	registeredOn := func(node string) func() bool {
		return func() bool {
			got, err := e.store.SessionNode(t.Context(), id)
			return err == nil && got == node
		}
	}
	// The registration is one step, the node's session set a command
	// after it: wait for both before the kill.
	eventually(t, 5*time.Second, func() bool {
		in, err := e.rdb.SIsMember(t.Context(), e.store.Keys().NodeSessions(a.NodeID()), id).Result()
		return registeredOn(a.NodeID())() && err == nil && in
	}, "session registered on a")

	a.kill() // nothing cleaned up: the registration stays until a prune
	ok, err := e.rdb.SIsMember(t.Context(), e.store.Keys().NodeSessions(a.NodeID()), id).Result()
	require.NoError(t, err)
	require.True(t, ok, "the kill cleaned up after all")
	eventually(t, 15*time.Second, registeredOn(""), "the survivor clears the silent node's session")
	n, err := e.rdb.Exists(t.Context(), e.store.Keys().NodeSessions(a.NodeID())).Result()
	require.NoError(t, err)
	require.Zero(t, n, "the silent node's session set is left")

	// A node restarted under the same name finds its predecessor's
	// registrations and clears them before it serves.
	const name = "push-reborn"
	first := e.startNode(func(c *Config) { c.NodeID = name })
	reborn := identitiesOwnedBy(e.converged(b, first), name, "dev-reborn", 1)[0]
	c2 := mustV3(t, first.Addr(), reborn)
	c2.subscribe(t, protocol.DeviceCommandsTopic(reborn), 1, newCollector())
	eventually(t, 5*time.Second, func() bool {
		got, err := e.store.SessionNode(t.Context(), reborn)
		return err == nil && got == name
	}, "session registered on %s", name)
	first.kill()
	b.kill() // no survivor to prune it: only the new process can clean up
	// The name is free once the killed process's ring key expires.
	var second *Node
	eventually(t, 15*time.Second, func() bool {
		cfg := e.config()
		cfg.NodeID = name
		n, err := NewNode(cfg)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if n.Start(ctx) != nil {
			return false
		}
		second = n
		return true
	}, "a node named %s starts again", name)
	t.Cleanup(func() { second.kill() })
	got, err := e.store.SessionNode(t.Context(), reborn)
	require.NoError(t, err)
	require.Empty(t, got, "the restarted node kept its predecessor's session")
}
