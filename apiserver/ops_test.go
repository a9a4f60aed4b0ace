package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/ring"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// opsGW is an apiserver under test with the operations routes, reading
// the management API of testenv.
func opsGW(t *testing.T, opts ...gwOption) *gw {
	t.Helper()
	mgmt := func(c *Config, _ *Deps) { c.AMQPMgmtURL = testenv.AMQPMgmtURL() }
	g := newGW(t, append([]gwOption{mgmt}, opts...)...)
	t.Cleanup(g.srv.beginShutdown) // stops the gauges' sampler before the connections close
	return g
}

// stats is GET /v1/stats as an operator, decoded.
func (g *gw) stats(t *testing.T) statsView {
	t.Helper()
	r := g.do(http.MethodGet, "/v1/stats", token(t, "ops", auth.RoleOperator), nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var v statsView
	r.json(t, &v)
	return v
}

// postN sends n commands with ids prefix-0 … prefix-(n-1) as client, to
// dev-1 … dev-6 in turn (with the default counts, their commands go to
// command queues 0, 1, 2, 0, 1, 3: every queue).
func (g *gw) postN(t *testing.T, client, prefix string, n int) {
	t.Helper()
	tok := token(t, client, auth.RoleClient, "dev-*")
	for i := range n {
		r := g.post(tok, fmt.Sprintf("dev-%d", 1+i%6), cmd(fmt.Sprintf("%s-%d", prefix, i), "reboot", nil))
		require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	}
}

// mgmtReachable reports whether the management API of testenv answers.
func mgmtReachable(t *testing.T) bool {
	t.Helper()
	c, err := newMgmtClient(testenv.AMQPMgmtURL(), testenv.AMQPURL())
	require.NoError(t, err)
	req, err := http.NewRequest(http.MethodGet, c.base+"/api/overview", nil)
	require.NoError(t, err)
	req.SetBasicAuth(c.user, c.pass)
	resp, err := c.http.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// listQueuesReady runs `rabbitmqctl list_queues -q name messages_ready`
// and returns the ready count of queue; false when rabbitmqctl cannot run
// here (not installed, or not allowed to talk to the node).
func listQueuesReady(t *testing.T, queue string) (int, bool) {
	t.Helper()
	path, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		return 0, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "list_queues", "-q", "name", "messages_ready").Output()
	if err != nil {
		t.Logf("rabbitmqctl list_queues failed, not comparing with it: %v", err)
		return 0, false
	}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == queue {
			n, err := strconv.Atoi(f[1])
			require.NoError(t, err, "rabbitmqctl line %q", line)
			return n, true
		}
	}
	t.Fatalf("rabbitmqctl list_queues does not list %s:\n%s", queue, out)
	return 0, false
}

// compareWithRabbitmqctl checks that rabbitmqctl list_queues reports
// ready for queue, when rabbitmqctl can run here. For a quorum queue
// rabbitmqctl prints the queue's last emitted statistics (every 5 s by
// default), so it may lag a change by that much while the passive
// declare is exact: with nothing consuming or publishing, it is polled
// until it catches up, for at most 15 s.
func compareWithRabbitmqctl(t *testing.T, queue string, ready int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		n, ok := listQueuesReady(t, queue)
		if !ok {
			t.Log("rabbitmqctl not runnable here: not comparing with it")
			return
		}
		if n == ready {
			t.Logf("rabbitmqctl list_queues: %s %d", queue, n)
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("rabbitmqctl list_queues says %s has %d ready, /v1/stats said %d", queue, n, ready)
			return
		}
		time.Sleep(time.Second)
	}
}

