package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/internal/ring"
	"github.com/iotgw/gateway/protocol"
)

// The idle section aims for idleTarget sessions (idleQuickTarget with
// --quick) spread evenly over idlePushServers push servers.
const (
	idleTarget      = 50000
	idleQuickTarget = 6000
	idlePushServers = 3
	// idleKBTarget is the bound on RSS per idle session.
	idleKBTarget = 8
)

// idleServer is one push server of the idle section with the client
// process that holds its sessions.
type idleServer struct {
	node    string
	p       *gwproc.Proc
	addr    string
	ids     []string
	clients *idleClients
	rss0    int64
	go0     goStats
	goErr   error
}

// runIdle measures the memory of idle MQTT sessions: 50,000 devices
// spread over 3 push servers of one ring, each device connected to the
// push server that owns it (clean session, keep alive 10 minutes) and
// subscribed to its commands, then only holding its socket. A process
// may hold at most RLIMIT_NOFILE descriptors (20,000 here), so the
// sessions are held by one client process per push server: this binary
// run again as an idle-client process (runIdleClients). The figure is
// the push servers' RSS growth per session, per push server and overall;
// the section also reports what the idle sessions cost in CPU (push
// servers and Redis) while nothing happens.
func runIdle(ctx context.Context, b *Bench, s *Section) error {
	if err := b.need("pushserver"); err != nil {
		return err
	}
	ns, cleanup := b.sectionNamespace(s, "idle")
	defer cleanup()
	goal := idleTarget
	if b.Quick {
		goal = idleQuickTarget
		s.Note("Quick run: %s sessions instead of the issue's %s.", thousands(idleQuickTarget), thousands(idleTarget))
	}
	target := goal
	var rl syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	// Each push server and each client process holds one descriptor per
	// session of its share; keep room for everything else.
	perProc := int(rl.Cur) - 512
	if share := (target + idlePushServers - 1) / idlePushServers; share > perProc {
		target = max(perProc, 0) * idlePushServers
		s.Note("Scaled down from %s to %s sessions: the soft RLIMIT_NOFILE is %d (raised to the hard limit), and each push server and its client process need one descriptor per session.", thousands(float64(goal)), thousands(float64(target)), rl.Cur)
	}
	if target < 100*idlePushServers {
		return skip("RLIMIT_NOFILE %d leaves room for too few sessions", rl.Cur)
	}

	servers := make([]*idleServer, idlePushServers)
	defer func() {
		for _, sv := range servers {
			if sv == nil {
				continue
			}
			if sv.clients != nil {
				if err := sv.clients.stop(); err != nil {
					s.Note("Client process of %s: %v.", sv.node, err)
				}
			}
			_ = sv.p.Stop()
		}
	}()
	var procs []*gwproc.Proc
	for i := range servers {
		node := "push-" + strconv.Itoa(i)
		p, addr, err := b.startPushServer(ctx, "idle", ns, node)
		if err != nil {
			return err
		}
		servers[i] = &idleServer{node: node, p: p, addr: addr}
		procs = append(procs, p)
	}
	owners, err := b.idleOwners(ctx, ns, servers, target)
	if err != nil {
		return err
	}
	for i, sv := range servers {
		sv.ids = owners[i]
		sv.rss0 = sv.p.RSS()
		sv.go0, sv.goErr = scrapeGo(ctx, b.metricsAddr[sv.p])
		dir := filepath.Join(b.RunDir, "idle")
		if sv.clients, err = b.startIdleClients("idle-clients-"+strconv.Itoa(i), sv.addr, sv.ids,
			filepath.Join(dir, "idle-clients-"+strconv.Itoa(i)+".ids"), filepath.Join(dir, "idle-clients-"+strconv.Itoa(i)+".log")); err != nil {
			return err
		}
	}

	type point struct {
		n   int
		rss []int64
	}
	var points []point
	total := func() int {
		n := 0
		for _, sv := range servers {
			n += sv.clients.count
		}
		return n
	}
	var connectTime time.Duration
	for _, frac := range [][2]int{{1, 15}, {1, 3}, {2, 3}, {1, 1}} {
		t0 := time.Now()
		errs := make([]error, len(servers))
		_ = parallel(ctx, len(servers), len(servers), func(i int) error {
			sv := servers[i]
			errs[i] = sv.clients.connect(len(sv.ids) * frac[0] / frac[1])
			return nil
		})
		connectTime += time.Since(t0)
		err := errors.Join(errs...)
		if err != nil && total() < 100*idlePushServers {
			return fmt.Errorf("after %d sessions: %w (logs of the push servers in %s)", total(), err, filepath.Dir(servers[0].p.Log))
		}
		sleepCtx(ctx, time.Second)
		pt := point{n: total()}
		for _, sv := range servers {
			pt.rss = append(pt.rss, sv.p.RSS())
		}
		points = append(points, pt)
		b.logf("idle: %d sessions over %d push servers, RSS %s", pt.n, len(servers), mbList(pt.rss))
		if err != nil {
			s.Note("Stopped at %s sessions: %v.", thousands(float64(pt.n)), err)
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	last := points[len(points)-1]
	var grown int64
	var perServer []string
	for i, sv := range servers {
		grown += last.rss[i] - sv.rss0
		if n := sv.clients.count; n > 0 {
			kb := float64(last.rss[i]-sv.rss0) / float64(n) / 1024
			s.Add("idle_kb_per_session_"+sv.node, fmt.Sprintf("%s (%s): RSS per idle session (%s sessions)", sv.p.Name, sv.node, thousands(float64(n))), kb, "KB/session", nil)
			perServer = append(perServer, fmt.Sprintf("%s %.1f KB", sv.p.Name, kb))
		}
	}
	perSession := float64(grown) / float64(last.n) / 1024
	s.Add("idle_kb_per_session", fmt.Sprintf("push server RSS per idle session, %d push servers together (%s sessions)", len(servers), thousands(float64(last.n))), perSession, "KB/session", AtMost(idleKBTarget))
	s.Explain("-")
	s.Add("idle_sessions", fmt.Sprintf("idle sessions connected over %d push servers", len(servers)), float64(last.n), "", AtLeast(float64(goal)))
	s.Explain("-")
	s.Add("idle_connect_per_s", fmt.Sprintf("sessions connected and subscribed per second (%d client processes, 64 at a time each)", len(servers)), perSecond(int64(last.n), connectTime), "/s", nil)
	var rows []string
	for i, sv := range servers {
		row := fmt.Sprintf("%s: %d MB before", sv.p.Name, sv.rss0>>20)
		for _, pt := range points {
			row += fmt.Sprintf(", %d MB at %s in all", pt.rss[i]>>20, thousands(float64(pt.n)))
		}
		rows = append(rows, row+fmt.Sprintf(" (%s sessions of its own at the end)", thousands(float64(sv.clients.count))))
	}
	s.Note("RSS of the push servers: %s.", strings.Join(rows, "; "))
	s.Note("RSS per idle session by push server: %s.", strings.Join(perServer, ", "))
	if len(points) >= 2 {
		a, z := points[0], points[len(points)-1]
		if z.n > a.n {
			s.Note("Slope between %s and %s sessions, all push servers together: %.1f KB per session.", thousands(float64(a.n)), thousands(float64(z.n)), float64(sum(z.rss)-sum(a.rss))/float64(z.n-a.n)/1024)
		}
	}
	var goNotes []string
	var heap, stack float64
	measured := 0
	for _, sv := range servers {
		if sv.goErr != nil || sv.clients.count == 0 {
			continue
		}
		if go1, err := scrapeGo(ctx, b.metricsAddr[sv.p]); err == nil {
			n := float64(sv.clients.count)
			goNotes = append(goNotes, fmt.Sprintf("%s %.1f goroutines, %.1f KB of heap in use, %.1f KB of goroutine stacks", sv.p.Name,
				(go1.goroutines-sv.go0.goroutines)/n, (go1.heapInuse-sv.go0.heapInuse)/n/1024, (go1.stackInuse-sv.go0.stackInuse)/n/1024))
			heap += go1.heapInuse - sv.go0.heapInuse
			stack += go1.stackInuse - sv.go0.stackInuse
			measured += sv.clients.count
		}
	}
	var where []string
	if len(goNotes) > 0 {
		s.Note("Go runtime of the push servers (their /metrics), per session: %s; the rest of the RSS growth is what the runtime holds beyond that (GC headroom, freed spans not yet returned).", strings.Join(goNotes, "; "))
		n := float64(measured)
		where = append(where, fmt.Sprintf("Of the %.1f KB of RSS per session (%s), the Go runtimes of the push servers hold %.1f KB of heap in use and %.1f KB of goroutine stacks per session (their /metrics); the remaining %.1f KB is what the runtimes keep beyond that (GC headroom, freed spans not yet returned) and runtime metadata.",
			perSession, strings.Join(perServer, ", "), heap/n/1024, stack/n/1024, perSession-(heap+stack)/n/1024))
	}
	sv := servers[0]
	heapPath := filepath.Join(b.RunDir, "idle", sv.p.Name+"-heap.pprof")
	if flat, cum, err := heapProfile(ctx, b.metricsAddr[sv.p], b.bins["pushserver"], heapPath).summary(ctx, 10); err != nil {
		s.Note("Heap profile of %s: %v.", sv.p.Name, err)
	} else {
		h := fmt.Sprintf("Heap in use of %s with %s sessions (its /debug/pprof/heap, %s), by allocation site: %s. The gateway's own functions with what they called: %s.", sv.p.Name, thousands(float64(sv.clients.count)), heapPath, flat, cum)
		s.Note("%s", h)
		where = append(where, h)
	}
	if len(where) > 0 {
		s.SetWhere("idle_kb_per_session", strings.Join(where, " "))
	}
	keys := protocol.NewKeys(ns)
	var regNotes []string
	for _, sv := range servers {
		var registered int64
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if registered, err = b.rdb.SCard(ctx, keys.NodeSessions(sv.node)).Result(); err != nil || int(registered) == sv.clients.count {
				break
			}
		}
		if err == nil && int(registered) != sv.clients.count {
			regNotes = append(regNotes, fmt.Sprintf("%s registered %d live sessions in Redis (%s) for %d connected", sv.p.Name, registered, keys.NodeSessions(sv.node), sv.clients.count))
		}
	}
	if len(regNotes) > 0 {
		s.Note("5 s after the last connect: %s.", strings.Join(regNotes, "; "))
	}

	// What idleness costs.
	idleFor := 5 * time.Second
	if b.Quick {
		idleFor = 2 * time.Second
	}
	var srcs []cpuSource
	for _, p := range procs {
		srcs = append(srcs, procSource(p))
	}
	for _, sv := range servers {
		pid := sv.clients.cmd.Process.Pid
		srcs = append(srcs, cpuSource{name: sv.clients.name, cpu: func() time.Duration { return gwproc.ProcessCPU(pid) }})
	}
	m := b.newMeter(append(srcs, b.brokers(ctx)...)...)
	sleepCtx(ctx, idleFor)
	t := m.table(fmt.Sprintf("%s idle sessions, %s", thousands(float64(last.n)), idleFor), int64(last.n))
	s.CPU = append(s.CPU, t)
	var pushCPU float64
	for _, r := range t.Rows {
		if gatewayProcess(r.Process) {
			pushCPU += r.CPUS
		}
	}
	s.Add("idle_push_cpu_pct", fmt.Sprintf("CPU of the %d push servers together while the sessions are idle", len(servers)), 100*pushCPU/idleFor.Seconds(), "% of a CPU", nil)
	for _, r := range t.Rows {
		if r.Process == "redis" {
			s.Add("idle_redis_cpu_pct", "Redis CPU while the sessions are idle", 100*r.CPUS/idleFor.Seconds(), "% of a CPU", nil)
		}
	}
	s.Note("Sessions are raw MQTT 3.1.1 connections (clean session, keep alive 10 min) that subscribe at QoS 1 to their commands topic and then only hold their sockets, each to the push server that owns its device in the ring of %d; %d client processes (this binary as `%s`, one per push server) hold them, since one process may hold at most RLIMIT_NOFILE (%d) descriptors. The CPU table is over %s of idleness, and “µs per message” there means CPU µs per session over that time.",
		len(servers), len(servers), idleClientsCmd, rl.Cur, idleFor)
	s.Notes = append(s.Notes, logProblems(procs...)...)
	b.logf("idle: %.1f KB per session over %d sessions", perSession, last.n)
	return nil
}

// idleOwners splits n device identities evenly over the push servers,
// each identity to the one that owns it in the ring (as the apiserver's
// /v1/connect would answer), once every server is a ring member.
func (b *Bench) idleOwners(ctx context.Context, ns string, servers []*idleServer, n int) ([][]string, error) {
	r := ring.New(b.rdb, ns, ring.Options{})
	byNode := map[string]int{}
	for i, sv := range servers {
		byNode[sv.node] = i
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err := r.Refresh(ctx); err != nil {
			return nil, err
		}
		if len(r.Members()) == len(servers) {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the push ring has %d members, want %d", len(r.Members()), len(servers))
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
	// Each push server re-reads the ring every second (ring.Options
	// Refresh): give them that to agree on the same members.
	sleepCtx(ctx, 2*time.Second)
	out := make([][]string, len(servers))
	for i := 0; ; i++ {
		full := true
		for k := range out {
			if len(out[k]) < n/len(servers)+btoi(k < n%len(servers)) {
				full = false
			}
		}
		if full {
			return out, nil
		}
		id := "idle-" + strconv.Itoa(i)
		m, ok := r.Owner(id)
		if !ok {
			return nil, fmt.Errorf("no owner for %s", id)
		}
		k, ok := byNode[m.Node]
		if !ok {
			return nil, fmt.Errorf("%s is owned by %s, not one of the section's push servers", id, m.Node)
		}
		if len(out[k]) < n/len(servers)+btoi(k < n%len(servers)) {
			out[k] = append(out[k], id)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func sum(xs []int64) int64 {
	var t int64
	for _, x := range xs {
		t += x
	}
	return t
}

// mbList formats byte counts as "a, b, c MB".
func mbList(xs []int64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.FormatInt(x>>20, 10)
	}
	return strings.Join(parts, ", ") + " MB"
}
