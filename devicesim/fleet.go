package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/gateway/internal/auth"
)

// FleetOptions configure a simulated fleet.
type FleetOptions struct {
	Devices int
	Prefix  string
	Behaviour
	Churn    float64       // disconnections per second across the fleet
	Offline  time.Duration // how long a churned device stays away
	Duration time.Duration // 0: until interrupted
	Progress bool
	JSON     bool
	Connect  int // connection attempts in flight at once while starting
	// HTTP makes the devices poll over HTTP (sleepy devices) instead of
	// holding MQTT sessions; Switch > 0 makes them alternate between MQTT
	// and HTTP every Switch (starting with MQTT).
	HTTP   bool
	Poll   HTTPChannel
	Switch time.Duration
	// RecordAnswers keeps when each command was answered (Stats.Answers):
	// for bounded runs only (it grows with every command).
	RecordAnswers bool
}

func fleetCmd(ctx context.Context, g *globals) *cobra.Command {
	var o FleetOptions
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Simulate N devices, each its own MQTT session with the push server that owns it",
		Long: `Simulate devices dev-0 … dev-{N-1}. Built-in methods: ping, echo (returns its
params), get_state, set_state (merges an object into the state), sleep ({"ms":N}),
reboot (answers, then goes offline for --reboot). Unknown methods answer -32601.
The seq method returns {"n": N, "params": …}, N counting the commands the device
received (load --lane checks lane order with it).
Devices deduplicate by the id they receive: a redelivered command is answered
again, not executed again.

With --http the devices are sleepy: they hold no MQTT session but wake, poll
GET /v1/devices/{d}/commands/next (acknowledging the previous poll's commands)
until nothing waits, answer with POST /v1/devices/{d}/responses, and sleep
--wake. With --switch D they alternate: MQTT for D, then HTTP polls for D, …`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runFleet(ctx, g, o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Devices, "devices", 100, "number of devices")
	f.StringVar(&o.Prefix, "prefix", "dev-", "device ID prefix")
	f.DurationVar(&o.Latency, "latency", 0, "fixed answer latency")
	f.DurationVar(&o.Jitter, "jitter", 0, "uniform random extra answer latency")
	f.Float64Var(&o.FailRate, "fail-rate", 0, "share of commands answered with an error (0..1)")
	f.Float64Var(&o.DropRate, "drop-rate", 0, "share of commands never answered (0..1)")
	f.IntVar(&o.RefuseFirst, "refuse-first", 0, "refuse the first N attempts of every command with the MQTT 5 PUBACK 0x87 (with --retry-on rejected the gateway retries them)")
	f.IntVar(&o.FailFirst, "fail-first", 0, "answer the first N attempts of every command with an error (attempt n's id ends in #n; with --retry-on device_error the gateway retries them)")
	f.DurationVar(&o.Reboot, "reboot", 3*time.Second, "how long the reboot method keeps a device offline")
	f.Float64Var(&o.Churn, "churn", 0, "disconnections per second across the fleet")
	f.DurationVar(&o.Offline, "offline", 2*time.Second, "how long a churned device stays offline")
	f.DurationVar(&o.Duration, "duration", 0, "stop after this long (0: until interrupted)")
	f.BoolVar(&o.Progress, "progress", true, "print a live progress line to stderr (only when it is a terminal)")
	f.BoolVar(&o.JSON, "json", false, "print the totals as JSON")
	f.IntVar(&o.Connect, "connect-parallel", 64, "connection attempts in flight while starting")
	f.BoolVar(&o.HTTP, "http", false, "devices poll over HTTP (sleepy devices) instead of holding MQTT sessions")
	f.DurationVar(&o.Poll.Wake, "wake", 10*time.Second, "with --http or --switch: how long a device sleeps after a poll that found nothing")
	f.DurationVar(&o.Poll.Wait, "poll-wait", 0, "with --http or --switch: long-poll wait of each poll (0: answer at once)")
	f.IntVar(&o.Poll.Max, "poll-max", 10, "with --http or --switch: commands per poll (1 to 100)")
	f.DurationVar(&o.Switch, "switch", 0, "alternate each device between MQTT and HTTP polls every this long (0: no)")
	return cmd
}

// Fleet is a running set of simulated devices.
type Fleet struct {
	Devices []*Device
	Stats   FleetStats
}

// StartFleet connects o.Devices devices in the background; they run until
// ctx is done. Use Wait to wait for them to stop.
func StartFleet(ctx context.Context, g *globals, o FleetOptions, wg *sync.WaitGroup) (*Fleet, error) {
	secret, err := g.secret()
	if err != nil {
		return nil, err
	}
	if o.Devices < 1 {
		return nil, fmt.Errorf("--devices must be at least 1")
	}
	if o.FailFirst < 0 || o.RefuseFirst < 0 {
		return nil, fmt.Errorf("--fail-first and --refuse-first must not be negative")
	}
	if o.FailRate < 0 || o.DropRate < 0 || o.FailRate+o.DropRate > 1 {
		return nil, fmt.Errorf("--fail-rate and --drop-rate must be in 0..1 and sum to at most 1")
	}
	if o.Switch < 0 || o.Poll.Wake < 0 || o.Poll.Wait < 0 || o.Poll.Max < 0 || o.Poll.Max > 100 {
		return nil, fmt.Errorf("--switch, --wake and --poll-wait must not be negative, --poll-max must be 0 to 100")
	}
	api := NewAPI(g.API)
	fl := &Fleet{}
	if o.RecordAnswers {
		fl.Stats.Answers = &AnswerLog{}
	}
	sem := make(chan struct{}, max(o.Connect, 1))
	for i := 0; i < o.Devices; i++ {
		id := fmt.Sprintf("%s%d", o.Prefix, i)
		tok, err := auth.Mint(secret, id, auth.RoleDevice, nil, 30*24*time.Hour)
		if err != nil {
			return nil, err
		}
		d := NewDevice(id, &Session{Identity: id, Token: tok, API: api, Log: g.log}, o.Behaviour, &fl.Stats)
		if o.HTTP || o.Switch > 0 {
			poll := o.Poll
			d.HTTP, d.Switch = &poll, o.Switch
		}
		fl.Devices = append(fl.Devices, d)
		wg.Add(1)
		go func() {
			defer wg.Done()
			select { // bound the connection storm at start
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			go func() {
				select {
				case <-d.Ready():
				case <-time.After(10 * time.Second):
				case <-ctx.Done():
				}
				<-sem
			}()
			d.Run(ctx)
		}()
	}
	if o.Churn > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fl.churn(ctx, o.Churn, o.Offline)
		}()
	}
	return fl, nil
}

