package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/internal/latency"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// mosquittoAddr is where the comparison broker listens.
const mosquittoAddr = "127.0.0.1:1883"

// receiver counts the messages of a push run: each (client, j) once,
// duplicates apart, with the latency from the time written in the
// payload.
type receiver struct {
	run       int // messages of other runs are stale redeliveries
	stale     atomic.Int64
	perClient int
	seen      []atomic.Int32
	count     atomic.Int64
	dups      atomic.Int64
	bad       atomic.Int64
	last      atomic.Int64 // unix ns of the latest first receipt
	lat       latency.Recorder
	done      chan struct{}
	total     int64
}

func newReceiver(run, clients, perClient int) *receiver {
	return &receiver{run: run, perClient: perClient, seen: make([]atomic.Int32, clients*perClient),
		done: make(chan struct{}), total: int64(clients * perClient)}
}

func pushPayload(run, c, j int) []byte {
	return []byte(`{"jsonrpc":"2.0","result":{"r":` + strconv.Itoa(run) + `,"t":` + strconv.FormatInt(time.Now().UnixNano(), 10) +
		`,"c":` + strconv.Itoa(c) + `,"j":` + strconv.Itoa(j) + `},"id":"r-` + strconv.Itoa(c) + `-` + strconv.Itoa(j) + `"}`)
}

func (r *receiver) handle(payload []byte) {
	now := time.Now()
	var v struct {
		Result struct {
			R    int   `json:"r"`
			T    int64 `json:"t"`
			C, J int
		} `json:"result"`
	}
	if json.Unmarshal(payload, &v) != nil || v.Result.J >= r.perClient || v.Result.C*r.perClient+v.Result.J >= len(r.seen) {
		r.bad.Add(1)
		return
	}
	if v.Result.R != r.run {
		r.stale.Add(1)
		return
	}
	if r.seen[v.Result.C*r.perClient+v.Result.J].Add(1) > 1 {
		r.dups.Add(1)
		return
	}
	r.lat.Add(now.Sub(time.Unix(0, v.Result.T)))
	r.last.Store(now.UnixNano())
	if r.count.Add(1) == r.total {
		close(r.done)
	}
}

// wait waits until every message arrived or d passed.
func (r *receiver) wait(ctx context.Context, d time.Duration) bool {
	select {
	case <-r.done:
		return true
	case <-time.After(d):
	case <-ctx.Done():
	}
	return false
}

