package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/ring"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/mailbox"
)

// run is the apiserver: it reads the configuration from args and getenv,
// logs to stdout, connects to Redis and RabbitMQ, follows the ring, and
// serves until ctx is done. It returns an error when it cannot start (no
// GW_AUTH_SECRET, a bad flag or URL, a listen error).
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := parseConfig(args, getenv, stdout)
	if err != nil {
		return err
	}
	if err := cfg.validate(); err != nil {
		return err
	}
	// The request log is written by a goroutine of its own, a batch of
	// lines at a time (logwriter.go); what is left is written on return.
	lw := newLogWriter(stdout)
	defer lw.Close()
	log := cfg.NewLogger(lw).With("service", "apiserver")
	stopTracing, err := telemetry.StartTracing(ctx, "apiserver", getenv, lw, log)
	if err != nil {
		return err
	}
	defer telemetry.Flush(stopTracing, log)

	rdb, err := cfg.NewRedis(func(o *redis.UniversalOptions) {
		o.DialTimeout = 2 * time.Second
		o.ReadTimeout = 2 * time.Second
		o.WriteTimeout = 2 * time.Second
		// One retry covers a pooled connection that died with a Redis
		// restart; more would only delay the 503 of a Redis that is down.
		// (A Cluster client follows MOVED and ASK apart from this:
		// MaxRedirects.)
		o.MaxRetries = 1
		// A request in flight uses at most one connection at a time
		// (fewer: the mailbox batches concurrent scripts), and requests in
		// flight are bounded (GW_MAX_INFLIGHT), so a pool of that size plus
		// some for long-polls, the ring and the gauges never makes a
		// request wait for a connection. go-redis's default (10 per CPU)
		// made the pool, not Redis, the limit under load, and its timeouts
		// looked like a Redis outage (503). Without a bound: the former
		// default. On Cluster the size is per node.
		if o.PoolSize == 0 {
			o.PoolSize = max(256, 32*runtime.GOMAXPROCS(0))
			if cfg.MaxInFlight > 0 {
				o.PoolSize = cfg.MaxInFlight + 64
			}
		}
	})
	if err != nil {
		return err
	}
	defer rdb.Close()
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	if err := rdb.Ping(pctx).Err(); err != nil {
		log.Warn("redis not reachable; requests get 503 until it is", "err", err)
	} else {
		mailbox.LogDurability(pctx, log, rdb, cfg.WaitReplicas, cfg.Durability == config.DurabilityRelaxed)
	}
	cancel()

	cctx, cancel := context.WithTimeout(ctx, cfg.ConfirmTimeout)
	pub, err := amqpx.NewPublisher(cctx, amqpx.Options{
		URL:            cfg.AMQPURL,
		ConfirmTimeout: cfg.ConfirmTimeout,
		Name:           "apiserver",
		Logger:         log,
	}, cfg.topology())
	cancel()
	if err != nil {
		// Also when the namespace's fence refuses GW_QUEUES or
		// GW_PARTITIONS (amqpx.ErrCounts): the error names both counts.
		return fmt.Errorf("cannot create the AMQP publisher: %w", err)
	}
	defer pub.Close()

	rg := ring.New(rdb, cfg.Namespace, ring.Options{Logger: log})
	rctx, stopRing := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = rg.Run(rctx) }()
	defer func() { stopRing(); wg.Wait() }()

	store := mailbox.New(rdb, cfg.Namespace, mailbox.Options{
		Partitions:   cfg.Partitions,
		Retention:    cfg.Retention,
		Lease:        2 * cfg.ConfirmTimeout,
		AnswerGrace:  cfg.AnswerGrace,
		WaitReplicas: cfg.WaitReplicas,
		WaitTimeout:  cfg.WaitTimeout,
		OwnerOf: func(identity string) string {
			if m, ok := rg.Owner(identity); ok {
				return m.Node
			}
			return ""
		},
		Logger: log,
	})
	// The partition counts are fixed per namespace (DESIGN §7a): refuse to
	// run with others. The publisher passed the AMQP fence, so the counts
	// may be recorded. A Redis that does not answer yet is checked by the
	// AMQP fence alone.
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = store.CheckResize(fctx, cfg.QueuesFrom, cfg.Queues, true)
	cancel()
	if errors.Is(err, mailbox.ErrCounts) {
		return err
	} else if err != nil {
		log.Warn("cannot check the partition counts in Redis", "err", err)
	}
	srv, err := NewServer(cfg, Deps{Redis: rdb, Store: store, Publisher: pub, Ring: rg, Logger: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", cfg.HTTPAddr, err)
	}
	scheme := "http"
	if cfg.TLSCert != "" {
		scheme = "https"
	}
	log.Info("listening", "addr", ln.Addr().String(), "scheme", scheme, "namespace", cfg.Namespace)
	err = srv.Serve(ctx, ln)
	log.Info("stopped")
	return err
}
