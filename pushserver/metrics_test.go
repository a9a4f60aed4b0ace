package main

import (
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// TestRelayCountersExported: the push server relays the results it
// completes, so it exports the relay's counters as the workers do, read
// from its mailbox store.
func TestRelayCountersExported(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	mfs, err := n.cfg.Registry.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	got := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf
	}
	for name, want := range map[string]int64{
		"gw_final_conflicts_total": n.store.FinalConflicts(),
		"gw_commands_lost_total":   n.store.Lost(),
	} {
		mf, ok := got[name]
		if !ok || len(mf.GetMetric()) != 1 {
			t.Errorf("%s: not exported by the push server (got %v), want one counter", name, mf)
			continue
		}
		if v := mf.GetMetric()[0].GetCounter().GetValue(); v != float64(want) {
			t.Errorf("%s = %v, want the store's %d", name, v, want)
		}
	}
}