// runPush measures one push server streaming mailboxes: 1,000 clients
// connected and subscribed to their results, then every mailbox filled
// with mailbox.Put; the figure is messages delivered per second at QoS 1
// (each removed from its mailbox on its PUBACK), from a backlog and live.
// Then the same number of the same clients, the same messages (packets
// of the same size) through Mosquitto on 127.0.0.1:1883, published at
// QoS 1 by the bench's lean publishers. The targets are ratios to
// Mosquitto: from a backlog ≥ 1.0 ×, live ≥ 0.5 ×; and the CPU per
// delivered message of each broker stands beside the other's.
func runPush(ctx context.Context, b *Bench, s *Section) error {
	ns, cleanup := b.sectionNamespace(s, "push")
	defer cleanup()
	clients, per := 1000, 50
	if b.Quick {
		clients, per = 1000, 10
	}
	s.Note("%d clients, each subscribed at QoS 1 to its results filter (the SUBACK must grant QoS 1), %d messages each (%d in all), payloads of about 90 bytes, topics of the same length on both brokers. The receiving clients are the bench's own lean MQTT 3.1.1 clients (one goroutine per connection, a PUBACK for every QoS 1 PUBLISH, the PUBACKs of one read in one write), for both brokers, so that the load generator takes little of the CPUs the broker needs.", clients, per, clients*per)

	gwErr := pushGateway(ctx, b, s, ns, clients, per)
	if gwErr != nil && !errors.As(gwErr, new(errSkip)) {
		return gwErr
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	sleepCtx(ctx, time.Second)
	if err := pushMosquitto(ctx, b, s, ns, clients, per); err != nil {
		if errors.As(err, new(errSkip)) {
			s.Note("Mosquitto: %v", err)
		} else {
			return fmt.Errorf("mosquitto: %w", err)
		}
	}
	pushRatios(s)
	return gwErr
}

// putters is how many goroutines of the bench fill the mailboxes, as
// many workers would.
const putters = 128

func pushGateway(ctx context.Context, b *Bench, s *Section, ns string, clients, per int) error {
	const node = "push-0"
	p, addr, err := b.startPushServer(ctx, "push", ns, node)
	if err != nil {
		return err
	}
	defer p.Stop()
	store := mailbox.New(b.rdb, ns, mailbox.Options{})
	ids := make([]string, clients)
	tokens := make([]string, clients)
	for i := range ids {
		ids[i] = "pc-" + strconv.Itoa(i)
		if tokens[i], err = auth.Mint([]byte(b.Secret), ids[i], auth.RoleClient, nil, 24*time.Hour); err != nil {
			return err
		}
	}
	var cur atomic.Pointer[receiver]
	handle := func(payload []byte) { cur.Load().handle(payload) }
	total := clients * per
	run := 1
	put := func(k int) error {
		j, c := k/clients, k%clients
		_, err := store.Put(ctx, ids[c], protocol.ClientResultsTopic(ids[c], "dev-"+strconv.Itoa(j%100)), pushPayload(run, c, j), time.Time{}, node)
		return err
	}

	// Backlog: the clients connect without subscribing, the mailboxes
	// are filled, then every client subscribes and gets its backlog.
	t0 := time.Now()
	subs, err := connectAll(ctx, clients, 64, func(i int) (*leanClient, error) {
		return leanConnect(addr, ids[i], ids[i], tokens[i], handle)
	}, closeAll)
	if err != nil {
		return fmt.Errorf("push server: %w (log %s)", err, p.Log)
	}
	defer closeAll(subs)
	s.Note("Push server: %d clients connected in %s.", clients, time.Since(t0).Round(time.Millisecond))
	b.logf("push: %d clients connected", clients)
	rcv := newReceiver(run, clients, per)
	cur.Store(rcv)
	t0 = time.Now()
	if err := parallel(ctx, putters, total, put); err != nil {
		return fmt.Errorf("cannot fill the mailboxes: %w", err)
	}
	putEl := time.Since(t0)
	s.Add("push_put_per_s", fmt.Sprintf("mailbox.Put by the bench, %d at a time", putters), perSecond(int64(total), putEl), "/s", nil)
	sleepCtx(ctx, 300*time.Millisecond)
	if n := rcv.count.Load(); n > 0 {
		s.Note("Push server: %d messages reached clients that had not subscribed (DESIGN §5: a session that never subscribes receives nothing).", n)
	}
	m := b.newMeter(append([]cpuSource{procSource(p)}, b.brokers(ctx)...)...)
	t0 = time.Now()
	if err := parallel(ctx, 64, clients, func(i int) error {
		return subs[i].Subscribe(protocol.ClientResultsFilter(ids[i]))
	}); err != nil {
		return fmt.Errorf("push server: %w", err)
	}
	subEl := time.Since(t0)
	complete := rcv.wait(ctx, 60*time.Second)
	el := time.Duration(rcv.last.Load() - t0.UnixNano())
	got := rcv.count.Load()
	cpu := m.table("push server, backlog", got)
	backlogCPU := cpu
	s.CPU = append(s.CPU, cpu)
	if !complete {
		s.Note("Push server, backlog: only %d of %d messages arrived within 60 s.", got, total)
	}
	s.Add("push_backlog_msgs_per_s", fmt.Sprintf("push server: waiting messages delivered at QoS 1 to %s clients that subscribe", thousands(float64(clients))), perSecond(got, el), "msgs/s", nil)
	s.Explain(cpu.Run)
	addCPUPerMsg(s, "push_backlog_cpu_us", "push server, backlog", cpu, p.Name)
	st := statsOf(subs)
	s.Note("Push server, backlog: %d messages put in %s while the clients were connected but not subscribed; the SUBSCRIBEs took %s; the last message arrived %s after the first SUBSCRIBE; %d duplicates; the clients received %s.",
		total, putEl.Round(time.Millisecond), subEl.Round(time.Millisecond), el.Round(time.Millisecond), rcv.dups.Load(), st)
	b.logf("push server backlog: %.0f msgs/s", perSecond(got, el))
	if err := mailboxesEmpty(ctx, s, store, ids, "backlog"); err != nil {
		return err
	}

	// Live: the clients are subscribed, the mailboxes are filled; the
	// push server streams while the Puts go on.
	run = 2
	rcv = newReceiver(run, clients, per)
	cur.Store(rcv)
	sleepCtx(ctx, 500*time.Millisecond)
	profSecs := 3
	if b.Quick {
		profSecs = 1
	}
	prof := startProfile(ctx, b.metricsAddr[p], b.bins["pushserver"], filepath.Join(b.RunDir, "push", "pushserver-live.pprof"), profSecs)
	before, beforeErr := scrapeCounters(ctx, b.metricsAddr[p], pushPathCounters...)
	m.reset()
	t0 = time.Now()
	if err := parallel(ctx, putters, total, put); err != nil {
		return fmt.Errorf("cannot fill the mailboxes: %w", err)
	}
	putEl = time.Since(t0)
	complete = rcv.wait(ctx, 60*time.Second)
	after, afterErr := scrapeCounters(ctx, b.metricsAddr[p], pushPathCounters...)
	el = time.Duration(rcv.last.Load() - t0.UnixNano())
	got = rcv.count.Load()
	cpu = m.table("push server, live", got)
	s.CPU = append(s.CPU, cpu)
	if !complete {
		s.Note("Push server, live: only %d of %d messages arrived within 60 s.", got, total)
	}
	rate := perSecond(got, el)
	s.Add("push_msgs_per_s", fmt.Sprintf("push server: messages delivered at QoS 1 to %s subscribed clients while their mailboxes are filled", thousands(float64(clients))), rate, "msgs/s", nil)
	s.Explain(cpu.Run)
	addCPUPerMsg(s, "push_live_cpu_us", "push server, live", cpu, p.Name)
	s.Latencies = append(s.Latencies, LatencyRow{"push server, live: mailbox.Put → client receives", rcv.lat.Summary()})
	s.Note("Push server, live: the last of %d messages arrived %s after the first Put; the Puts took %s; %d duplicates, %d unparsable, %d redeliveries of backlog messages; the clients received %s.",
		got, el.Round(time.Millisecond), putEl.Round(time.Millisecond), rcv.dups.Load(), rcv.bad.Load(), rcv.stale.Load(), statsOf(subs).minus(st))
	if err := errors.Join(beforeErr, afterErr); err != nil {
		s.Note("Push server, live: no delivery counters: %v.", err)
	} else {
		d := func(name string) float64 { return after[name] - before[name] }
		s.Note("Push server, live: of %.0f PUBLISHes, %.0f were sent as their wake-up carried them, without a mailbox read (gw_push_carried_total); %.0f mailbox reads (gw_push_mailbox_reads_total); %.0f entries acknowledged in Redis by the time the last message arrived (gw_push_acks_total).",
			d("gw_push_deliveries_total"), d("gw_push_carried_total"), d("gw_push_mailbox_reads_total"), d("gw_push_acks_total"))
	}
	if flat, cum, err := prof.summary(ctx, 12); err != nil {
		s.Note("Push server, live: %v.", err)
	} else {
		where := fmt.Sprintf("CPU profile of %s over the first %d s of the live run (its /debug/pprof/profile; %s): by own CPU (flat), %s. The gateway's own functions by CPU with their callees (cum): %s.", p.Name, profSecs, filepath.Join(b.RunDir, "push", "pushserver-live.pprof"), flat, cum)
		s.Note("%s", where)
		s.SetWhere("push_vs_mosquitto", where)
	}
	if calls := redisCallsCompared(backlogCPU, cpu); calls != "" {
		s.Note("%s", calls)
		s.SetWhere("push_vs_mosquitto", calls+" "+s.Where["push_vs_mosquitto"])
	}
	if putEl > el*9/10 {
		s.Note("Push server, live: the Puts ended close to the last delivery, so the filling side (Redis scripts run by the bench, sharing the CPUs) bounds this figure as much as the push server; the backlog figure leaves it out.")
	}
	b.logf("push server live: %.0f msgs/s", rate)
	if err := mailboxesEmpty(ctx, s, store, ids, "live"); err != nil {
		return err
	}
	if w := logField(p.Log, "push server listening", "inflight"); w != "" {
		s.Note("Push server: at most %s QoS 1 messages in flight to a session (its log: inflight); Mosquitto runs with its configuration's defaults (max_inflight_messages 20, max_queued_messages 1,000 per client, unless /etc/mosquitto says otherwise).", w)
	}
	s.Notes = append(s.Notes, logProblems(p)...)
	return nil
}

// mailboxesEmpty notes entries left in the mailboxes once every message
// was received (each should go at its PUBACK): how many, and how long
// they took to go (at most 10 s).
func mailboxesEmpty(ctx context.Context, s *Section, store *mailbox.Store, ids []string, run string) error {
	count := func() (int64, error) {
		var left int64
		for _, id := range ids {
			n, err := store.Len(ctx, id)
			if err != nil {
				return 0, err
			}
			left += n
		}
		return left, nil
	}
	t0 := time.Now()
	first, err := count()
	if err != nil || first == 0 {
		return err
	}
	left := first
	for time.Since(t0) < 10*time.Second && left > 0 && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
		if left, err = count(); err != nil {
			return err
		}
	}
	if left == 0 {
		s.Note("Push server, %s: %d entries were still in the mailboxes when the last message had been received; they were gone %s later (an entry goes at its PUBACK).", run, first, time.Since(t0).Round(100*time.Millisecond))
	} else {
		s.Note("Push server, %s: %d entries were still in the mailboxes when the last message had been received, and %d after 10 s more (an entry goes at its PUBACK).", run, first, left)
	}
	return nil
}