// The ready count of /v1/stats is exact at the moment of the call: K
// messages published with no consumer are K ready, as rabbitmqctl says.
func TestStatsQueueDepthIsExact(t *testing.T) {
	t.Parallel()
	g := opsGW(t)
	const k = 7
	posted := time.Now()
	g.postN(t, "app-1", "depth", k)
	accepted := time.Now() // every command was accepted by now

	// A consumer on the commands dead-letter queue, which must count.
	ch, err := g.conn.Channel()
	require.NoError(t, err)
	t.Cleanup(func() { ch.Close() })
	_, err = ch.Consume(g.topo.CommandsDeadQueue, "stats-test", false, false, false, false, nil)
	require.NoError(t, err)

	// A quorum queue counts consumers from its Raft state, which may
	// trail the consume-ok by a moment.
	v := g.stats(t)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); v = g.stats(t) {
		if c := v.Queues[g.topo.CommandsDeadQueue].Consumers; c != nil && *c == 1 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	assert.Equal(t, g.ns, v.Namespace)
	assert.WithinDuration(t, time.Now(), v.At, 5*time.Second)
	require.Len(t, v.Queues, 2)
	for _, q := range statsQueues(g.topo) {
		require.Contains(t, v.Queues, q)
		require.NotNil(t, v.Queues[q].Ready, q)
		require.NotNil(t, v.Queues[q].Consumers, q)
		assert.True(t, v.Queues[q].Sampled, q)
		assert.Equal(t, "management", v.Queues[q].Source, q)
	}
	// The commands entry is the sum of the command queues, each listed
	// with the commands of its devices (dev-1 … dev-6 in turn).
	cq := v.Queues[g.topo.CommandsGroup]
	assert.Equal(t, k, *cq.Ready)
	assert.Equal(t, 0, *cq.Consumers)
	require.Len(t, cq.Queues, g.topo.QueueCount)
	want := make([]int, g.topo.QueueCount)
	for i := range k {
		want[g.topo.CommandQueueOf(fmt.Sprintf("dev-%d", 1+i%6), g.topo.PartitionCount)]++
	}
	sum := 0
	for i, q := range cq.Queues {
		assert.Equal(t, g.topo.CommandQueue(i), q.Name)
		assert.Equal(t, i, q.Index)
		require.NotNil(t, q.Ready, q.Name)
		assert.Equal(t, want[i], *q.Ready, q.Name)
		assert.Equal(t, 0, *q.Consumers, q.Name)
		assert.Nil(t, q.Queues, "a command queue lists no queues")
		// The age of its oldest queued command, from the gateway's
		// records: at least the time from the last acceptance to the
		// stats' time (v.At, taken before the records are read), at most
		// the time since the first POST; 0 when empty.
		assert.Equal(t, "gateway", q.OldestAgeSource, q.Name)
		require.NotNil(t, q.OldestAgeS, q.Name)
		if want[i] == 0 {
			assert.Zero(t, *q.OldestAgeS, q.Name)
		} else {
			assert.GreaterOrEqual(t, *q.OldestAgeS, v.At.Sub(accepted).Seconds()-0.01, q.Name)
		}
		assert.LessOrEqual(t, *q.OldestAgeS, time.Since(posted).Seconds()+0.01, q.Name)
		sum += *q.Ready
		compareWithRabbitmqctl(t, q.Name, *q.Ready)
	}
	assert.Equal(t, k, sum)
	assert.Equal(t, 0, *v.Queues[g.topo.CommandsDeadQueue].Ready)
	assert.Equal(t, 1, *v.Queues[g.topo.CommandsDeadQueue].Consumers)
	assert.Nil(t, v.Queues[g.topo.CommandsDeadQueue].Queues)
	// Device answers do not cross RabbitMQ (DESIGN §5): no results queues.
	assert.NotContains(t, v.Queues, g.ns+".results")
	assert.NotContains(t, v.Queues, g.ns+".results.dead")

	if mgmtReachable(t) {
		assert.True(t, v.Management.Available, "management: %+v", v.Management)
		assert.Empty(t, v.Management.Error)
		// A queue the management API has not sampled yet has no counts.
		if cq.Unacked != nil {
			assert.Equal(t, int64(0), *cq.Unacked)
		}
		assert.NotNil(t, cq.PublishRate)
		assert.NotNil(t, cq.DeliverRate)
	} else {
		t.Log("management API not reachable: checking that stats say so")
		assert.False(t, v.Management.Available)
		assert.NotEmpty(t, v.Management.Error)
	}
	assert.Empty(t, v.Errors)
	assert.Equal(t, int64(k), v.Statuses.Counts["queued"])
	assert.Len(t, v.Statuses.Counts, len(protocol.Statuses), "every status is present")
	assert.Equal(t, statsWindowMinutes, v.Statuses.WindowMinutes)
	assert.Contains(t, v.Statuses.Events, "late")
	require.NotNil(t, v.Dead)
	assert.Equal(t, int64(0), *v.Dead)
	require.NotNil(t, v.Mailboxes.Entries)
	assert.Equal(t, int64(0), *v.Mailboxes.Entries)
	require.NotNil(t, v.Outbox, "outbox")
	assert.Equal(t, int64(0), v.Outbox.Entries, "outbox entries")
	assert.Empty(t, v.Outbox.Partitions, "outbox partitions")
	assert.Empty(t, v.PushServers)
	assert.Empty(t, v.Ring)

	// The JSON has the documented shape, nulls included.
	r := g.do(http.MethodGet, "/v1/stats", token(t, "ops", auth.RoleOperator), nil)
	var raw map[string]any
	r.json(t, &raw)
	for _, key := range []string{"at", "namespace", "queues", "management", "mailboxes", "timers", "dead", "statuses", "push_servers", "ring"} {
		assert.Contains(t, raw, key)
	}
	q := raw["queues"].(map[string]any)[g.topo.CommandsGroup].(map[string]any)
	for _, key := range []string{"ready", "consumers", "unacked", "publish_rate", "deliver_rate", "oldest_age_s", "sampled", "source", "queues"} {
		assert.Contains(t, q, key)
	}
	assert.NotNil(t, q["oldest_age_s"], "the gateway's records give the command queues' oldest age")
	assert.Equal(t, "gateway", q["oldest_age_source"])
	list := q["queues"].([]any)
	require.Len(t, list, g.topo.QueueCount)
	for i, e := range list {
		one := e.(map[string]any)
		for _, key := range []string{"name", "index", "ready", "consumers", "unacked", "publish_rate", "deliver_rate", "oldest_age_s", "sampled", "source"} {
			assert.Contains(t, one, key)
		}
		assert.NotContains(t, one, "queues")
		assert.Equal(t, g.topo.CommandQueue(i), one["name"])
	}
	assert.NotContains(t, raw["queues"].(map[string]any)[g.topo.CommandsDeadQueue], "queues")
}

