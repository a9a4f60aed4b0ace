package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/latency"
	"github.com/iotgw/gateway/protocol"
)

// LoadOptions configure a load run.
type LoadOptions struct {
	Clients      int
	ClientPrefix string
	Devices      int
	Prefix       string
	Rate         float64 // commands per second, open loop; 0: closed loop with Concurrency
	Concurrency  int
	Duration     time.Duration
	// Count, when above 0 (open loop only), sends exactly this many
	// commands at Rate, however long that takes; Duration is ignored.
	Count       int64
	Method      string
	Timeout     time.Duration
	ExpiresIn   time.Duration
	Drain       time.Duration // longest wait for quiescence after the run
	MaxInflight int
	JSON        bool
	Progress    bool
	// OneWay sends one-way commands (?one_way=true): their result is the
	// PUBACK's, {"one_way":true,"delivered":true}.
	OneWay bool
	// Lane sends every command in this ordered lane of its device; the
	// commands to one device are then posted one at a time, so that the
	// order of their 202s is their acceptance order, and, with the seq
	// method, the report checks that each device received them in it.
	// LaneMode "puback" moves a lane on at each command's delivery.
	Lane, LaneMode string
	// GroupDevices > 0 sends one group command to the first GroupDevices
	// devices instead (RunGroupLoad), at GroupRate children per second
	// (0: all at once), stopping after AbortAfter failures.
	GroupDevices int
	GroupRate    float64
	AbortAfter   string
}

