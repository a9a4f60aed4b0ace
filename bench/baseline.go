package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/latency"
	"github.com/iotgw/gateway/protocol"
)

// Settings of the baseline, the gateway's own: the apiserver's publisher
// has 4 confirm-mode channels on one connection (amqpx.Options.Channels),
// a msgworker's command consumers share a prefetch of 128
// (msgworker.DefaultPrefetch), each of the GW_QUEUES queues getting its
// share.
const (
	baselineChannels = 4
	baselinePrefetch = 128
	// baselineInflight is how many messages are in flight at once,
	// published and not yet delivered to the consumer: publishers wait
	// for their confirm, and publish again only once a delivery made room
	// (a closed loop, as the gateway's round trip is), so the queue does
	// not grow and the figure is a rate the hop can sustain.
	baselineInflight = 256
	// baselineMaxPublishes bounds the publishes of one run.
	baselineMaxPublishes = 20_000_000
)

// runBaseline measures one hop through bare RabbitMQ with the gateway's
// settings: closed-loop publishers (persistent, mandatory, each publish
// waits for its confirm) to the command quorum queues declared with the
// gateway's arguments and counts, spread over the queues as devices are,
// and on one connection a consumer of each queue with manual acks and the
// queue's share of a prefetch of 128. The figure is the rate of acked
// deliveries during the window.
func runBaseline(ctx context.Context, b *Bench, s *Section) error {
	ns, cleanup := b.sectionNamespace(s, "baseline")
	defer cleanup()
	topo := benchTopology(ns)
	queues := topo.CommandQueues()
	prefetch := (baselinePrefetch + len(queues) - 1) / len(queues)
	window := 15 * time.Second
	if b.Quick {
		window = 5 * time.Second
	}
	const warmup = 2 * time.Second

	dial := func(name string) (*amqp.Connection, error) {
		props := amqp.NewConnectionProperties()
		props.SetClientConnectionName(name)
		return amqp.DialConfig(b.AMQPURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second), Properties: props, Heartbeat: 10 * time.Second})
	}
	pconn, err := dial("bench-baseline-publisher")
	if err != nil {
		return fmt.Errorf("cannot connect to RabbitMQ: %w", err)
	}
	defer pconn.Close()
	cconn, err := dial("bench-baseline-consumer")
	if err != nil {
		return fmt.Errorf("cannot connect to RabbitMQ: %w", err)
	}
	defer cconn.Close()
	dch, err := pconn.Channel()
	if err != nil {
		return err
	}
	if err := amqpx.Declare(dch, topo); err != nil {
		return err
	}
	_ = dch.Close()

	// A body of the size and shape of a real command envelope.
	id, _ := protocol.ParseID(json.RawMessage(`"bench-0000000001"`))
	env := protocol.Envelope{Kind: protocol.KindCommand, Client: "load-0", Device: "dev-42", MsgID: id,
		Payload:    json.RawMessage(`{"jsonrpc":"2.0","method":"echo","params":{"seq":1,"client":"load-0"},"id":"bench-0000000001"}`),
		AcceptedAt: time.Now(), DeliverBy: time.Now().Add(time.Hour), AnswerWithinMS: 10000, Attempt: 1,
		TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	body, err := env.Encode()
	if err != nil {
		return err
	}

	// Consumers: a channel for each command queue, as a worker has.
	var consumed atomic.Int64
	room := make(chan struct{}, baselineInflight)
	for range baselineInflight {
		room <- struct{}{}
	}
	var measuring atomic.Bool
	var hop latency.Recorder
	var cchs []*amqp.Channel
	var consumers sync.WaitGroup
	for _, q := range queues {
		cch, err := cconn.Channel()
		if err != nil {
			return err
		}
		cchs = append(cchs, cch)
		if err := cch.Qos(prefetch, 0, false); err != nil {
			return err
		}
		deliveries, err := cch.Consume(q, "", false, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("cannot consume %s: %w", q, err)
		}
		consumers.Add(1)
		go func() {
			defer consumers.Done()
			for d := range deliveries {
				if t, ok := d.Headers["t"].(int64); ok && measuring.Load() {
					hop.Add(time.Duration(time.Now().UnixNano() - t))
				}
				if err := d.Ack(false); err != nil {
					return
				}
				consumed.Add(1)
				select {
				case room <- struct{}{}:
				default:
				}
			}
		}()
	}

	// Publishers: baselineInflight goroutines over baselineChannels
	// confirm-mode channels, every publish mandatory and persistent.
	var chans []*amqp.Channel
	var returned atomic.Int64
	for range baselineChannels {
		ch, err := pconn.Channel()
		if err != nil {
			return err
		}
		if err := ch.Confirm(false); err != nil {
			return fmt.Errorf("cannot enter confirm mode: %w", err)
		}
		rets := ch.NotifyReturn(make(chan amqp.Return, 64))
		go func() {
			for range rets {
				returned.Add(1)
			}
		}()
		chans = append(chans, ch)
	}
	var confirmed, nacked, perrs, started atomic.Int64
	var confirmLat latency.Recorder
	pctx, stopPub := context.WithCancel(ctx)
	defer stopPub()
	var wg sync.WaitGroup
	for i := range baselineInflight {
		ch := chans[i%len(chans)]
		// Publisher i sends to the queue of its device, as intake does.
		exchange, key := topo.DeviceRoute(fmt.Sprintf("dev-%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pctx.Err() == nil && started.Add(1) <= baselineMaxPublishes {
				select {
				case <-room:
				case <-pctx.Done():
					return
				}
				start := time.Now()
				dc, err := ch.PublishWithDeferredConfirmWithContext(pctx, exchange, key, true, false,
					amqp.Publishing{
						Headers:      amqp.Table{"t": start.UnixNano(), "traceparent": env.TraceParent},
						ContentType:  "application/json",
						DeliveryMode: amqp.Persistent,
						MessageId:    "load-0:bench",
						Type:         protocol.KindCommand,
						Timestamp:    start,
						Body:         body,
					})
				if err != nil {
					if pctx.Err() == nil {
						perrs.Add(1)
						room <- struct{}{}
						time.Sleep(10 * time.Millisecond)
					}
					continue
				}
				ok, err := dc.WaitContext(pctx)
				switch {
				case err != nil:
				case ok:
					confirmed.Add(1)
					if measuring.Load() {
						confirmLat.Add(time.Since(start))
					}
				default:
					nacked.Add(1)
					room <- struct{}{}
				}
			}
		}()
	}

	m := b.newMeter(b.brokers(ctx)...)
	sleepCtx(ctx, warmup)
	c0, p0 := consumed.Load(), confirmed.Load()
	m.reset()
	measuring.Store(true)
	t0 := time.Now()
	sleepCtx(ctx, window)
	measuring.Store(false)
	el := time.Since(t0)
	c1, p1 := consumed.Load(), confirmed.Load()
	cpu := m.table("the baseline window", c1-c0)
	stopPub()
	wg.Wait()
	// Let the consumer take what is left, bounded.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		qi, err := amqpx.QueueDepth(ctx, pconn, queues...)
		left := 0
		for _, q := range queues {
			left += qi[q].Messages
		}
		if err != nil || left == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, cch := range cchs {
		_ = cch.Close()
	}
	consumers.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}

	rate := perSecond(c1-c0, el)
	s.Add("baseline_amqp_per_s", "bare RabbitMQ, one hop: deliveries acked", rate, "/s", nil)
	s.Add("baseline_confirms_per_s", "bare RabbitMQ: publishes confirmed", perSecond(p1-p0, el), "/s", nil)
	s.Latencies = append(s.Latencies,
		LatencyRow{"publish → confirm", confirmLat.Summary()},
		LatencyRow{"publish → delivery to the consumer", hop.Summary()})
	s.CPU = append(s.CPU, cpu)
	s.Note("Closed loop: at most %d messages published and not yet delivered, over %d confirm-mode channels of one connection (every publisher waits for its confirm), spread over the %d command queues as devices are; one consumer channel for each queue, prefetch %d each (%d in all), one ack per delivery; %d-byte envelope bodies; a %s window after %s of warm-up.",
		baselineInflight, baselineChannels, len(queues), prefetch, prefetch*len(queues), len(body), el.Round(time.Millisecond), warmup)
	s.Note("Queues %s.0 … %s.%d: quorum, x-delivery-limit %d, dead-letter exchange %s (at-least-once), x-overflow reject-publish, x-queue-leader-locator %s, declared with amqpx.Declare exactly as the gateway declares them.",
		topo.CommandsGroup, topo.CommandsGroup, len(queues)-1, protocol.DeliveryLimit, topo.DeadExchange, protocol.LeaderLocator)
	if n := returned.Load() + nacked.Load() + perrs.Load(); n > 0 {
		s.Note("Problems: %d returned, %d nacked, %d publish errors.", returned.Load(), nacked.Load(), perrs.Load())
	}
	s.Note("A round trip crosses RabbitMQ once (its commands queue; the device's answer is completed in Redis by the push server and never crosses RabbitMQ, DESIGN §5), so with RabbitMQ as the only cost the round trip could reach this figure; the rest of its cost is Redis, the gateway's processes and the MQTT legs.")
	return nil
}

// sleepCtx sleeps for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