// Only operators may read stats and dead letters.
func TestOpsEndpointsNeedOperator(t *testing.T) {
	t.Parallel()
	g := opsGW(t)
	client := token(t, "app-1", auth.RoleClient, "dev-*")
	device := token(t, "dev-1", auth.RoleDevice)
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/v1/stats"},
		{http.MethodGet, "/v1/dead"},
		{http.MethodPost, "/v1/dead/x/replay?client=app-1"},
	} {
		for _, tok := range []string{"", client, device, "not-a-token"} {
			r := g.do(c.method, c.path, tok, nil)
			assert.Equal(t, http.StatusUnauthorized, r.Status, "%s %s", c.method, c.path)
			assert.Equal(t, protocol.CodeUnauthorized, r.errorCode(t))
		}
	}
}

// When the management API cannot be reached the stats say so, the exact
// numbers are still there, and the call does not fail.
func TestStatsWithoutManagementAPI(t *testing.T) {
	t.Parallel()
	dead := "http://guest:secret-pw@" + testenv.FreeAddr(t)
	g := opsGW(t, func(c *Config, _ *Deps) { c.AMQPMgmtURL = dead })
	g.postN(t, "app-1", "nomgmt", 3)
	v := g.stats(t)
	assert.False(t, v.Management.Available)
	assert.Contains(t, v.Management.Error, "management API unreachable")
	assert.NotContains(t, v.Management.Error, "secret-pw", "the password leaks")
	cq := v.Queues[g.topo.CommandsGroup]
	require.NotNil(t, cq.Ready)
	assert.Equal(t, 3, *cq.Ready)
	require.Len(t, cq.Queues, g.topo.QueueCount)
	for _, q := range cq.Queues {
		require.NotNil(t, q.Ready, q.Name)
		assert.Nil(t, q.Unacked, q.Name)
	}
	assert.Nil(t, cq.Unacked)
	assert.Nil(t, cq.PublishRate)
	assert.Nil(t, cq.DeliverRate)
	// The oldest age comes from the gateway's records, not the
	// management API.
	require.NotNil(t, cq.OldestAgeS)
	assert.Equal(t, "gateway", cq.OldestAgeSource)
	assert.Empty(t, v.Errors)
}