func pushMosquitto(ctx context.Context, b *Bench, s *Section, ns string, clients, per int) error {
	c, err := net.DialTimeout("tcp", mosquittoAddr, 2*time.Second)
	if err != nil {
		return skip("nothing listens on %s (install mosquitto for the comparison)", mosquittoAddr)
	}
	c.Close()
	rcv := newReceiver(0, clients, per)
	// The push server's topics are clients/pc-C/results/dev-D; these
	// are as long, under a prefix of this run instead of "clients".
	prefix := strconv.FormatInt(time.Now().UnixNano()%(36*36*36*36*36*36*36), 36)
	prefix = strings.Repeat("x", len("clients")-len(prefix)) + prefix
	topic := func(c, j int) string {
		return prefix + "/pc-" + strconv.Itoa(c) + "/results/dev-" + strconv.Itoa(j%100)
	}
	t0 := time.Now()
	subs, err := connectAll(ctx, clients, 64, func(i int) (*leanClient, error) {
		c, err := leanConnect(mosquittoAddr, ns+"-pc-"+strconv.Itoa(i), "", "", rcv.handle)
		if err != nil {
			return nil, err
		}
		if err := c.Subscribe(prefix + "/pc-" + strconv.Itoa(i) + "/results/+"); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}, closeAll)
	if err != nil {
		return err
	}
	defer closeAll(subs)
	const publishers, window = 8, 1024
	s.Note("Mosquitto: %d clients connected and subscribed in %s; %d publisher connections (the bench's lean MQTT 3.1.1 publishers: PUBLISHes written in batches, at most %d awaiting their PUBACK on each) publish at QoS 1.", clients, time.Since(t0).Round(time.Millisecond), publishers, window)
	sleepCtx(ctx, 500*time.Millisecond)

	srcs := []cpuSource{}
	if pid := listenerPID(1883); pid > 0 {
		srcs = append(srcs, cpuSource{name: "mosquitto", cpu: func() time.Duration { return gwproc.ProcessCPU(pid) }})
	}
	self := b.brokers(ctx)
	srcs = append(srcs, self[len(self)-1]) // the bench itself
	m := b.newMeter(srcs...)
	total := clients * per
	t0 = time.Now()
	var pubErrs atomic.Int64
	pubDone := make(chan time.Duration, 1)
	deadline := time.Now().Add(60 * time.Second)
	go func() {
		_ = parallel(ctx, publishers, publishers, func(k int) error {
			n := (total - k + publishers - 1) / publishers
			err := leanPublish(ctx, mosquittoAddr, ns+"-pub-"+strconv.Itoa(k), n, window, func(i int) (string, []byte) {
				n := k + i*publishers
				j, c := n/clients, n%clients
				return topic(c, j), pushPayload(0, c, j)
			}, deadline)
			if err != nil {
				pubErrs.Add(1)
				b.logf("mosquitto publisher %d: %v", k, err)
			}
			return nil
		})
		pubDone <- time.Since(t0)
	}()
	complete := rcv.wait(ctx, 90*time.Second)
	pd := <-pubDone
	el := time.Duration(rcv.last.Load() - t0.UnixNano())
	got := rcv.count.Load()
	cpu := m.table("Mosquitto", got)
	s.CPU = append(s.CPU, cpu)
	if !complete {
		s.Note("Mosquitto: only %d of %d messages arrived within 90 s.", got, total)
	}
	rate := perSecond(got, el)
	s.Add("mosquitto_msgs_per_s", fmt.Sprintf("Mosquitto: messages delivered at QoS 1 to %s clients", thousands(float64(clients))), rate, "msgs/s", nil)
	s.Explain(cpu.Run)
	addCPUPerMsg(s, "mosquitto_cpu_us", "Mosquitto", cpu, "mosquitto")
	s.Latencies = append(s.Latencies, LatencyRow{"Mosquitto: publish → client receives", rcv.lat.Summary()})
	s.Note("Mosquitto: the last of %d messages arrived %s after the first publish; the publishes were acknowledged after %s; %d duplicates, %d publishers that failed; the clients received %s.",
		got, el.Round(time.Millisecond), pd.Round(time.Millisecond), rcv.dups.Load(), pubErrs.Load(), statsOf(subs))
	b.logf("mosquitto: %.0f msgs/s", rate)
	return nil
}