func (fl *Fleet) churn(ctx context.Context, rate float64, offline time.Duration) {
	for ctx.Err() == nil {
		sleep(ctx, time.Duration(rand.ExpFloat64()/rate*float64(time.Second)))
		fl.Devices[rand.IntN(len(fl.Devices))].GoOffline(offline)
	}
}

// Online counts connected devices.
func (fl *Fleet) Online() int {
	n := 0
	for _, d := range fl.Devices {
		if d.Online() {
			n++
		}
	}
	return n
}

// WaitOnline waits until every device is connected or ctx is done.
func (fl *Fleet) WaitOnline(ctx context.Context) error {
	for _, d := range fl.Devices {
		select {
		case <-d.Ready():
		case <-ctx.Done():
			return fmt.Errorf("only %d of %d devices connected: %w", fl.Online(), len(fl.Devices), ctx.Err())
		}
	}
	return nil
}

// Totals is the fleet's summary.
type Totals struct {
	Devices    int   `json:"devices"`
	Online     int   `json:"online"`
	Received   int64 `json:"received"`
	Answered   int64 `json:"answered"`
	Failed     int64 `json:"failed"`
	Dropped    int64 `json:"dropped"`
	Duplicates int64 `json:"duplicates"`
	// RefusedCommands are commands refused with a PUBACK (--refuse-first).
	RefusedCommands int64 `json:"refused_commands"`
	Unknown         int64 `json:"unparsable"`
	PublishErrors   int64 `json:"publish_errors"`
	Connects        int64 `json:"connects"`
	Refusals        int64 `json:"refused_connects"`
	Polls           int64 `json:"http_polls"`
	PollErrors      int64 `json:"http_poll_errors"`
}

// Totals sums the fleet's counters.
func (fl *Fleet) Totals() Totals {
	t := Totals{Devices: len(fl.Devices), Online: fl.Online(),
		Received: fl.Stats.Received.Load(), Answered: fl.Stats.Answered.Load(), Failed: fl.Stats.Failed.Load(),
		Dropped: fl.Stats.Dropped.Load(), Duplicates: fl.Stats.Duplicates.Load(), Unknown: fl.Stats.Unknown.Load(),
		PublishErrors: fl.Stats.PublishErrors.Load(), Polls: fl.Stats.Polls.Load(), PollErrors: fl.Stats.PollErrors.Load(),
		RefusedCommands: fl.Stats.Refused.Load()}
	for _, d := range fl.Devices {
		t.Connects += d.Sess.Connects.Load()
		t.Refusals += d.Sess.Refusals.Load()
	}
	return t
}

func runFleet(ctx context.Context, g *globals, o FleetOptions) error {
	if o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	var wg sync.WaitGroup
	fl, err := StartFleet(ctx, g, o, &wg)
	if err != nil {
		return err
	}
	if o.Progress {
		stop := startProgress(ctx, g.stderr, func() string {
			t := fl.Totals()
			return fmt.Sprintf("devices online %d/%d  http polls %d  commands %d  answered %d  failed %d  dropped %d  duplicates %d",
				t.Online, t.Devices, t.Polls, t.Received, t.Answered, t.Failed, t.Dropped, t.Duplicates)
		})
		defer stop()
	}
	<-ctx.Done()
	wg.Wait()
	t := fl.Totals()
	if o.JSON {
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(t)
	}
	fmt.Fprintf(g.stdout, "\ndevices %d  connects %d  refused %d  http polls %d (errors %d)\ncommands %d  answered %d  failed %d  dropped %d  duplicates %d  unparsable %d  publish errors %d\n",
		t.Devices, t.Connects, t.Refusals, t.Polls, t.PollErrors, t.Received, t.Answered, t.Failed, t.Dropped, t.Duplicates, t.Unknown, t.PublishErrors)
	return nil
}

// startProgress rewrites one status line, line(), on w every second
// until ctx is done or stop is called (which returns once the line is
// ended with a newline), when w is a terminal; otherwise it writes
// nothing, ever (escape codes in a file or a pipe are noise), and stop
// does nothing.
func startProgress(ctx context.Context, w io.Writer, line func() string) (stop func()) {
	if !isTerminal(w) {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				fmt.Fprintln(w)
				return
			case <-t.C:
				fmt.Fprintf(w, "\r\033[K%s", line())
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}