// A publisher that cannot inspect queues (or a RabbitMQ that is gone)
// leaves ready and consumers null and names rabbitmq in errors.
func TestStatsWithoutQueueDepth(t *testing.T) {
	t.Parallel()
	g := opsGW(t, func(_ *Config, d *Deps) { d.Publisher = plainPublisher{d.Publisher} })
	v := g.stats(t)
	assert.Contains(t, v.Errors["rabbitmq"], "cannot inspect queues")
	for _, q := range statsQueues(g.topo) {
		require.Contains(t, v.Queues, q)
		assert.Nil(t, v.Queues[q].Ready, q)
		assert.Nil(t, v.Queues[q].Consumers, q)
	}
	for _, q := range v.Queues[g.topo.CommandsGroup].Queues {
		assert.Nil(t, q.Ready, q.Name)
		assert.Nil(t, q.Consumers, q.Name)
	}
}

// statsQueues are the keys of the queues of GET /v1/stats.
func statsQueues(topo protocol.Topology) []string {
	return []string{topo.CommandsGroup, topo.CommandsDeadQueue}
}

// plainPublisher hides QueueDepth.
type plainPublisher struct{ p Publisher }

func (p plainPublisher) Publish(ctx context.Context, exchange, key string, body []byte, h amqpx.Headers) error {
	return p.p.Publish(ctx, exchange, key, body, h)
}
func (p plainPublisher) Ready() bool { return p.p.Ready() }

// Mailbox totals, timers, statuses and push servers with their sessions.
func TestStatsMailboxesAndPushServers(t *testing.T) {
	t.Parallel()
	g := opsGW(t)
	ctx := context.Background()

	// Two push servers, with 3 and 0 sessions.
	for _, m := range []ring.Member{{Node: "push-a", URL: "mqtt://127.0.0.1:1885"}, {Node: "push-b", URL: "mqtt://127.0.0.1:1886"}} {
		r := ring.New(g.rdb, g.ns, ring.Options{Logger: testenv.Logger(t)})
		jctx, stop := context.WithCancel(ctx)
		require.NoError(t, r.Join(jctx, m))
		t.Cleanup(func() { _ = r.Leave(context.Background()); stop() })
	}
	for _, id := range []string{"dev-1", "dev-2", "app-9"} {
		require.NoError(t, g.store.SetSession(ctx, id, "push-a"))
	}
	// One command dispatched into a device mailbox (timer armed), one
	// message put in another mailbox.
	g.postN(t, "app-1", "mbox", 1)
	envs := g.envelopes()
	require.Len(t, envs, 1)
	out, err := g.store.Dispatch(ctx, envs[0], "push-a", "push-a")
	require.NoError(t, err)
	require.Equal(t, mailbox.OutcomeSent, out)
	_, err = g.store.Put(ctx, "app-2", "clients/app-2/results/dev-1", []byte(`{}`), time.Time{}, "push-b")
	require.NoError(t, err)

	require.Eventually(t, func() bool { return len(g.ring.Members()) == 2 }, 5*time.Second, 20*time.Millisecond)
	v := g.stats(t)
	require.NotNil(t, v.Mailboxes.Mailboxes)
	assert.Equal(t, int64(2), *v.Mailboxes.Mailboxes)
	assert.Equal(t, int64(2), *v.Mailboxes.Entries)
	require.NotNil(t, v.Timers)
	assert.GreaterOrEqual(t, *v.Timers, int64(1))
	assert.Equal(t, int64(1), v.Statuses.Counts["sent"])
	require.Len(t, v.PushServers, 2)
	assert.Equal(t, "push-a", v.PushServers[0].Node)
	assert.Equal(t, "mqtt://127.0.0.1:1885", v.PushServers[0].MQTTURL)
	require.NotNil(t, v.PushServers[0].Sessions)
	assert.Equal(t, int64(3), *v.PushServers[0].Sessions)
	assert.Equal(t, int64(0), *v.PushServers[1].Sessions)
	assert.Equal(t, []memberView{{"push-a", "mqtt://127.0.0.1:1885"}, {"push-b", "mqtt://127.0.0.1:1886"}}, v.Ring)
}

