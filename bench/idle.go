package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// idleTarget is how many idle sessions the section aims for.
const idleTarget = 15000

// runIdle measures the memory of idle MQTT sessions on one push server:
// devices connect (clean session, keep alive 10 minutes) and subscribe to
// their commands, then only hold their sockets. The figure is the push
// server's RSS growth per session; the section also reports what the idle
// sessions cost in CPU (push server and Redis) while nothing happens.
func runIdle(ctx context.Context, b *Bench, s *Section) error {
	if err := b.need("pushserver"); err != nil {
		return err
	}
	ns, cleanup := b.sectionNamespace(s, "idle")
	defer cleanup()
	target := idleTarget
	if b.Quick {
		target = 3000
	}
	var rl syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	// Both this process and the push server hold one descriptor per
	// session; keep room for everything else.
	if lim := int(rl.Cur) - 512; lim < target {
		s.Note("Scaled down from %d to %d sessions: the soft RLIMIT_NOFILE is %d (raised to the hard limit), and both this process and the push server need one descriptor per session.", target, max(lim, 0), rl.Cur)
		target = max(lim, 0)
	}
	if target < 100 {
		return skip("RLIMIT_NOFILE %d leaves room for too few sessions", rl.Cur)
	}
	const node = "push-0"
	p, addr, err := b.startPushServer(ctx, "idle", ns, node)
	if err != nil {
		return err
	}
	defer p.Stop()
	sleepCtx(ctx, 2*time.Second)
	rss0 := p.RSS()
	go0, goErr := scrapeGo(ctx, b.metricsAddr[p])

	sessions := make([]*rawSession, target)
	defer func() {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for _, rs := range sessions {
			if rs == nil {
				continue
			}
			wg.Add(1)
			sem <- struct{}{}
			go func() { defer wg.Done(); defer func() { <-sem }(); rs.Close() }()
		}
		wg.Wait()
	}()
	secret := []byte(b.Secret)
	type point struct {
		n   int
		rss int64
	}
	var points []point
	checkpoints := []int{target / 15, target / 3, 2 * target / 3, target}
	done := 0
	t0 := time.Now()
	var connectTime time.Duration
	for _, cp := range checkpoints {
		from := done
		err := parallel(ctx, 64, cp-from, func(k int) error {
			i := from + k
			id := "idle-" + strconv.Itoa(i)
			tok, err := auth.Mint(secret, id, auth.RoleDevice, nil, 24*time.Hour)
			if err != nil {
				return err
			}
			rs, err := rawConnect(addr, id, id, tok, protocol.DeviceCommandsTopic(id), 10*time.Minute)
			if err != nil {
				return fmt.Errorf("session %d: %w", i, err)
			}
			sessions[i] = rs
			return nil
		})
		if err != nil {
			n := 0
			for _, rs := range sessions {
				if rs != nil {
					n++
				}
			}
			if n < 100 {
				return fmt.Errorf("after %d sessions: %w (log %s)", n, err, p.Log)
			}
			s.Note("Stopped at %d sessions: %v.", n, err)
			connectTime += time.Since(t0)
			sleepCtx(ctx, 2*time.Second)
			points = append(points, point{n, p.RSS()})
			done = n
			break
		}
		connectTime = time.Since(t0)
		done = cp
		sleepCtx(ctx, time.Second)
		points = append(points, point{cp, p.RSS()})
		b.logf("idle: %d sessions, push server RSS %d MB", cp, p.RSS()>>20)
		t0 = time.Now().Add(-connectTime)
	}
	last := points[len(points)-1]
	perSession := float64(last.rss-rss0) / float64(last.n) / 1024
	s.Add("idle_kb_per_session", fmt.Sprintf("push server RSS per idle session (%s sessions)", thousands(float64(last.n))), perSession, "KB/session", AtMost(16))
	s.Explain("-")
	s.Add("idle_sessions", "idle sessions connected", float64(last.n), "", nil)
	s.Add("idle_connect_per_s", "sessions connected and subscribed per second (64 at a time)", perSecond(int64(last.n), connectTime), "/s", nil)
	row := "RSS of the push server: " + fmt.Sprintf("%d MB before", rss0>>20)
	for _, pt := range points {
		row += fmt.Sprintf(", %d MB at %s", pt.rss>>20, thousands(float64(pt.n)))
	}
	s.Note("%s.", row)
	if len(points) >= 2 {
		a, z := points[0], points[len(points)-1]
		if z.n > a.n {
			s.Note("Slope between %s and %s sessions: %.1f KB per session.", thousands(float64(a.n)), thousands(float64(z.n)), float64(z.rss-a.rss)/float64(z.n-a.n)/1024)
		}
	}
	if goErr == nil {
		if go1, err := scrapeGo(ctx, b.metricsAddr[p]); err == nil {
			n := float64(last.n)
			s.Note("Go runtime of the push server (its /metrics), per session: %.1f goroutines, %.1f KB of heap in use, %.1f KB of goroutine stacks; the rest of the RSS growth is what the runtime holds beyond that (GC headroom, freed spans not yet returned).",
				(go1.goroutines-go0.goroutines)/n, (go1.heapInuse-go0.heapInuse)/n/1024, (go1.stackInuse-go0.stackInuse)/n/1024)
		}
	}
	var registered int64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if registered, err = b.rdb.SCard(ctx, protocol.NewKeys(ns).NodeSessions(node)).Result(); err != nil || int(registered) == last.n {
			break
		}
	}
	if err == nil && int(registered) != last.n {
		s.Note("The push server registered %d live sessions in Redis (%s) for %d connected, 5 s after the last connect.", registered, protocol.NewKeys(ns).NodeSessions(node), last.n)
	}

	// What idleness costs.
	idleFor := 5 * time.Second
	if b.Quick {
		idleFor = 2 * time.Second
	}
	m := b.newMeter(append([]cpuSource{procSource(p)}, b.brokers(ctx)...)...)
	sleepCtx(ctx, idleFor)
	t := m.table(fmt.Sprintf("%s idle sessions, %s", thousands(float64(last.n)), idleFor), int64(last.n))
	s.CPU = append(s.CPU, t)
	if len(t.Rows) > 0 {
		s.Add("idle_push_cpu_pct", "push server CPU while the sessions are idle", 100*t.Rows[0].CPUS/idleFor.Seconds(), "% of a CPU", nil)
	}
	for _, r := range t.Rows {
		if r.Process == "redis" {
			s.Add("idle_redis_cpu_pct", "Redis CPU while the sessions are idle", 100*r.CPUS/idleFor.Seconds(), "% of a CPU", nil)
		}
	}
	s.Note("Sessions are raw MQTT 3.1.1 connections (clean session, keep alive 10 min) that subscribe at QoS 1 to their commands topic and then only hold their sockets; the CPU table is over %s of idleness, and “µs per message” there means CPU µs per session over that time.", idleFor)
	s.Notes = append(s.Notes, logProblems(p)...)
	b.logf("idle: %.1f KB per session", perSession)
	return nil
}