// addCPUPerMsg adds the CPU per delivered message of process (a row of
// cpu) as figure key, and, when cpu has a redis row and the process is
// not Mosquitto, the same with Redis's added: the push server keeps its
// state there, Mosquitto in its own memory.
func addCPUPerMsg(s *Section, key, run string, cpu CPUTable, process string) {
	var own, redis float64
	found := false
	for _, r := range cpu.Rows {
		switch r.Process {
		case process:
			own, found = r.PerMsgUS, true
		case "redis":
			redis = r.PerMsgUS
		}
	}
	if !found || cpu.Messages == 0 {
		return
	}
	s.Add(key, fmt.Sprintf("%s: CPU of %s per delivered message", run, process), own, "µs", nil)
	s.Explain(cpu.Run)
	if process != "mosquitto" {
		s.Add(key+"_with_redis", fmt.Sprintf("%s: CPU of %s and Redis per delivered message", run, process), own+redis, "µs", nil)
		s.Explain(cpu.Run)
	}
}

// pushRatios adds the push server's figures over Mosquitto's: delivery
// rates from a backlog and live (the targets) and CPU per
// delivered message.
func pushRatios(s *Section) {
	mq, ok := s.Figure("mosquitto_msgs_per_s")
	if !ok || mq.Value <= 0 {
		return
	}
	if gw, ok := s.Figure("push_backlog_msgs_per_s"); ok {
		s.Add("push_backlog_vs_mosquitto", "push server from a backlog / Mosquitto, messages delivered per second", gw.Value/mq.Value, "×", AtLeast(1.0))
		s.Explain("push server, backlog")
	}
	if gw, ok := s.Figure("push_msgs_per_s"); ok {
		s.Add("push_vs_mosquitto", "push server live (while the mailboxes fill) / Mosquitto, messages delivered per second", gw.Value/mq.Value, "×", AtLeast(0.5))
		s.Explain("push server, live")
	}
	if mc, ok := s.Figure("mosquitto_cpu_us"); ok && mc.Value > 0 {
		for _, run := range []string{"backlog", "live"} {
			if gc, ok := s.Figure("push_" + run + "_cpu_us"); ok {
				s.Add("push_"+run+"_cpu_vs_mosquitto", fmt.Sprintf("push server CPU per delivered message, %s / Mosquitto's", run), gc.Value/mc.Value, "×", nil)
			}
		}
	}
}

