package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// BenchmarkWorker measures one Worker (default prefetch and concurrency)
// against the real RabbitMQ and Redis: commands/s through Dispatch.
// Device answers do not reach the worker (the push server completes
// them, DESIGN §5), so only the command path is measured. The messages
// are published before the clock starts and held at the worker's door by
// a gate, so the time is the worker's alone. One op is one message. It
// reports:
//
//	msgs/s           messages handled per second (wall clock)
//	cpu-µs/msg       this process's CPU (user+sys, getrusage) per message:
//	                 the worker's Go code, amqp091 and go-redis
//	redis-cpu-µs/msg the Redis server's CPU per message (INFO cpu): the
//	                 Lua scripts
//
// Run it with a fixed count, for example:
//
//	go test -run '^$' -bench Worker -benchtime 5000x ./msgworker/
func BenchmarkWorker(b *testing.B) {
	b.Run("commands", func(b *testing.B) {
		h := newHarness(b)
		gate := make(chan struct{})
		w := h.worker(func(c *Config) { c.middleware = []Middleware{gateFor(queueCommands, gate)} })
		b.StopTimer()
		h.sendMany(b.N, 32, benchSpec)
		measure(b, h.rdb, gate, func() bool { return handled(w, queueCommands, "sent") >= b.N })
	})
}

func benchSpec(i int) spec {
	return spec{client: fmt.Sprintf("c%d", i%10), device: fmt.Sprintf("d%d", i%100), id: strconv.Itoa(i)}
}

// gateFor holds the handlers of queue until gate is closed.
func gateFor(queue string, gate <-chan struct{}) Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, m *Message) error {
			if m.Queue == queue {
				<-gate
			}
			return next(ctx, m)
		}
	}
}

// measure opens the gate, waits until done, and reports the rates.
func measure(b *testing.B, rdb *redis.Client, gate chan struct{}, done func() bool) {
	b.Helper()
	redisCPU0 := redisCPU(b, rdb)
	cpu0 := processCPU()
	start := time.Now()
	b.StartTimer()
	close(gate)
	deadline := start.Add(5 * time.Minute)
	for !done() {
		if time.Now().After(deadline) {
			b.Fatal("not done within 5 minutes")
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	rcpu := redisCPU(b, rdb) - redisCPU0
	n := float64(b.N)
	b.ReportMetric(n/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(cpu.Microseconds())/n, "cpu-µs/msg")
	b.ReportMetric(rcpu*1e6/n, "redis-cpu-µs/msg")
}

// processCPU is this process's user+sys CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisCPU is the Redis server's used_cpu_sys + used_cpu_user, seconds.
func redisCPU(b *testing.B, rdb *redis.Client) float64 {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Logf("cannot read redis cpu: %v", err)
		return 0
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return total
}