// deadCommands posts ids as client app-1, takes them off the queue and
// marks them dead, as the worker would at the delivery limit.
func (g *gw) deadCommands(t *testing.T, ids ...any) {
	t.Helper()
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	for _, id := range ids {
		r := g.post(tok, "dev-1", cmd(id, "reboot", map[string]any{"delay": 1}), "timeout=10s", "expires_in=60s")
		require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	}
	require.Len(t, g.drain(), len(ids))
	for _, id := range ids {
		out, err := g.store.MarkDead(context.Background(), "dev-1", "app-1", fmt.Sprint(id), fmt.Sprintf("delivery limit reached for %v", id), "")
		require.NoError(t, err)
		require.Equal(t, mailbox.OutcomeDead, out)
		time.Sleep(2 * time.Millisecond) // distinct dead-at times: a stable order
	}
}

func TestDeadListAndReplay(t *testing.T) {
	t.Parallel()
	g := opsGW(t)
	op := token(t, "ops", auth.RoleOperator)
	g.deadCommands(t, "d-1", 7, "d-3")

	r := g.do(http.MethodGet, "/v1/dead", op, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var l deadView
	r.json(t, &l)
	require.Len(t, l.Commands, 3)
	assert.Empty(t, l.NextCursor)
	assert.Equal(t, `"d-3"`, string(l.Commands[0].ID), "newest first")
	c := l.Commands[1]
	assert.Equal(t, "7", string(c.ID))
	assert.Equal(t, protocol.StatusDead, c.Status)
	assert.Equal(t, "app-1", c.Client)
	assert.Equal(t, "dev-1", c.Device)
	assert.Equal(t, "delivery limit reached for 7", c.Reason)
	assert.Equal(t, 0, c.Publishes)
	assert.Equal(t, 1, c.Attempts, "the first attempt")
	assert.Equal(t, "/v1/commands/7?client=app-1", c.StatusURL)

	// Paging.
	var seen []string
	cursor := ""
	for {
		path := "/v1/dead?limit=1"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		r := g.do(http.MethodGet, path, op, nil)
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		var p deadView
		r.json(t, &p)
		for _, c := range p.Commands {
			seen = append(seen, string(c.ID))
		}
		if cursor = p.NextCursor; cursor == "" {
			break
		}
		require.Less(t, len(seen), 10, "paging does not end")
	}
	assert.Equal(t, []string{`"d-3"`, "7", `"d-1"`}, seen)
	for _, bad := range []string{"limit=0", "limit=101", "limit=x", "cursor=%21%21", "cursor=Zm9v"} {
		r := g.do(http.MethodGet, "/v1/dead?"+bad, op, nil)
		assert.Equal(t, http.StatusBadRequest, r.Status, bad)
	}

	// Replay 7: queued again, on the queue once more with attempt 2.
	before := time.Now()
	r = g.do(http.MethodPost, "/v1/dead/7/replay?client=app-1", op, nil)
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	var rc commandView
	r.json(t, &rc)
	assert.Equal(t, protocol.StatusQueued, rc.Status)
	assert.Equal(t, "7", string(rc.ID))
	assert.Empty(t, rc.Reason)
	assert.True(t, rc.FinishedAt.IsZero())
	envs := g.envelopes()
	require.Len(t, envs, 1)
	env := envs[0]
	assert.Equal(t, protocol.KindCommand, env.Kind)
	assert.Equal(t, "app-1", env.Client)
	assert.Equal(t, "dev-1", env.Device)
	assert.Equal(t, "7", env.MsgID.Key())
	assert.Equal(t, 2, env.Attempt)
	assert.Equal(t, int64(10000), env.AnswerWithinMS)
	assert.JSONEq(t, `{"jsonrpc":"2.0","method":"reboot","params":{"delay":1},"id":7}`, string(env.Payload))
	assert.WithinDuration(t, before.Add(60*time.Second), env.DeliverBy, 3*time.Second, "a fresh deliver-by window")
	assert.True(t, env.AcceptedAt.Before(before), "accepted at the original time")
	assert.True(t, validTraceParent(env.TraceParent))

	// Replayed, not yet taken by a worker: still listed, as queued, and a
	// second replay publishes it again (the first publish may have been
	// lost), with the same attempt.
	r = g.do(http.MethodGet, "/v1/dead", op, nil)
	r.json(t, &l)
	require.Len(t, l.Commands, 3)
	assert.Equal(t, protocol.StatusQueued, l.Commands[1].Status)
	r = g.do(http.MethodPost, "/v1/dead/7/replay?client=app-1", op, nil)
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	envs = g.envelopes()
	require.Len(t, envs, 1)
	assert.Equal(t, 2, envs[0].Attempt)

	// Once a worker dispatched it, it leaves the list and is no longer
	// replayable: 409 with its status.
	out, err := g.store.Dispatch(context.Background(), envs[0], "", "")
	require.NoError(t, err)
	require.Equal(t, mailbox.OutcomeSent, out)
	r = g.do(http.MethodGet, "/v1/dead", op, nil)
	r.json(t, &l)
	assert.Len(t, l.Commands, 2)
	assert.Equal(t, int64(2), *g.stats(t).Dead)
	r = g.do(http.MethodPost, "/v1/dead/7/replay?client=app-1", op, nil)
	require.Equal(t, http.StatusConflict, r.Status, "%s", r.Body)
	assert.Equal(t, protocol.CodeConflict, r.errorCode(t))
	assert.Contains(t, string(r.Body), `"status":"sent"`)
	// A command that never died: 409 too.
	g.postN(t, "app-1", "live", 1)
	r = g.do(http.MethodPost, "/v1/dead/live-0/replay?client=app-1", op, nil)
	require.Equal(t, http.StatusConflict, r.Status, "%s", r.Body)
	assert.Contains(t, string(r.Body), `"status":"queued"`)
	g.drain()

	// Dead again before a worker took it (its message hit the delivery
	// limit once more), and replayed again: attempt 3.
	r = g.do(http.MethodPost, "/v1/dead/d-1/replay?client=app-1", op, nil)
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	envs = g.envelopes()
	require.Len(t, envs, 1)
	assert.Equal(t, 2, envs[0].Attempt)
	out, err = g.store.MarkDead(context.Background(), "dev-1", "app-1", "d-1", "delivery limit reached again", "")
	require.NoError(t, err)
	require.Equal(t, mailbox.OutcomeDead, out)
	r = g.do(http.MethodPost, "/v1/dead/d-1/replay?client=app-1", op, nil)
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	envs = g.envelopes()
	require.Len(t, envs, 1)
	assert.Equal(t, 3, envs[0].Attempt)

	// Unknown: 404, also without ?client= (the operator's own commands).
	for _, p := range []string{"/v1/dead/nope/replay?client=app-1", "/v1/dead/d-3/replay", "/v1/dead/d-3/replay?client=app-2"} {
		r = g.do(http.MethodPost, p, op, nil)
		assert.Equal(t, http.StatusNotFound, r.Status, p)
	}
	r = g.do(http.MethodPost, "/v1/dead/d-3/replay?client=bad%20client", op, nil)
	assert.Equal(t, http.StatusBadRequest, r.Status)
}

// A replay whose publish fails is a 503; the command stays queued and
// listed, and replaying it again publishes it.
func TestReplayPublishFailure(t *testing.T) {
	t.Parallel()
	fp := &failingPublisher{}
	g := opsGW(t, func(_ *Config, d *Deps) { fp.Publisher = d.Publisher; d.Publisher = fp })
	op := token(t, "ops", auth.RoleOperator)
	g.deadCommands(t, "f-1")
	fp.fail.Store(true)
	r := g.do(http.MethodPost, "/v1/dead/f-1/replay?client=app-1", op, nil)
	require.Equal(t, http.StatusServiceUnavailable, r.Status, "%s", r.Body)
	assert.Equal(t, "1", r.Header.Get("Retry-After"))
	assert.Contains(t, string(r.Body), "replay it again")
	assert.Empty(t, g.drain())
	r = g.do(http.MethodGet, "/v1/dead", op, nil)
	var l deadView
	r.json(t, &l)
	require.Len(t, l.Commands, 1)
	assert.Equal(t, protocol.StatusQueued, l.Commands[0].Status)

	fp.fail.Store(false)
	r = g.do(http.MethodPost, "/v1/dead/f-1/replay?client=app-1", op, nil)
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	assert.Len(t, g.drain(), 1)
}

// failingPublisher fails every publish while fail is set, like a broker
// that nacks, and passes QueueDepth through.
type failingPublisher struct {
	Publisher
	fail atomic.Bool
}

func (f *failingPublisher) Publish(ctx context.Context, exchange, key string, body []byte, h amqpx.Headers) error {
	if f.fail.Load() {
		return &amqpx.Error{Op: "publish", Reason: "nacked", Err: amqpx.ErrNacked}
	}
	return f.Publisher.Publish(ctx, exchange, key, body, h)
}

func (f *failingPublisher) QueueDepth(ctx context.Context, queues ...string) (map[string]amqpx.QueueInfo, error) {
	qi, ok := f.Publisher.(queueInspector)
	if !ok {
		return nil, errors.New("no QueueDepth")
	}
	return qi.QueueDepth(ctx, queues...)
}

// metricValue finds a sample's value in the Prometheus text format.
func metricValue(t *testing.T, text, series string) (float64, bool) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	return v, true
}

