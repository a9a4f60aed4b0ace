package amqpx_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/protocol"
)

// An apiserver publishes a command and answers 202 only on nil.
func ExamplePublisher() {
	ctx := context.Background()
	topo := protocol.NewTopology("gw", protocol.DefaultQueues, protocol.DefaultPartitions)
	p, err := amqpx.NewPublisher(ctx, amqpx.Options{Name: "apiserver"}, topo)
	if err != nil {
		log.Fatal(err) // bad options, or counts the namespace's fence refuses
	}
	defer p.Close()

	body, _ := json.Marshal(map[string]any{"v": 1, "device": "dev-1"})
	exchange, key := topo.DeviceRoute("dev-1") // the device's command queue
	err = p.Publish(ctx, exchange, key, body, amqpx.Headers{MessageID: "c1:42"})
	var e *amqpx.Error
	switch {
	case err == nil:
		fmt.Println(http.StatusAccepted)
	case errors.As(err, &e) && e.Recover:
		fmt.Println(http.StatusServiceUnavailable, e.Reason) // with Retry-After
	default:
		fmt.Println(http.StatusInternalServerError)
	}
}

// A msgworker consumes commands (one Consumer for each command queue);
// the handler's error decides ack, requeue, dead-letter or pause.
func ExampleConsumer() {
	topo := protocol.NewTopology("gw", protocol.DefaultQueues, protocol.DefaultPartitions)
	c := amqpx.NewConsumer(amqpx.Options{Name: "msgworker"}, topo,
		amqpx.ConsumerOptions{Queue: topo.CommandQueue(0), Prefetch: 64},
		func(ctx context.Context, d amqpx.Delivery) error {
			var env map[string]any
			if err := json.Unmarshal(d.Body, &env); err != nil {
				return fmt.Errorf("cannot parse envelope: %w", amqpx.ErrReject) // dead-letter now
			}
			if err := storeInRedis(ctx, env); err != nil {
				return fmt.Errorf("cannot store: %w: %w", err, amqpx.ErrTransient) // hold and pause
			}
			return nil // ack
		})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := c.Run(ctx); err != nil { // blocks until ctx is cancelled
		log.Fatal(err) // bad options, or counts the namespace's fence refuses
	}
}

func storeInRedis(context.Context, map[string]any) error { return nil }