func loadCmd(ctx context.Context, g *globals) *cobra.Command {
	var o LoadOptions
	cmd := &cobra.Command{
		Use:   "load",
		Short: "Send commands from M clients to a fleet at a fixed rate or concurrency, and report latency and loss",
		Long: `M simulated clients, each subscribed to its results over MQTT, send commands to
devices {prefix}0 … {prefix}{N-1} (run "devicesim fleet" for them). With --rate the
load is open loop: commands are scheduled at fixed times and the round trip is
measured from the scheduled time, so a slow gateway cannot hide its delay
(no coordinated omission). With --rate 0 each of --concurrency workers sends the
next command as soon as the previous one was answered by the API.

After the run it waits (at most --drain) until every accepted command has its
result, then reports: accepted (202), rejected (4xx, and 503 with data.reason
"overloaded" or "not_accepted": certainly not queued), indeterminate (timeouts,
503 "outcome_unknown", other 5xx), received once, duplicated, lost (accepted, never received), unexpected
(received, never sent) and wrong (an echo result that is not its params, or an
error no device or gateway rule explains).

A progress line (the time elapsed of --duration, then of the wait for the
results, and the counts so far) is rewritten on stderr each second while it
runs, only when stderr is a terminal (and --progress is not false). The
report gives the sending time (duration_s) and the whole run's (elapsed_s).

With --oneway the commands are one-way: the device's PUBACK is their success.
With --lane NAME every command goes into that ordered lane of its device; the
commands to one device are posted one at a time (so their 202s come in
acceptance order) with the seq method (the default then), whose result tells
the device's receive count: the report counts out_of_order, a command a device
received before one accepted earlier in its lane (an expired command in the
middle is skipped, not a fault).

With --group-devices N it sends one group command (POST /v1/commands) to
devices {prefix}0 … {prefix}{N-1} instead, prints the group's progress
each second (with --progress) and reports the time from the 202 to the
last child's result over MQTT and the children per second.

Exit status: 0 when nothing was lost, unexpected, wrong or out of order; 1 when something
was (the report is printed first, then a line naming the counts), or when
the run could not be made.`,
		Example: `  devicesim load --clients 10 --devices 100 --prefix dev- --rate 500 --duration 30s --method echo --json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Lane != "" && !cmd.Flags().Changed("method") {
				o.Method = "seq"
			}
			if o.GroupDevices > 0 {
				wait := o.Drain
				if wait == 0 {
					wait = o.Timeout + time.Minute
					if o.GroupRate > 0 {
						wait += time.Duration(float64(o.GroupDevices) / o.GroupRate * float64(time.Second))
					}
				}
				rep, err := RunGroupLoad(ctx, g, GroupLoadOptions{Devices: o.GroupDevices, Prefix: o.Prefix,
					Client: o.ClientPrefix + "group", Method: o.Method, Rate: o.GroupRate, AbortAfter: o.AbortAfter,
					Timeout: o.Timeout, ExpiresIn: o.ExpiresIn, Wait: wait, Progress: o.Progress})
				if err != nil {
					return err
				}
				if o.JSON {
					enc := json.NewEncoder(g.stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(rep)
				}
				rep.writeTable(g.stdout)
				if rep.Lost > 0 {
					return fmt.Errorf("%d children's results lost", rep.Lost)
				}
				return nil
			}
			rep, err := RunLoad(ctx, g, o)
			if err != nil {
				return err
			}
			if o.JSON {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				rep.WriteTable(g.stdout)
			}
			return rep.Failure()
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Clients, "clients", 10, "number of simulated clients")
	f.StringVar(&o.ClientPrefix, "client-prefix", "load-", "client identity prefix")
	f.IntVar(&o.Devices, "devices", 100, "number of devices (run devicesim fleet with the same --devices and --prefix)")
	f.StringVar(&o.Prefix, "prefix", "dev-", "device ID prefix")
	f.Float64Var(&o.Rate, "rate", 100, "commands per second (open loop); 0 for closed loop with --concurrency")
	f.IntVar(&o.Concurrency, "concurrency", 64, "closed-loop workers when --rate is 0")
	f.DurationVar(&o.Duration, "duration", 10*time.Second, "how long to send")
	f.Int64Var(&o.Count, "count", 0, "send exactly this many commands at --rate, however long it takes (instead of --duration)")
	f.StringVar(&o.Method, "method", "echo", "JSON-RPC method")
	f.DurationVar(&o.Timeout, "timeout", 10*time.Second, "the device must answer within this after delivery")
	f.DurationVar(&o.ExpiresIn, "expires-in", time.Minute, "the command must be delivered within this")
	f.DurationVar(&o.Drain, "drain", 0, "longest wait for all results after the run (default: timeout + 20s)")
	f.IntVar(&o.MaxInflight, "max-inflight", 2048, "most HTTP requests in flight at once")
	f.BoolVar(&o.JSON, "json", false, "print the report as JSON")
	f.BoolVar(&o.Progress, "progress", true, "print a live progress line to stderr (only when it is a terminal)")
	f.BoolVar(&o.OneWay, "oneway", false, "one-way commands: the device's PUBACK is their success (no --timeout)")
	f.StringVar(&o.Lane, "lane", "", "send every command in this ordered lane of its device and check the order (method seq)")
	f.StringVar(&o.LaneMode, "lane-mode", "", "with --lane: final (default: the next command after the previous one ended) or puback (after its delivery)")
	f.IntVar(&o.GroupDevices, "group-devices", 0, "send one group command to devices {prefix}0 … instead, print its progress each second and report the time from 202 to the last child's result")
	f.Float64Var(&o.GroupRate, "group-rate", 0, "with --group-devices: children released per second (0: all at once)")
	f.StringVar(&o.AbortAfter, "abort-after", "", "with --group-devices: stop after this many failed children, or this percentage (5%)")
	return cmd
}

// LoadReport is the outcome of a load run. Its JSON keys are an interface
// that outside scripts rely on.
type LoadReport struct {
	Clients    int     `json:"clients"`
	Devices    int     `json:"devices"`
	Method     string  `json:"method"`
	TargetRate float64 `json:"target_rate_per_s"`
	DurationS  float64 `json:"duration_s"` // sending
	// ElapsedS is the whole run: sending, then waiting for the results
	// (at most --drain).
	ElapsedS      float64 `json:"elapsed_s"`
	Sent          int64   `json:"sent"`
	Accepted      int64   `json:"accepted"`
	Rejected      int64   `json:"rejected"`
	Indeterminate int64   `json:"indeterminate"`
	Received      int64   `json:"received"`
	Duplicated    int64   `json:"duplicated"`
	Lost          int64   `json:"lost"`
	Unexpected    int64   `json:"unexpected"`
	Wrong         int64   `json:"wrong"`
	// Conflicting counts commands whose client got two different
	// results (a copy of the same result is a duplicate, not a conflict).
	Conflicting int64 `json:"conflicting"`
	// OneWay and Lane repeat the options; OutOfOrder counts commands of
	// a lane that their device received before one accepted earlier
	// (checked with the seq method only).
	OneWay     bool   `json:"one_way,omitempty"`
	Lane       string `json:"lane,omitempty"`
	OutOfOrder int64  `json:"out_of_order"`
	// RejectedWithResult counts commands the API said for sure it had not
	// accepted (NotAccepted) whose client got a result all the same.
	RejectedWithResult int64               `json:"rejected_with_result"`
	Outcomes           Outcomes            `json:"outcomes"`
	Throughput         float64             `json:"throughput_per_s"`
	AcceptLatency      latency.Percentiles `json:"accept_latency_ms"`
	RoundTrip          latency.Percentiles `json:"roundtrip_latency_ms"`
	RejectedBy         map[int]int64       `json:"rejected_by_status,omitempty"`
	Errors             []string            `json:"sample_errors,omitempty"`
	// Suspects names (client, id, device) of commands that were lost,
	// got two different results or a result after a rejection, for a
	// failing test to look for in the gateway's logs. Not in the JSON.
	Suspects []Suspect `json:"-"`
	// Unsettled names commands whose answer was neither 202 nor a sure
	// rejection and whose client got no result (at most 500).
	Unsettled []Suspect `json:"-"`
	// NoResult names every accepted command whose client got no result.
	NoResult []Suspect `json:"-"`
	// Finals holds, for every accepted command that got a result, the
	// first result its client got (as JSON in Why), for a test to
	// compare with what the gateway's claim says (GET).
	Finals []Suspect `json:"-"`
}

// Suspect is one command that broke the ledger's rules, and why.
type Suspect struct {
	Client, ID, Device, Why string
}

// Outcomes counts the first result of each command by kind.
type Outcomes struct {
	Succeeded   int64 `json:"succeeded"`
	DeviceError int64 `json:"device_error"`
	Timeout     int64 `json:"timeout"`
	Expired     int64 `json:"expired"`
	OtherGW     int64 `json:"other_gateway_error"`
}

type cmdRecord struct {
	client, id, device string
	scheduled          time.Time
	params             []byte
	state              int32 // 0 sending, 1 accepted, 2 rejected, 3 indeterminate
	status             int   // the API's HTTP status (0: no answer)
	results            int
	first              []byte // the first result, as JSON
	conflict           bool
	accepted           int64 // with a lane: its place among its device's 202s (from 1)
	n                  int64 // with the seq method: its place among what its device received
}

type ledger struct {
	mu       sync.Mutex
	recs     map[string]*cmdRecord
	method   string
	oneWay   bool
	rep      *LoadReport
	rtt      latency.Recorder
	accepted latency.Recorder
	pending  atomic.Int64 // accepted and not yet received
	errs     []string
}

func (l *ledger) onResult(client string, r Result) {
	id, err := protocol.ParseID(r.Resp.ID)
	l.mu.Lock()
	defer l.mu.Unlock()
	var rec *cmdRecord
	if err == nil {
		rec = l.recs[client+"\x00"+id.Key()]
	}
	if rec == nil {
		l.rep.Unexpected++
		return
	}
	rec.results++
	body, _ := json.Marshal(r.Resp)
	if rec.results > 1 {
		l.rep.Duplicated++
		if !rec.conflict && !sameJSON(body, rec.first) {
			rec.conflict = true
			l.rep.Conflicting++
			l.sample(fmt.Sprintf("%s %s got two different results: %s, then %s", client, rec.id, rec.first, body))
		}
		return
	}
	rec.first = body
	l.rep.Received++
	if rec.state == 1 {
		l.pending.Add(-1)
	}
	l.rtt.Add(r.At.Sub(rec.scheduled))
	switch e := r.Resp.Error; {
	case e == nil && l.oneWay:
		l.rep.Outcomes.Succeeded++
		if !sameJSON(r.Resp.Result, []byte(protocol.OneWayResult)) {
			l.rep.Wrong++
			l.sample(fmt.Sprintf("one-way result %s, want %s", r.Resp.Result, protocol.OneWayResult))
		}
	case e == nil && l.method == "seq":
		l.rep.Outcomes.Succeeded++
		var v struct {
			N      int64           `json:"n"`
			Params json.RawMessage `json:"params"`
		}
		if json.Unmarshal(r.Resp.Result, &v) != nil || v.N < 1 || !sameJSON(v.Params, rec.params) {
			l.rep.Wrong++
			l.sample(fmt.Sprintf("seq result %s, want n ≥ 1 and params %s", r.Resp.Result, rec.params))
		}
		rec.n = v.N
	case e == nil:
		l.rep.Outcomes.Succeeded++
		if l.method == "echo" && !sameJSON(r.Resp.Result, rec.params) {
			l.rep.Wrong++
			l.sample(fmt.Sprintf("echo result %s, want %s", r.Resp.Result, rec.params))
		}
	case e.Source() == protocol.SourceGateway && e.Code == protocol.CodeTimeout:
		l.rep.Outcomes.Timeout++
	case e.Source() == protocol.SourceGateway && e.Code == protocol.CodeExpired:
		l.rep.Outcomes.Expired++
	case e.Source() == protocol.SourceGateway:
		l.rep.Outcomes.OtherGW++
	case e.Code == SimulatedFailureCode:
		l.rep.Outcomes.DeviceError++
	default:
		l.rep.Outcomes.DeviceError++
		if l.method == "echo" || l.method == "seq" {
			l.rep.Wrong++
			l.sample(fmt.Sprintf("unexplained device error %d %s", e.Code, e.Message))
		}
	}
}

func (l *ledger) sample(s string) {
	if len(l.errs) < 10 {
		l.errs = append(l.errs, s)
	}
}

func sameJSON(a, b []byte) bool {
	ca, err1 := protocol.CanonicalJSON(a)
	cb, err2 := protocol.CanonicalJSON(b)
	return err1 == nil && err2 == nil && bytes.Equal(ca, cb)
}

// RunLoad runs one load against a running gateway and fleet.
func RunLoad(ctx context.Context, g *globals, o LoadOptions) (*LoadReport, error) {
	secret, err := g.secret()
	if err != nil {
		return nil, err
	}
	if o.Count > 0 && o.Rate > 0 {
		o.Duration = time.Duration(float64(o.Count) / o.Rate * float64(time.Second))
	}
	if o.Clients < 1 || o.Devices < 1 || o.Duration <= 0 || o.Rate < 0 || (o.Rate == 0 && o.Concurrency < 1) || (o.Count > 0 && o.Rate == 0) {
		return nil, errors.New("need --clients ≥ 1, --devices ≥ 1, --duration > 0, and --rate > 0 or --concurrency ≥ 1 (--count needs --rate)")
	}
	if o.Lane != "" {
		if _, err := protocol.ParseLane(o.Lane); err != nil {
			return nil, fmt.Errorf("--lane: %w", err)
		}
	}
	if o.LaneMode != "" && (o.Lane == "" || o.LaneMode != "final" && o.LaneMode != protocol.LaneModePUBACK) {
		return nil, errors.New("--lane-mode is final or puback, with --lane")
	}
	if o.Drain == 0 {
		o.Drain = o.Timeout + 20*time.Second
	}
	api := NewAPI(g.API)
	rep := &LoadReport{Clients: o.Clients, Devices: o.Devices, Method: o.Method, TargetRate: o.Rate, RejectedBy: map[int]int64{},
		OneWay: o.OneWay, Lane: o.Lane}
	l := &ledger{recs: map[string]*cmdRecord{}, method: o.Method, oneWay: o.OneWay, rep: rep}
	// With a lane, the commands to one device are posted one at a time
	// (the device's lock) and numbered by their 202s.
	laneLocks := make([]sync.Mutex, o.Devices)
	laneAccepted := make([]int64, o.Devices)

	// Clients connect and subscribe before anything is sent.
	sessCtx, stopSessions := context.WithCancel(context.WithoutCancel(ctx))
	var sessWG sync.WaitGroup
	defer func() { stopSessions(); sessWG.Wait() }()
	clients := make([]string, o.Clients)
	tokens := make([]string, o.Clients)
	sessions := make([]*Session, o.Clients)
	for i := range clients {
		clients[i] = fmt.Sprintf("%s%d", o.ClientPrefix, i)
		tokens[i], err = auth.Mint(secret, clients[i], auth.RoleClient, []string{o.Prefix + "*"}, 24*time.Hour)
		if err != nil {
			return nil, err
		}
		c := clients[i]
		sessions[i] = NewClientSession(c, tokens[i], api, func(r Result) { l.onResult(c, r) })
		sessions[i].Log = g.log
		sessWG.Add(1)
		go func() { defer sessWG.Done(); sessions[i].Run(sessCtx, nil) }()
	}
	for _, s := range sessions {
		select {
		case <-s.Ready():
		case <-time.After(30 * time.Second):
			return nil, fmt.Errorf("client %s could not connect to its push server within 30s", s.Identity)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}

	runID := strconv.FormatInt(time.Now().UnixNano(), 36)
	var seq atomic.Int64
	sem := make(chan struct{}, max(o.MaxInflight, 1))
	var sendWG sync.WaitGroup
	send := func(scheduled time.Time) {
		n := seq.Add(1)
		ci := int(n) % o.Clients
		di := rand.IntN(o.Devices)
		device := o.Prefix + strconv.Itoa(di)
		id := runID + "-" + strconv.FormatInt(n, 10)
		params := []byte(`{"seq":` + strconv.FormatInt(n, 10) + `,"client":"` + clients[ci] + `"}`)
		body := []byte(`{"jsonrpc":"2.0","method":"` + o.Method + `","params":` + string(params) + `,"id":"` + id + `"}`)
		key := clients[ci] + "\x00" + id
		rec := &cmdRecord{client: clients[ci], id: id, device: device, scheduled: scheduled, params: params}
		l.mu.Lock()
		l.recs[key] = rec
		rep.Sent++
		l.mu.Unlock()
		if o.Lane != "" {
			laneLocks[di].Lock()
			defer laneLocks[di].Unlock()
		}
		start := time.Now()
		_, status, err := api.Send(ctx, tokens[ci], device, body,
			SendOptions{Timeout: o.Timeout, ExpiresIn: o.ExpiresIn, OneWay: o.OneWay, Lane: o.Lane, LaneMode: o.LaneMode})
		lat := time.Since(start)
		l.mu.Lock()
		defer l.mu.Unlock()
		rec.status = status
		switch {
		case err == nil:
			rec.state = 1
			laneAccepted[di]++
			rec.accepted = laneAccepted[di]
			rep.Accepted++
			l.accepted.Add(lat)
			if rec.results == 0 {
				l.pending.Add(1)
			}
		case notAccepted(err):
			rec.state = 2
			rep.Rejected++
			rep.RejectedBy[status]++
			l.sample(err.Error())
		default:
			rec.state = 3
			rep.Indeterminate++
			l.sample(err.Error())
		}
	}

	runCtx, stopRun := context.WithTimeout(ctx, o.Duration)
	if o.Count > 0 {
		runCtx, stopRun = context.WithCancel(ctx)
	}
	defer stopRun()
	began := time.Now()
	var sendingFor atomic.Int64 // how long sending took, once it is over
	if o.Progress {
		stopProg := startProgress(ctx, g.stderr, func() string {
			clock := loadClock(time.Since(began), o.Duration, time.Duration(sendingFor.Load()), o.Drain)
			l.mu.Lock()
			defer l.mu.Unlock()
			return fmt.Sprintf("%s  sent %d  accepted %d  rejected %d  indeterminate %d  received %d  waiting %d",
				clock, rep.Sent, rep.Accepted, rep.Rejected, rep.Indeterminate, rep.Received, l.pending.Load())
		})
		defer stopProg()
	}
	if o.Rate > 0 {
		interval := time.Duration(float64(time.Second) / o.Rate)
		for i := 0; ; i++ {
			at := began.Add(time.Duration(i) * interval)
			if o.Count > 0 && int64(i) >= o.Count || o.Count == 0 && at.Sub(began) >= o.Duration {
				break
			}
			if d := time.Until(at); d > 0 {
				sleep(runCtx, d)
			}
			if runCtx.Err() != nil {
				break
			}
			sem <- struct{}{}
			sendWG.Add(1)
			go func() { defer sendWG.Done(); defer func() { <-sem }(); send(at) }()
		}
	} else {
		for w := 0; w < o.Concurrency; w++ {
			sendWG.Add(1)
			go func() {
				defer sendWG.Done()
				for runCtx.Err() == nil {
					send(time.Now())
				}
			}()
		}
	}
	sendWG.Wait()
	sent := time.Since(began)
	sendingFor.Store(int64(sent))

	// Quiescence: every accepted command has a result, or the drain ends.
	deadline := time.Now().Add(o.Drain)
	for l.pending.Load() > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		sleep(ctx, 50*time.Millisecond)
	}
	sleep(ctx, 300*time.Millisecond) // let late duplicates show
	elapsed := time.Since(began)

	l.mu.Lock()
	defer l.mu.Unlock()
	for _, rec := range l.recs {
		why := ""
		switch {
		case rec.state == 1 && rec.results == 0:
			rep.Lost++
			why = "lost"
		case rec.state == 2 && rec.results > 0:
			rep.RejectedWithResult++
			why = fmt.Sprintf("answered %d (not accepted), then got a result %s", rec.status, rec.first)
		case rec.conflict:
			why = "two different results"
		case rec.state == 3 && rec.results == 0 && len(rep.Unsettled) < 500:
			rep.Unsettled = append(rep.Unsettled, Suspect{Client: rec.client, ID: rec.id, Device: rec.device,
				Why: fmt.Sprintf("answered %d", rec.status)})
		}
		switch {
		case rec.state == 1 && rec.results > 0:
			rep.Finals = append(rep.Finals, Suspect{Client: rec.client, ID: rec.id, Device: rec.device, Why: string(rec.first)})
		case rec.state == 1:
			rep.NoResult = append(rep.NoResult, Suspect{Client: rec.client, ID: rec.id, Device: rec.device, Why: "no result"})
		}
		if why != "" && len(rep.Suspects) < 50 {
			rep.Suspects = append(rep.Suspects, Suspect{Client: rec.client, ID: rec.id, Device: rec.device, Why: why})
		}
	}
	if o.Lane != "" && o.Method == "seq" && !o.OneWay {
		l.checkLaneOrder()
	}
	rep.DurationS = sent.Seconds()
	rep.ElapsedS = elapsed.Seconds()
	if elapsed > 0 {
		rep.Throughput = float64(rep.Received) / elapsed.Seconds()
	}
	rep.AcceptLatency = l.accepted.Summary()
	rep.RoundTrip = l.rtt.Summary()
	rep.Errors = l.errs
	if len(rep.RejectedBy) == 0 {
		rep.RejectedBy = nil
	}
	return rep, nil
}

// checkLaneOrder counts, per device, the lane's commands that the device
// received (seq's n) before one accepted earlier; commands without an
// answer (expired, timed out, failed) are skipped. l.mu is held.
func (l *ledger) checkLaneOrder() {
	byDevice := map[string][]*cmdRecord{}
	for _, rec := range l.recs {
		if rec.state == 1 && rec.n > 0 {
			byDevice[rec.device] = append(byDevice[rec.device], rec)
		}
	}
	for device, recs := range byDevice {
		slices.SortFunc(recs, func(a, b *cmdRecord) int { return cmp.Compare(a.accepted, b.accepted) })
		for i := 1; i < len(recs); i++ {
			if recs[i].n <= recs[i-1].n {
				l.rep.OutOfOrder++
				l.sample(fmt.Sprintf("%s received %s (accepted #%d) as its command %d, not after %s (accepted #%d) received as %d",
					device, recs[i].id, recs[i].accepted, recs[i].n, recs[i-1].id, recs[i-1].accepted, recs[i-1].n))
			}
		}
	}
}

// Failure returns an error naming the counts when anything was lost,
// unexpected, wrong or out of its lane's order, nil otherwise.
func (r *LoadReport) Failure() error {
	if r.Lost == 0 && r.Unexpected == 0 && r.Wrong == 0 && r.OutOfOrder == 0 {
		return nil
	}
	return fmt.Errorf("load: %d lost, %d unexpected, %d wrong, %d out of order", r.Lost, r.Unexpected, r.Wrong, r.OutOfOrder)
}

// loadClock is the time part of load's progress line: elapsed of the
// sending duration, then, once sending took sending, how long the wait
// for the results may still take (at most drain).
func loadClock(elapsed, duration, sending, drain time.Duration) string {
	sec := func(d time.Duration) time.Duration { return d.Truncate(time.Second) }
	if sending == 0 {
		return fmt.Sprintf("%s of %s", sec(elapsed), sec(duration))
	}
	left := max(sending+drain-elapsed, 0)
	return fmt.Sprintf("%s, sent for %s, waiting for results (at most %s more)", sec(elapsed), sec(sending), sec(left))
}

// notAccepted reports whether err is an answer saying for sure that the
// command was not accepted (APIError.NotAccepted).
func notAccepted(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.NotAccepted()
}