// The gauges come from a snapshot the sampler refreshes every 5 s, not
// from RabbitMQ at each scrape.
func TestOpsGauges(t *testing.T) {
	t.Parallel()
	g := opsGW(t)
	g.deadCommands(t, "g-dead")
	g.postN(t, "app-1", "gauge", 4)
	scrape := func() string {
		r := g.do(http.MethodGet, "/metrics", "", nil)
		require.Equal(t, http.StatusOK, r.Status)
		return string(r.Body)
	}
	// One series per command queue, none for their sum.
	// ready sums them; -1 when one is missing.
	ready := func(m string) float64 {
		sum := 0.0
		for _, q := range g.topo.CommandQueues() {
			v, ok := metricValue(t, m, fmt.Sprintf(`gw_queue_ready_messages{queue=%q}`, q))
			if !ok {
				return -1
			}
			sum += v
		}
		return sum
	}
	m := scrape()
	require.Equal(t, 4.0, ready(m), "gw_queue_ready_messages of the command queues in\n%s", m)
	assert.NotContains(t, m, fmt.Sprintf(`{queue=%q}`, g.topo.CommandsGroup), "a series for the sum")
	assert.NotContains(t, m, fmt.Sprintf(`{queue=%q}`, g.ns+".results"), "a series for the removed results queue")
	assert.NotContains(t, m, fmt.Sprintf(`{queue=%q}`, g.ns+".results.dead"), "a series for the removed results dead-letter queue")
	series := map[string]float64{
		fmt.Sprintf(`gw_queue_ready_messages{queue=%q}`, g.topo.CommandsDeadQueue): 0,
		"gw_mailbox_entries":           1, // the dead command's result, for app-1
		"gw_mailboxes":                 1,
		"gw_timers_pending":            8, // the deliver-by timers of the queued commands and their claims' watchdogs
		"gw_dead_commands":             1,
		"gw_outbox_entries":            0, // every final step relayed at once
		"gw_outbox_oldest_age_seconds": 0,
	}
	for _, q := range g.topo.CommandQueues() {
		series[fmt.Sprintf(`gw_queue_consumers{queue=%q}`, q)] = 0
	}
	for series, want := range series {
		v, ok := metricValue(t, m, series)
		if assert.True(t, ok, "no %s", series) {
			assert.Equal(t, want, v, series)
		}
	}
	// The status transitions and events of the stats window, as
	// /v1/stats shows them (nothing moves meanwhile: no worker runs).
	stats := g.stats(t)
	require.NotZero(t, stats.Statuses.Counts["dead"], "/v1/stats counts no dead command: %+v", stats.Statuses)
	for st, want := range stats.Statuses.Counts {
		got, ok := metricValue(t, m, fmt.Sprintf(`gw_commands_recent{status=%q}`, st))
		assert.True(t, ok && got == float64(want), "gw_commands_recent{status=%q} = %v (present %v), want %d as in /v1/stats", st, got, ok, want)
	}
	for ev, want := range stats.Statuses.Events {
		got, ok := metricValue(t, m, fmt.Sprintf(`gw_command_events_recent{event=%q}`, ev))
		assert.True(t, ok && got == float64(want), "gw_command_events_recent{event=%q} = %v (present %v), want %d as in /v1/stats", ev, got, ok, want)
	}

	// The age of the oldest queued command of each command queue: one of
	// the 4 queued ones somewhere, 0 where none waits.
	oldest := 0.0
	for _, q := range g.topo.CommandQueues() {
		v, ok := metricValue(t, m, fmt.Sprintf(`gw_queue_oldest_age_seconds{queue=%q}`, q))
		if assert.True(t, ok, "no gw_queue_oldest_age_seconds for %s", q) {
			assert.GreaterOrEqual(t, v, 0.0, q)
			oldest = max(oldest, v)
		}
	}
	assert.Less(t, oldest, 60.0, "gw_queue_oldest_age_seconds: the commands were queued just now")

	// Two more: the next scrape still shows the snapshot, a later one
	// (within the 5-s period) the new depth.
	g.postN(t, "app-1", "gauge-more", 2)
	assert.Equal(t, 4.0, ready(scrape()), "a scrape right after the sample reads the snapshot")
	require.Eventually(t, func() bool {
		return ready(scrape()) == 6
	}, 3*sampleEvery, 200*time.Millisecond)
}

