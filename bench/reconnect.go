package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// reconnectWaiting is how many commands wait for the device.
const reconnectWaiting = 10000

// runReconnect measures a device that comes back to a full mailbox: a
// client sends 10,000 commands to an offline device through the API, the
// worker puts them all into its mailbox, then the device connects and
// subscribes; the figure is the time from CONNECT to the 10,000th
// command. The device is the bench's lean MQTT 3.1.1 client (leanClient),
// which PUBACKs every command, so that the receiving side takes little of
// the CPUs the push server needs.
func runReconnect(ctx context.Context, b *Bench, s *Section) error {
	ns, cleanup := b.sectionNamespace(s, "reconnect")
	defer cleanup()
	g, err := b.startGateway(ctx, "reconnect", ns, 1, 1)
	if err != nil {
		return err
	}
	defer g.Stop()
	const device = "dev-waiting"

	// 10,000 commands, 32 at a time, to the offline device, from
	// reconnectClients clients: each client's requests are rate limited
	// (apiserver --rate, 1,000/s by default).
	const reconnectClients = 10
	load, err := newHTTPLoad(g.APIURL, b.Secret, "rc-", reconnectClients, 1, "?expires_in=10m&timeout=60s")
	if err != nil {
		return err
	}
	var acc atomic.Int64
	if err := parallel(ctx, 32, reconnectWaiting, func(i int) error {
		if load.post(ctx, i%reconnectClients, device) == http.StatusAccepted {
			acc.Add(1)
		}
		return nil
	}); err != nil {
		return err
	}
	if acc.Load() != reconnectWaiting {
		return fmt.Errorf("only %d of %d commands accepted: %v %q", acc.Load(), reconnectWaiting, load.statuses(), load.errs)
	}
	keys := protocol.NewKeys(ns)
	var inbox int64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if inbox, err = b.rdb.XLen(ctx, keys.Part(protocol.Partition(device, protocol.DefaultPartitions)).Mailbox(device)).Result(); err != nil {
			return err
		}
		if inbox >= reconnectWaiting || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
	}
	if inbox < reconnectWaiting {
		return fmt.Errorf("only %d of %d commands reached the device's mailbox within 30s", inbox, reconnectWaiting)
	}
	b.logf("reconnect: %d commands waiting", inbox)
	mbox := keys.Part(protocol.Partition(device, protocol.DefaultPartitions)).Mailbox(device)
	if all, box, err := b.redis.memory(ctx, ns, mbox); err != nil {
		s.Note("Redis memory per waiting command: not measured: %v", err)
	} else {
		s.Add("redis_bytes_per_waiting_command", fmt.Sprintf("Redis memory per waiting command (MEMORY USAGE of every key of the namespace over the %s commands)", thousands(float64(inbox))), float64(all)/float64(inbox), "B", nil)
		s.Add("mailbox_bytes_per_entry", "of which the device's mailbox stream, per entry", float64(box)/float64(inbox), "B", nil)
		s.Note("Memory: %d bytes in all the namespace's keys and %d in the device's mailbox while %d commands waited (MEMORY USAGE … SAMPLES 0, so exact; it includes the records, claims, timers, listings and the gateway's few node keys).", all, box, inbox)
	}

	tok, err := auth.Mint([]byte(b.Secret), device, auth.RoleDevice, nil, time.Hour)
	if err != nil {
		return err
	}
	broker, err := ownerAddr(ctx, g.APIURL, device, tok)
	if err != nil {
		return err
	}
	var (
		mu       sync.Mutex
		seen     = make(map[string]bool, reconnectWaiting)
		dups     int
		first    time.Time
		lastAt   time.Time
		complete = make(chan struct{})
	)
	handler := func(payload []byte) {
		now := time.Now()
		var req struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(payload, &req)
		mu.Lock()
		defer mu.Unlock()
		if seen[req.ID] {
			dups++
			return
		}
		seen[req.ID] = true
		if first.IsZero() {
			first = now
		}
		lastAt = now
		if len(seen) == reconnectWaiting {
			close(complete)
		}
	}
	push := g.Push[0]
	var prof *profile
	if maddr := logField(push.Log, "metrics listening", "addr"); maddr != "" {
		prof = startProfile(ctx, maddr, b.bins["pushserver"], filepath.Join(b.RunDir, "reconnect", "pushserver-drain.pprof"), 1)
	}
	m := b.newMeter(append(gatewaySources(g), b.brokers(ctx)...)...)
	t0 := time.Now()
	c, err := leanConnect(broker, device, device, tok, handler)
	if err != nil {
		return err
	}
	defer c.Close()
	tConn := time.Now()
	if err := c.Subscribe(protocol.DeviceCommandsTopic(device)); err != nil {
		return err
	}
	tSub := time.Now()
	select {
	case <-complete:
	case <-time.After(30 * time.Second):
	case <-ctx.Done():
	}
	mu.Lock()
	got, d, f, l := len(seen), dups, first, lastAt
	mu.Unlock()
	drain := m.table("the drain", int64(got))
	s.CPU = append(s.CPU, drain)
	if got < reconnectWaiting {
		return fmt.Errorf("the device received %d of %d waiting commands within 30s (push server log %s)", got, reconnectWaiting, push.Log)
	}
	total := l.Sub(t0)
	s.Add("reconnect_drain_ms", fmt.Sprintf("%s waiting commands: CONNECT → %sth command", thousands(reconnectWaiting), thousands(reconnectWaiting)), float64(total.Microseconds())/1000, "ms", AtMost(1000))
	s.Add("reconnect_per_s", "commands per second to the reconnected device", perSecond(int64(got), l.Sub(f)), "/s", nil)
	s.Note("CONNECT → CONNACK %s, → SUBACK %s, → first command %s, → %sth command %s; %d duplicates. The device (the bench's lean MQTT 3.1.1 client: one goroutine reading its socket, the PUBACKs of one read in one write) PUBACKs each command and does not answer it.",
		tConn.Sub(t0).Round(100*time.Microsecond), tSub.Sub(t0).Round(100*time.Microsecond), f.Sub(t0).Round(100*time.Microsecond), thousands(reconnectWaiting), total.Round(100*time.Microsecond), d)
	if w := logField(push.Log, "push server listening", "inflight"); w != "" {
		s.Note("The push server sends at most %s QoS 1 messages to a session before their PUBACKs (its log: inflight), so the drain is at least %s windows.", w, thousands(float64(reconnectWaiting)/atofOr(w, 1)))
	}
	var where []string
	for _, r := range drain.Rows {
		if r.Process == push.Name && drain.WallS > 0 {
			redis := rowCPU(drain, "redis")
			why := "the drain waits on round trips (a fetch from Redis, then the device's PUBACKs for each window) more than on CPU"
			if r.CPUS > 0.6*drain.WallS || redis > 0.6*drain.WallS {
				why = "CPU bounds the drain"
			}
			busy := fmt.Sprintf("Over the %.2f s of the drain %s was busy %.2f CPU s (%.0f%% of one CPU), Redis %.2f: %s.",
				drain.WallS, push.Name, r.CPUS, 100*r.CPUS/drain.WallS, redis, why)
			s.Note("%s", busy)
			where = append(where, busy)
		}
	}
	if prof != nil {
		if flat, cum, err := prof.summary(ctx, 12); err != nil {
			s.Note("%v.", err)
		} else {
			w := fmt.Sprintf("CPU profile of %s over the first second of the drain (%s): by own CPU (flat), %s. The gateway's own functions with their callees (cum): %s.", push.Name, filepath.Join(b.RunDir, "reconnect", "pushserver-drain.pprof"), flat, cum)
			s.Note("%s", w)
			where = append(where, w)
		}
	}
	s.SetWhere("reconnect_drain_ms", strings.Join(where, " "))
	s.Note("Gateway: 1 apiserver, 1 msgworker, 1 pushserver. The commands were accepted through the API (expires_in 10m, from %d clients, as one client may send 1,000 requests/s) and all %d were in the device's mailbox before it connected.", reconnectClients, inbox)
	s.Notes = append(s.Notes, logProblems(g.All()...)...)
	b.logf("reconnect: %s", total.Round(time.Millisecond))
	return nil
}

// ownerAddr asks the API which push server owns identity and returns its
// host:port.
func ownerAddr(ctx context.Context, api, identity, token string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(api, "/")+"/v1/connect/"+url.PathEscape(identity), nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("cannot find the push server of %s: %w", identity, err)
	}
	defer resp.Body.Close()
	var o struct {
		MQTTURL string `json:"mqtt_url"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&o) != nil {
		return "", fmt.Errorf("cannot find the push server of %s: %s", identity, resp.Status)
	}
	u, err := url.Parse(o.MQTTURL)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("bad MQTT URL %q for %s", o.MQTTURL, identity)
	}
	return u.Host, nil
}

// atofOr parses s as a number, def when it is not one.
func atofOr(s string, def float64) float64 {
	if v, err := strconv.ParseFloat(s, 64); err == nil && v > 0 {
		return v
	}
	return def
}

// rowCPU is the CPU seconds of process in t (0 when it has no row).
func rowCPU(t CPUTable, process string) float64 {
	for _, r := range t.Rows {
		if r.Process == process {
			return r.CPUS
		}
	}
	return 0
}
