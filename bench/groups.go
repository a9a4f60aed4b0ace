package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"time"
)

// groupReport is the part of devicesim load --group-devices's JSON report
// the bench uses.
type groupReport struct {
	Devices      int            `json:"devices"`
	Status       string         `json:"status"`
	AcceptMS     float64        `json:"accept_ms"`
	DoneS        float64        `json:"done_s"`
	ChildrenPerS float64        `json:"children_per_s"`
	Received     int            `json:"received"`
	Duplicated   int            `json:"duplicated"`
	Lost         int            `json:"lost"`
	Counts       map[string]int `json:"counts"`
}

// runGroups measures a group command (issue 14) to the whole simulated
// fleet, 10,000 devices (1,000 with --quick), all at once: the time from
// its 202 to the last child's result over MQTT and the children per
// second, beside the single-command round trip at maximum rate of the
// same gateway and fleet (the target: children move at ≥ 0.8 × that).
func runGroups(ctx context.Context, b *Bench, s *Section) error {
	if err := b.need("apiserver", "msgworker", "pushserver", "devicesim"); err != nil {
		return err
	}
	ns, cleanup := b.sectionNamespace(s, "groups")
	defer cleanup()
	devices, dur := 10000, 8*time.Second
	if b.Quick {
		devices, dur = 1000, 3*time.Second
	}
	e, err := b.startRT(ctx, b.redis, "groups", ns, 1, 1, devices)
	if err != nil {
		return err
	}
	defer e.stop()
	b.logf("groups: gateway up (1 msgworker, 1 pushserver), %d devices online", devices)
	s.Raw = map[string]any{}

	// The single-command round trip of this run, closed loop.
	single, _, err := b.load(ctx, "groups", e, "single", 0, dur, 20*time.Second, devices)
	if err != nil {
		return err
	}
	s.Raw["single"] = single
	s.Add("groups_single_roundtrip_per_s", "single-command round trip at maximum rate, same gateway and fleet", single.Throughput, "/s", nil)

	var rep groupReport
	args := []string{"load", "--api", e.g.APIURL, "--secret", b.Secret, "--client-prefix", "bench-",
		"--prefix", "dev-", "--group-devices", strconv.Itoa(devices), "--method", "echo",
		"--timeout", "30s", "--expires-in", "5m", "--drain", "3m", "--json", "--progress=false"}
	if _, err := runJSON(ctx, b.bins["devicesim"], args, nil, filepath.Join(b.RunDir, "groups", "devicesim-group.log"), &rep); err != nil {
		return err
	}
	s.Raw["group"] = rep
	b.logf("groups: %d children, %s, 202 after %.1f ms, last result %.2f s later (%.0f children/s), %d lost",
		rep.Devices, rep.Status, rep.AcceptMS, rep.DoneS, rep.ChildrenPerS, rep.Lost)
	s.Add("groups_accept_ms", fmt.Sprintf("group command to %s devices: 202 after", thousands(float64(devices))), rep.AcceptMS, "ms", AtMost(1000))
	s.Add("groups_done_s", "time from the 202 to the last child's result", rep.DoneS, "s", nil)
	s.Add("groups_children_per_s", "group children per second (202 to last result)", rep.ChildrenPerS, "/s",
		AtLeast(0.8*single.Throughput))
	if single.Throughput > 0 {
		s.Add("groups_ratio", "group children per second / single-command round trip", rep.ChildrenPerS/single.Throughput, "×", AtLeast(0.8))
	}
	s.Add("groups_lost", "children whose result never reached the client", float64(rep.Lost), "", AtMost(0))
	s.Note("One group command (POST /v1/commands, all at once, method echo) to %d devices of a devicesim fleet answering at once; one worker creates the children (claim, reserve, dispatch each) and one push server streams them. Status %s, counts %v, %d results received, %d duplicated. The single-command figure is devicesim load closed loop (%d in flight) for %s against the same gateway and fleet just before.",
		devices, rep.Status, rep.Counts, rep.Received, rep.Duplicated, rtConcurrency, dur)
	s.Notes = append(s.Notes, logProblems(append(e.g.All(), e.fleet)...)...)
	return nil
}