// The sampler runs while read and stops when nobody reads.
func TestSamplerStopsWhenIdle(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	stopping := make(chan struct{})
	sm := newSampler(func(context.Context) (*opsSample, error) {
		calls.Add(1)
		return &opsSample{at: time.Now()}, nil
	}, stopping, func(string, ...any) {})
	sm.every, sm.idle = 10*time.Millisecond, 50*time.Millisecond

	require.NotNil(t, sm.snapshot(time.Second), "the first read waits for a sample")
	// While it is read, it goes on sampling (evidence, not a count after
	// a wait: a starved CPU samples less often).
	require.Eventually(t, func() bool {
		sm.snapshot(time.Second)
		return calls.Load() >= 3
	}, 5*time.Second, 5*time.Millisecond, "the sampler does not go on sampling while read")
	require.Eventually(t, func() bool {
		sm.mu.Lock()
		defer sm.mu.Unlock()
		return !sm.running
	}, 2*time.Second, 5*time.Millisecond, "the sampler does not stop when idle")
	// A run clears running as it returns, after its last sample.
	sm.runs.Wait()
	n := calls.Load()

	require.NotNil(t, sm.snapshot(time.Second))
	require.Eventually(t, func() bool { return calls.Load() > n }, time.Second, 5*time.Millisecond, "a read restarts it")
	close(stopping)
	sm.runs.Wait() // the run has returned: it samples no more
	n = calls.Load()
	// A read after shutdown starts no run.
	sm.snapshot(10 * time.Millisecond)
	sm.runs.Wait()
	assert.Equal(t, n, calls.Load(), "samples after shutdown")
}