// redisCallsCompared compares the Redis calls per delivered message of
// the backlog and live runs (INFO commandstats, the bench's Puts included
// in the live run): where the live path's extra round trips go.
func redisCallsCompared(backlog, live CPUTable) string {
	if backlog.RedisCallsPerMsg == 0 || live.RedisCallsPerMsg == 0 {
		return ""
	}
	top := func(t CPUTable) string {
		rows := append([]RedisCmdRow(nil), t.Redis...)
		sort.Slice(rows, func(i, j int) bool { return rows[i].PerMsg > rows[j].PerMsg })
		var parts []string
		for _, r := range rows[:min(5, len(rows))] {
			parts = append(parts, fmt.Sprintf("%s %.2f", strings.ToUpper(r.Cmd), r.PerMsg))
		}
		return strings.Join(parts, ", ")
	}
	return fmt.Sprintf("Redis calls per delivered message: from a backlog %.2f (%s); live %.2f (%s; the bench's mailbox.Put included).",
		backlog.RedisCallsPerMsg, top(backlog), live.RedisCallsPerMsg, top(live))
}

// pushPathCounters are the push server's counters of its delivery path
// that the push section reports for the live run.
var pushPathCounters = []string{"gw_push_deliveries_total", "gw_push_carried_total", "gw_push_mailbox_reads_total", "gw_push_acks_total"}

// scrapeCounters reads the named counters (without labels) from a
// process's Prometheus endpoint at addr; a counter it does not find is
// an error.
func scrapeCounters(ctx context.Context, addr string, names ...string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("http://%s/metrics answered %s", addr, resp.Status)
	}
	out := make(map[string]float64, len(names))
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || !slices.Contains(names, name) {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, name := range names {
		if _, ok := out[name]; !ok {
			return nil, fmt.Errorf("no %s at http://%s/metrics", name, addr)
		}
	}
	return out, nil
}
