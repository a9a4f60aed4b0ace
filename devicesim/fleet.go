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
Devices deduplicate by the id they receive: a redelivered command is answered
again, not executed again.`,
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
	f.DurationVar(&o.Reboot, "reboot", 3*time.Second, "how long the reboot method keeps a device offline")
	f.Float64Var(&o.Churn, "churn", 0, "disconnections per second across the fleet")
	f.DurationVar(&o.Offline, "offline", 2*time.Second, "how long a churned device stays offline")
	f.DurationVar(&o.Duration, "duration", 0, "stop after this long (0: until interrupted)")
	f.BoolVar(&o.Progress, "progress", true, "print a live progress line to stderr (only when it is a terminal)")
	f.BoolVar(&o.JSON, "json", false, "print the totals as JSON")
	f.IntVar(&o.Connect, "connect-parallel", 64, "connection attempts in flight while starting")
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
	if o.FailRate < 0 || o.DropRate < 0 || o.FailRate+o.DropRate > 1 {
		return nil, fmt.Errorf("--fail-rate and --drop-rate must be in 0..1 and sum to at most 1")
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
				case <-d.Sess.Ready():
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
		if d.Sess.Online() {
			n++
		}
	}
	return n
}

// WaitOnline waits until every device is connected or ctx is done.
func (fl *Fleet) WaitOnline(ctx context.Context) error {
	for _, d := range fl.Devices {
		select {
		case <-d.Sess.Ready():
		case <-ctx.Done():
			return fmt.Errorf("only %d of %d devices connected: %w", fl.Online(), len(fl.Devices), ctx.Err())
		}
	}
	return nil
}

// Totals is the fleet's summary.
type Totals struct {
	Devices       int   `json:"devices"`
	Online        int   `json:"online"`
	Received      int64 `json:"received"`
	Answered      int64 `json:"answered"`
	Failed        int64 `json:"failed"`
	Dropped       int64 `json:"dropped"`
	Duplicates    int64 `json:"duplicates"`
	Unknown       int64 `json:"unparsable"`
	PublishErrors int64 `json:"publish_errors"`
	Connects      int64 `json:"connects"`
	Refusals      int64 `json:"refused_connects"`
}

// Totals sums the fleet's counters.
func (fl *Fleet) Totals() Totals {
	t := Totals{Devices: len(fl.Devices), Online: fl.Online(),
		Received: fl.Stats.Received.Load(), Answered: fl.Stats.Answered.Load(), Failed: fl.Stats.Failed.Load(),
		Dropped: fl.Stats.Dropped.Load(), Duplicates: fl.Stats.Duplicates.Load(), Unknown: fl.Stats.Unknown.Load(),
		PublishErrors: fl.Stats.PublishErrors.Load()}
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
	if o.Progress && isTerminal(g.stderr) {
		go progress(ctx, g.stderr, func() string {
			t := fl.Totals()
			return fmt.Sprintf("devices online %d/%d  commands %d  answered %d  failed %d  dropped %d  duplicates %d",
				t.Online, t.Devices, t.Received, t.Answered, t.Failed, t.Dropped, t.Duplicates)
		})
	}
	<-ctx.Done()
	wg.Wait()
	t := fl.Totals()
	if o.JSON {
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(t)
	}
	fmt.Fprintf(g.stdout, "\ndevices %d  connects %d  refused %d\ncommands %d  answered %d  failed %d  dropped %d  duplicates %d  unparsable %d  publish errors %d\n",
		t.Devices, t.Connects, t.Refusals, t.Received, t.Answered, t.Failed, t.Dropped, t.Duplicates, t.Unknown, t.PublishErrors)
	return nil
}

// progress rewrites one status line on w every second until ctx is done.
func progress(ctx context.Context, w io.Writer, line func() string) {
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
}