// The management client reads the rates and ages it is given.
func TestMgmtQueueFields(t *testing.T) {
	t.Parallel()
	var q mgmtQueue
	require.NoError(t, json.Unmarshal([]byte(`{"messages_unacknowledged":3,"head_message_timestamp":1700000000,
		"message_stats":{"publish_details":{"rate":12.5},"deliver_get_details":{"rate":4}}}`), &q))
	now := time.Unix(1700000090, 0)
	assert.Equal(t, int64(3), *q.unacked())
	assert.Equal(t, 12.5, *q.publishRate())
	assert.Equal(t, 4.0, *q.deliverRate())
	assert.Equal(t, 90.0, *q.oldestAge(now))

	var empty mgmtQueue
	require.NoError(t, json.Unmarshal([]byte(`{}`), &empty))
	assert.Nil(t, empty.unacked())
	assert.Equal(t, 0.0, *empty.publishRate(), "no traffic yet")
	assert.Nil(t, empty.oldestAge(now))

	c, err := newMgmtClient("http://user:pw@rabbit:15672/", "amqp://u:p@rabbit:5672/prod")
	require.NoError(t, err)
	assert.Equal(t, "http://rabbit:15672", c.base)
	assert.Equal(t, "prod", c.vhost)
	assert.Equal(t, "user", c.user)
	c, err = newMgmtClient("http://rabbit:15672", "amqp://rabbit")
	require.NoError(t, err)
	assert.Equal(t, "%2F", c.vhost)
	_, err = newMgmtClient("rabbit:15672", "")
	assert.Error(t, err)
}
