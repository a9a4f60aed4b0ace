package main

import (
	"context"
	"fmt"
	"time"

	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/internal/latency"
)

// intakeClients is the closed-loop concurrency of the intake figure; each
// goroutine is its own client, so the per-client rate limit (1,000/s)
// does not bind.
const intakeClients = 64

// runIntake measures the apiserver alone, with no msgworker: how many
// commands per second it accepts (202: reserved in Redis, published with
// a confirm, marked queued) with 64 concurrent clients, and the latency of
// the 202 at 2,500/s open loop. Accepted commands pile up in the commands
// queue and are deleted with the namespace.
func runIntake(ctx context.Context, b *Bench, s *Section) error {
	if err := b.need("apiserver"); err != nil {
		return err
	}
	ns := b.namespace("intake")
	s.Namespace = ns
	defer func() {
		if err := b.cleanup(ns); err != nil {
			s.Note("cleanup: %v", err)
		}
	}()
	dur := 10 * time.Second
	if b.Quick {
		dur = 4 * time.Second
	}
	addr, err := gwproc.FreeAddr()
	if err != nil {
		return err
	}
	api := b.proc("intake", "apiserver", "apiserver", []string{"--http-addr", addr}, b.gwEnv(ns))
	if err := api.Start(); err != nil {
		return err
	}
	defer api.Stop()
	base := "http://" + addr
	if err := waitHTTP(ctx, base+"/readyz", 20*time.Second, api); err != nil {
		return err
	}
	load, err := newHTTPLoad(base, b.Secret, "ic-", intakeClients, 100, "")
	if err != nil {
		return err
	}
	// Warm up connections and the apiserver's pools.
	var warm latency.Recorder
	load.closedLoop(ctx, intakeClients, time.Second, 2000, &warm)
	load.statuses()

	m := b.newMeter(append([]cpuSource{procSource(api)}, b.brokers(ctx)...)...)

	var lat latency.Recorder
	acc, el := load.closedLoop(ctx, intakeClients, dur, 1_000_000, &lat)
	st := load.statuses()
	s.CPU = append(s.CPU, m.table(fmt.Sprintf("%d concurrent clients", intakeClients), acc))
	rate := perSecond(acc, el)
	s.Add("intake_max_per_s", fmt.Sprintf("intake: accepted (202) with %d concurrent clients", intakeClients), rate, "/s", AtLeast(10000))
	s.Latencies = append(s.Latencies, LatencyRow{fmt.Sprintf("202 with %d concurrent clients (closed loop)", intakeClients), lat.Summary()})
	s.Note("%d concurrent clients for %s: answers by status %v.", intakeClients, el.Round(time.Millisecond), st)
	b.logf("intake closed loop: %.0f/s", rate)

	if ctx.Err() != nil {
		return ctx.Err()
	}
	sleepCtx(ctx, time.Second)
	m.reset()
	var olat, svc latency.Recorder
	acc, sent, el := load.openLoop(ctx, 2500, dur, 4096, &olat, &svc)
	st = load.statuses()
	s.CPU = append(s.CPU, m.table("2,500/s", acc))
	p := olat.Summary()
	s.Add("intake_2500_per_s", "intake: accepted at 2,500/s offered", perSecond(acc, el), "/s", nil)
	s.Add("intake_2500_p50_ms", "202 p50 at 2,500/s", p.P50, "ms", nil)
	s.Add("intake_2500_p99_ms", "202 p99 at 2,500/s", p.P99, "ms", AtMost(5))
	s.Latencies = append(s.Latencies,
		LatencyRow{"202 at 2,500/s, from the scheduled send", p},
		LatencyRow{"202 at 2,500/s, from the actual send", svc.Summary()})
	s.Note("2,500/s open loop for %s: %d sent, answers by status %v.", el.Round(time.Millisecond), sent, st)
	if len(load.errs) > 0 {
		s.Note("Sample of non-202 answers: %q.", load.errs)
	}
	s.Notes = append(s.Notes, logProblems(api)...)
	b.logf("intake 2,500/s: p50 %.2f ms, p99 %.2f ms", p.P50, p.P99)
	return nil
}
