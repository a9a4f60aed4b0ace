package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/auth"
)

// BenchmarkIntake measures accepted commands per second: parallel POSTs
// of single commands through a real listener, each confirmed by RabbitMQ
// and recorded in Redis. Informational; run with
//
//	go test -run '^$' -bench Intake -benchtime 5s ./apiserver/
func BenchmarkIntake(b *testing.B) {
	g := newGW(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- g.srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-served }()
	url := "http://" + ln.Addr().String() + "/v1/devices/dev-1/commands"
	tok := token(b, "bench", auth.RoleClient, "dev-*")
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	var seq, failed atomic.Int64

	b.SetParallelism(16) // 16 × GOMAXPROCS concurrent clients
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			body := fmt.Sprintf(`{"jsonrpc":"2.0","method":"set","params":{"v":1},"id":"b-%d"}`, seq.Add(1))
			req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := client.Do(req)
			if err != nil {
				failed.Add(1)
				continue
			}
			// Read to the end, so the connection is reused.
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				failed.Add(1)
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "cmds/s")
	if n := failed.Load(); n > 0 {
		b.Errorf("%d of %d requests not accepted", n, b.N)
	}
}
