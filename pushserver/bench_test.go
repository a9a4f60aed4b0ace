package main

import (
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqttv3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/gateway/protocol"
)

// BenchmarkDelivery measures the mailbox → MQTT delivery rate to N
// connected clients (informational):
//
//   - drain: b.N entries wait in the mailboxes; the clients subscribe
//     and the clock runs until every entry has arrived (and been
//     PUBACKed);
//   - live: the clients are subscribed and b.N entries are put while the
//     clock runs (Put, wake signal, Fetch, PUBLISH, PUBACK, Ack).
//
// Run with: go test -run '^$' -bench Delivery -benchtime 20000x ./pushserver/
func BenchmarkDelivery(b *testing.B) {
	for _, mode := range []string{"drain", "live"} {
		for _, clients := range []int{1, 10, 100} {
			b.Run(fmt.Sprintf("%s/clients=%d", mode, clients), func(b *testing.B) {
				benchDelivery(b, mode == "live", clients)
			})
		}
	}
}

func benchDelivery(b *testing.B, live bool, clients int) {
	e := newEnv(b)
	n := e.startNode()
	ids := make([]string, clients)
	conns := make([]*v3, clients)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-bench-%d", i)
		conns[i] = mustV3(b, n.Addr(), ids[i])
	}
	var received atomic.Int64
	done := make(chan struct{})
	total := int64(b.N)
	handler := func(mqttv3.Client, mqttv3.Message) {
		if received.Add(1) == total {
			close(done)
		}
	}
	subscribe := func() {
		for i, c := range conns {
			tok := c.Subscribe(protocol.DeviceCommandsTopic(ids[i]), 1, handler)
			if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				b.Fatalf("subscribe: %v", tok.Error())
			}
		}
	}
	put := func() {
		var wg sync.WaitGroup
		const workers = 8
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < b.N; i += workers {
					id := ids[i%clients]
					e.put(id, protocol.DeviceCommandsTopic(id), fmt.Sprintf(`{"n":%d}`, i), n.NodeID())
				}
			}()
		}
		wg.Wait()
	}

	var cpu0 time.Duration
	if live {
		subscribe()
		b.ResetTimer()
		cpu0 = processCPU(b)
		put()
	} else {
		put()
		b.ResetTimer()
		cpu0 = processCPU(b)
		subscribe()
	}
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatalf("received %d of %d", received.Load(), b.N)
	}
	b.StopTimer()
	cpu := processCPU(b) - cpu0
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	// The process's CPU: the node and its paho clients (and, live, the
	// test's Puts), per message.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
	b.ReportMetric(value(b, n.m.reads), "fetches")
}

// processCPU is the CPU time (user and system) the process has used.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
