package main

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotgw/gateway/internal/amqpx"
)

// metrics are the API's Prometheus metrics.
type metrics struct {
	requests        *prometheus.CounterVec   // gw_api_requests_total{route,code}
	duration        *prometheus.HistogramVec // gw_api_request_duration_seconds{route}
	accepted        prometheus.Counter       // gw_api_commands_accepted_total
	publishFailures *prometheus.CounterVec   // gw_api_publish_failures_total{reason}
	groupsAccepted  prometheus.Counter       // gw_groups_accepted_total
	groupsCancelled prometheus.Counter       // gw_groups_cancelled_total
	retried         prometheus.Counter       // gw_api_commands_retried_total
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gw_api_requests_total",
			Help: "HTTP requests by route pattern and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gw_api_request_duration_seconds",
			Help:    "HTTP request latency by route pattern.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route"}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_api_commands_accepted_total",
			Help: "Commands answered 202: confirmed by RabbitMQ and routed to a queue.",
		}),
		publishFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gw_api_publish_failures_total",
			Help: "Commands not accepted because the publish failed (or, reason redis, the reservation did), by reason.",
		}, []string{"reason"}),
		groupsAccepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_groups_accepted_total",
			Help: "Group commands answered 202 (issue 14): their record is in Redis and their envelope confirmed by RabbitMQ.",
		}),
		retried: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_api_commands_retried_total",
			Help: "Commands retried with POST /v1/commands/{id}/retry (queued and published again under the same id).",
		}),
		groupsCancelled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_groups_cancelled_total",
			Help: "Group commands cancelled by DELETE /v1/group-commands/{id}.",
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.accepted, m.publishFailures, m.groupsAccepted, m.groupsCancelled, m.retried} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("apiserver: cannot register metrics: %w", err)
		}
	}
	// Make the failure reasons visible before the first failure.
	for _, r := range publishReasons {
		m.publishFailures.WithLabelValues(r)
	}
	return m, nil
}

// The reasons of gw_api_publish_failures_total.
var publishReasons = []string{"not_connected", "blocked", "nacked", "returned", "confirm_timeout", "channel_closed", "closed", "cancelled", "redis", "other"}

// publishReason names the reason label of a publish error.
func publishReason(err error) string {
	switch {
	case errors.Is(err, amqpx.ErrNotConnected):
		return "not_connected"
	case errors.Is(err, amqpx.ErrBlocked):
		return "blocked"
	case errors.Is(err, amqpx.ErrNacked):
		return "nacked"
	case errors.Is(err, amqpx.ErrReturned):
		return "returned"
	case errors.Is(err, amqpx.ErrConfirmTimeout):
		return "confirm_timeout"
	case errors.Is(err, amqpx.ErrChannelClosed):
		return "channel_closed"
	case errors.Is(err, amqpx.ErrClosed):
		return "closed"
	}
	var ae *amqpx.Error
	if errors.As(err, &ae) && ae.Reason == "cancelled" {
		return "cancelled"
	}
	return "other"
}
