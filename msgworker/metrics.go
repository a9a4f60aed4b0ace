package main

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the worker's Prometheus metrics (DESIGN §9: served at
// GW_METRICS_ADDR).
type metrics struct {
	handled       *prometheus.CounterVec   // gw_worker_handled_total{queue,outcome}
	duration      *prometheus.HistogramVec // gw_worker_handler_duration_seconds{queue}
	timersFired   prometheus.Counter       // gw_worker_timers_fired_total
	timerOutcomes *prometheus.CounterVec   // gw_worker_timer_outcomes_total{outcome}
	deadLetters   *prometheus.CounterVec   // gw_worker_dead_letters_total{queue}
	groups        prometheus.Counter       // gw_groups_runs_total
	writesLost    prometheus.Counter       // gw_redis_writes_lost_total
}

// storeCounts are the mailbox store's own counts the metrics read.
type storeCounts interface {
	FinalConflicts() int64
	Lost() int64
}

// newMetrics registers the worker's metrics with reg. reconnects reports
// the total reconnects of the worker's AMQP consumers; store the counts of
// its mailbox store (final conflicts, commands lost).
func newMetrics(reg prometheus.Registerer, reconnects func() float64, store storeCounts) (*metrics, error) {
	m := &metrics{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gw_worker_handled_total",
			Help: "Deliveries handled, by queue (commands, commands.dead) and outcome (sent, noop, expired, rejected, dead, unknown, conflict, poison, transient, error, panic, logged, dropped).",
		}, []string{"queue", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gw_worker_handler_duration_seconds",
			Help:    "Time spent handling one delivery, by queue.",
			Buckets: []float64{.0002, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"queue"}),
		timersFired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_worker_timers_fired_total",
			Help: "Due timers (deliver-by, answer-within) this worker took from the timer set, whatever they did (gw_worker_timer_outcomes_total says what).",
		}),
		timerOutcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gw_worker_timer_outcomes_total",
			Help: "What the due timers this worker took did: expired or timeout (the command ended), rearmed (a later deadline), noop (the command had ended already), malformed or corrupt (dropped).",
		}, []string{"outcome"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gw_worker_dead_letters_total",
			Help: "Dead letters consumed, by dead-letter queue.",
		}, []string{"queue"}),
		writesLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_redis_writes_lost_total",
			Help: "Times the write watch found that Redis lost writes it had acknowledged (an appendfsync everysec host crash, a failover to a replica behind; DESIGN §7a), each logged at WARN with when the lost span began.",
		}),
		groups: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_groups_runs_total",
			Help: "Deliveries of group commands this worker started creating the children of (a redelivery after a crash resumes at the group's cursor and counts again).",
		}),
	}
	cs := []prometheus.Collector{
		m.handled, m.duration, m.timersFired, m.timerOutcomes, m.deadLetters, m.groups, m.writesLost,
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gw_final_conflicts_total",
			Help: "Results this worker relayed that found a different final already in the client's claim: not delivered, written back to the record (DESIGN §7a), each logged at WARN.",
		}, func() float64 { return float64(store.FinalConflicts()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gw_commands_lost_total",
			Help: "Commands this worker's claim watchdog ended as lost (-32006 \"lost by the gateway\"): the record was gone beyond repair, each logged at WARN.",
		}, func() float64 { return float64(store.Lost()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gw_worker_reconnects_total",
			Help: "AMQP connection or channel losses the worker's consumers recovered from.",
		}, reconnects),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
