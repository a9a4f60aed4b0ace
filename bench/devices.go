package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/protocol"
)

// Devices as they really are (issue 15): sleepy devices polling over
// HTTP beside devices holding MQTT sessions, and ordered lanes beside
// unordered commands. Both sections run one gateway (1 apiserver, 1
// msgworker, 1 pushserver) with devicesim fleet and load processes.

// startFleetProc starts a devicesim fleet process of n devices named
// prefix0…, with extra flags (--http, --wake, …).
func (b *Bench) startFleetProc(section string, g *gwproc.Gateway, name, prefix string, n int, extra ...string) (*gwproc.Proc, error) {
	args := append([]string{"fleet", "--devices", strconv.Itoa(n), "--prefix", prefix, "--api", g.APIURL,
		"--secret", b.Secret, "--progress=false", "--connect-parallel", "64"}, extra...)
	p := b.proc(section, name, "devicesim", args, nil)
	if err := p.Start(); err != nil {
		return nil, err
	}
	return p, nil
}

// deviceIDs are prefix0 … prefix{n-1}.
func deviceIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = prefix + strconv.Itoa(i)
	}
	return ids
}

// waitPolled waits until every device has polled over HTTP once (its
// protocol.PartKeys.Polled key exists), at most d.
func (b *Bench) waitPolled(ctx context.Context, ns string, ids []string, d time.Duration) (int, error) {
	keys := protocol.NewKeys(ns)
	deadline := time.Now().Add(d)
	for {
		n := 0
		for i := 0; i < len(ids); i += 500 {
			pipe := b.rdb.Pipeline()
			var cmds []*redis.IntCmd
			for _, id := range ids[i:min(i+500, len(ids))] {
				cmds = append(cmds, pipe.Exists(ctx, keys.Part(protocol.Partition(id, protocol.DefaultPartitions)).Polled(id)))
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return n, err
			}
			for _, c := range cmds {
				n += int(c.Val())
			}
		}
		if n >= len(ids) || time.Now().After(deadline) || ctx.Err() != nil {
			return n, ctx.Err()
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

// loadWith runs one devicesim load process against the gateway at api
// with the given flags (after the common ones) and returns its report
// and CPU.
func (b *Bench) loadWith(ctx context.Context, section, api, tag string, flags ...string) (loadReport, time.Duration, error) {
	args := append([]string{"load", "--api", api, "--secret", b.Secret, "--client-prefix", "load" + tag + "-",
		"--max-inflight", "4096", "--json", "--progress=false"}, flags...)
	var rep loadReport
	cpu, err := runJSON(ctx, b.bins["devicesim"], args, nil, filepath.Join(b.RunDir, section, "devicesim-load-"+tag+".log"), &rep)
	return rep, cpu, err
}

// runHTTPDevices measures sleepy devices: devices that poll over HTTP
// every 10 s, with commands waiting for them, beside devices on MQTT that
// get the same rate of commands in the same run: commands delivered (and
// answered) per second, latency, and CPU per command of every process.
func runHTTPDevices(ctx context.Context, b *Bench, s *Section) error {
	if err := b.need("apiserver", "msgworker", "pushserver", "devicesim"); err != nil {
		return err
	}
	ns, cleanup := b.sectionNamespace(s, "httpdevices")
	defer cleanup()
	httpN, mqttN, rate, dur, wake := 1000, 200, 200, 20*time.Second, 10*time.Second
	if b.Quick {
		httpN, mqttN, rate, dur = 300, 50, 100, 8*time.Second
	}
	g, err := b.startGateway(ctx, "httpdevices", ns, 1, 1)
	if err != nil {
		return err
	}
	defer g.Stop()
	s.Raw = map[string]any{}
	run := func(name, tag, prefix string, devices int, drain time.Duration, fleet *gwproc.Proc) (loadReport, CPUTable, error) {
		srcs := append(gatewaySources(g), procSource(fleet))
		m := b.newMeter(append(srcs, b.brokers(ctx)...)...)
		rep, cpu, err := b.loadWith(ctx, "httpdevices", g.APIURL, tag, "--clients", "8", "--devices", strconv.Itoa(devices),
			"--prefix", prefix, "--rate", strconv.Itoa(rate), "--duration", dur.String(), "--method", "echo",
			"--timeout", "30s", "--expires-in", "5m", "--drain", drain.String())
		if err != nil {
			return rep, CPUTable{}, err
		}
		m.addTotal("devicesim load", cpu)
		t := m.table(name, rep.Received)
		s.CPU = append(s.CPU, t)
		s.Raw[name] = rep
		s.Note("%s: sent %d in %.1f s, accepted %d, received %d, duplicated %d, lost %d, wrong %d; %d succeeded, %d timeout, %d expired.%s",
			name, rep.Sent, rep.DurationS, rep.Accepted, rep.Received, rep.Duplicated, rep.Lost, rep.Wrong,
			rep.Outcomes.Succeeded, rep.Outcomes.Timeout, rep.Outcomes.Expired, sampleErrors(rep.Errors))
		b.logf("httpdevices %s: %.0f/s, received %d of %d, p50 %.0f ms, %.0f µs CPU per command",
			name, rep.Throughput, rep.Received, rep.Accepted, rep.RoundTrip.P50, t.Total().PerMsgUS)
		return rep, t, nil
	}

	// The MQTT path first, its fleet alone.
	mqtt, err := b.startFleetProc("httpdevices", g, "devicesim-fleet-mqtt", "mdev-", mqttN)
	if err != nil {
		return err
	}
	defer func() { _ = mqtt.Stop() }()
	if online, err := b.waitOnline(ctx, b.redis, ns, deviceIDs("mdev-", mqttN), 60*time.Second); err != nil || online < mqttN {
		return fmt.Errorf("only %d of %d MQTT devices came online within 60s: %v (log %s)", online, mqttN, err, mqtt.Log)
	}
	mqttName := fmt.Sprintf("MQTT: %d devices, %d commands/s", mqttN, rate)
	mrep, mt, err := run(mqttName, "mqtt", "mdev-", mqttN, 20*time.Second, mqtt)
	if err != nil {
		return err
	}
	_ = mqtt.Stop()

	// Sleepy devices: each polls, answers, sleeps wake (their phases
	// spread over the first wake).
	hfleet, err := b.startFleetProc("httpdevices", g, "devicesim-fleet-http", "hdev-", httpN, "--http", "--wake", wake.String(), "--poll-max", "10")
	if err != nil {
		return err
	}
	defer func() { _ = hfleet.Stop() }()
	if n, err := b.waitPolled(ctx, ns, deviceIDs("hdev-", httpN), 60*time.Second); err != nil || n < httpN {
		return fmt.Errorf("only %d of %d HTTP devices polled within 60s: %v (log %s)", n, httpN, err, hfleet.Log)
	}
	m := b.newMeter(append(append(gatewaySources(g), procSource(hfleet)), b.brokers(ctx)...)...)
	rest := 10 * time.Second
	if b.Quick {
		rest = 5 * time.Second
	}
	sleepCtx(ctx, rest)
	s.CPU = append(s.CPU, m.table(fmt.Sprintf("%d sleepy devices polling every %s, no commands, %s", httpN, wake, rest), 0))
	httpName := fmt.Sprintf("HTTP polls: %d devices waking every %s, %d commands/s", httpN, wake, rate)
	hrep, ht, err := run(httpName, "http", "hdev-", httpN, 2*wake+20*time.Second, hfleet)
	if err != nil {
		return err
	}

	s.Add("http_devices_delivered_per_s", fmt.Sprintf("commands delivered and answered per second, %d sleepy devices over HTTP", httpN), hrep.Throughput, "/s", nil)
	s.Explain(httpName)
	s.Add("http_devices_cpu_us_per_cmd", "CPU per command, HTTP polls (every process)", ht.Total().PerMsgUS, "µs", nil)
	s.Explain(httpName)
	s.Add("http_devices_p50_ms", "round trip p50, HTTP polls (the devices sleep)", hrep.RoundTrip.P50, "ms", nil)
	s.Add("mqtt_devices_delivered_per_s", fmt.Sprintf("commands delivered and answered per second, %d devices over MQTT, same rate", mqttN), mrep.Throughput, "/s", nil)
	s.Explain(mqttName)
	s.Add("mqtt_devices_cpu_us_per_cmd", "CPU per command, MQTT (every process)", mt.Total().PerMsgUS, "µs", nil)
	s.Explain(mqttName)
	s.Add("mqtt_devices_p50_ms", "round trip p50, MQTT", mrep.RoundTrip.P50, "ms", nil)
	s.Latencies = append(s.Latencies, LatencyRow{httpName, hrep.RoundTrip}, LatencyRow{mqttName, mrep.RoundTrip})
	s.Note("Both runs send %d commands/s for %s (open loop, echo, 8 clients) to their own devices; delivered per second is devicesim load's throughput: results received over the time from the first send to the last result, so the HTTP run's includes the last sleepers' wake (about %s). CPU per command counts every process of the gateway, the fleet, the load and the brokers over the run, divided by the results.", rate, dur, wake)
	s.Note("The sleepy devices poll GET /v1/devices/{d}/commands/next (max 10, no long-poll), acknowledge the previous poll's commands in the next, answer with POST /v1/devices/{d}/responses, and sleep %s after a poll that found nothing; at rest they cost %d polls/s.", wake, httpN/int(wake/time.Second))
	s.Notes = append(s.Notes, logProblems(append(g.All(), hfleet, mqtt)...)...)
	return nil
}

// runLanes measures ordered lanes: 100 MQTT devices with one lane each,
// beside unordered commands to the same devices, closed loop.
func runLanes(ctx context.Context, b *Bench, s *Section) error {
	if err := b.need("apiserver", "msgworker", "pushserver", "devicesim"); err != nil {
		return err
	}
	ns, cleanup := b.sectionNamespace(s, "lanes")
	defer cleanup()
	devices, dur := 100, 15*time.Second
	if b.Quick {
		dur = 5 * time.Second
	}
	g, err := b.startGateway(ctx, "lanes", ns, 1, 1)
	if err != nil {
		return err
	}
	defer g.Stop()
	fleet, err := b.startFleetProc("lanes", g, "devicesim-fleet", "dev-", devices)
	if err != nil {
		return err
	}
	defer func() { _ = fleet.Stop() }()
	if online, err := b.waitOnline(ctx, b.redis, ns, deviceIDs("dev-", devices), 60*time.Second); err != nil || online < devices {
		return fmt.Errorf("only %d of %d devices came online within 60s: %v (log %s)", online, devices, err, fleet.Log)
	}
	s.Raw = map[string]any{}
	var reps [2]loadReport
	for i, lane := range []string{"", "valve"} {
		name := fmt.Sprintf("unordered, %d devices", devices)
		flags := []string{"--clients", "8", "--devices", strconv.Itoa(devices), "--prefix", "dev-", "--rate", "0",
			"--concurrency", strconv.Itoa(devices), "--duration", dur.String(), "--method", "seq",
			"--timeout", "10s", "--expires-in", "2m", "--drain", "30s"}
		if lane != "" {
			name = fmt.Sprintf("one lane per device, %d devices", devices)
			flags = append(flags, "--lane", lane)
		}
		m := b.newMeter(append(append(gatewaySources(g), procSource(fleet)), b.brokers(ctx)...)...)
		rep, cpu, err := b.loadWith(ctx, "lanes", g.APIURL, strconv.Itoa(i), flags...)
		if err != nil {
			return err
		}
		m.addTotal("devicesim load", cpu)
		t := m.table(name, rep.Received)
		s.CPU = append(s.CPU, t)
		s.Raw[name] = rep
		reps[i] = rep
		key := "lanes_unordered"
		if lane != "" {
			key = "lanes_ordered"
		}
		s.Add(key+"_per_s", "round trips per second, "+name, rep.Throughput, "/s", nil)
		s.Explain(name)
		s.Add(key+"_p99_ms", "round trip p99, "+name, rep.RoundTrip.P99, "ms", nil)
		s.Latencies = append(s.Latencies, LatencyRow{name, rep.RoundTrip})
		s.Note("%s: sent %d, accepted %d, received %d, lost %d, wrong %d, out of order %d.%s",
			name, rep.Sent, rep.Accepted, rep.Received, rep.Lost, rep.Wrong, rep.OutOfOrder, sampleErrors(rep.Errors))
		b.logf("lanes %s: %.0f/s, p99 %.0f ms, out of order %d", name, rep.Throughput, rep.RoundTrip.P99, rep.OutOfOrder)
	}
	s.Add("lanes_out_of_order", "commands a device received out of its lane's order", float64(reps[1].OutOfOrder), "", AtMost(0))
	s.Note("Closed loop, %d commands in flight through the API, %s a run, method seq (the device's receive count, which devicesim load checks against the lane's acceptance order). With a lane, devicesim posts the commands to one device one at a time (so their 202s come in acceptance order) and the gateway puts the next one on the wire only after the previous one is final: a lane's throughput is one round trip at a time per device.", devices, dur)
	s.Notes = append(s.Notes, logProblems(append(g.All(), fleet)...)...)
	return nil
}
