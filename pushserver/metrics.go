package main

import (
	"github.com/iotgw/gateway/mailbox"
	"github.com/prometheus/client_golang/prometheus"
)

// Reasons of gw_push_responses_dropped_total.
const (
	dropMalformed = "malformed"     // not a JSON-RPC 2.0 response
	dropID        = "bad_id"        // id is not a "{client}:{id}" string
	dropUnknown   = "unknown"       // no such command
	dropDevice    = "wrong_device"  // the command is another device's
	dropNotSent   = "not_sent"      // the command was never sent (pending or queued)
	dropUnsent    = "not_forwarded" // QoS 0 response that could not be published
)

// metrics are the push server's Prometheus metrics.
type metrics struct {
	sessions prometheus.Gauge
	// connecting counts connections whose CONNECT is being read (its
	// fixed header has arrived, its body not yet).
	connecting prometheus.Gauge
	delivers   prometheus.Counter
	acks       prometheus.Counter
	redirects  prometheus.Counter
	sheds      prometheus.Counter
	responses  prometheus.Counter
	dropped    *prometheus.CounterVec
	reads      prometheus.Counter
	carried    prometheus.Counter
	unsent     prometheus.Counter
	// refusals counts command entries their device refused (PUBACK reason
	// code ≥ 0x80), by what mailbox.Store.Refuse did: rejected, or noop
	// (the command had left sent already).
	refusals *prometheus.CounterVec
	// abandoned counts answers not completed before their connection
	// ended or the node stopped, by cause.
	abandoned *prometheus.CounterVec
	// codecPanics counts packets whose decoding panicked in mochi's
	// codec: each is taken as malformed and ends its connection
	// (client.readPacket).
	codecPanics prometheus.Counter
	// held counts the device answers held now (read, waiting for Redis
	// to take their completion step).
	held prometheus.Gauge
	// late counts device answers that arrived after their command was
	// final, by cause (lateDevice, lateHeld).
	late *prometheus.CounterVec
	// wakeResubscribes counts (re)subscriptions of the wake channel.
	wakeResubscribes prometheus.Counter
	// reoffers counts sessions whose mailbox was offered again, delivered
	// commands included, after Redis came back from an outage.
	reoffers prometheus.Counter
}

// newMetrics registers the push server's metrics with reg. store returns
// the node's mailbox store once it has started (nil before): results the
// push server completes are relayed by it too, so its relay counters are
// exported here as the workers export theirs.
func newMetrics(reg prometheus.Registerer, store func() *mailbox.Store) *metrics {
	m := &metrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gw_push_sessions", Help: "Live MQTT sessions on this push server.",
		}),
		connecting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gw_push_connecting", Help: "Connections whose CONNECT is arriving (fixed header read, body not yet).",
		}),
		delivers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_push_deliveries_total", Help: "Mailbox entries sent as QoS 1 PUBLISH (redeliveries included).",
		}),
		acks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_push_acks_total", Help: "Mailbox entries acknowledged by their PUBACK (a result's entry is removed; a command's marks it delivered and stays until it is final).",
		}),
		redirects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_push_redirects_total", Help: "Connections refused because another push server owns the identity.",
		}),
		sheds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_push_sheds_total", Help: "Sessions closed because this push server no longer owns them, or is shutting down.",
		}),
		responses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_push_responses_total", Help: "Device responses completed in Redis (mailbox.Store.Complete) before their PUBACK.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gw_push_responses_dropped_total", Help: "Device responses dropped, by reason.",
		}, []string{"reason"}),
		carried: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_push_carried_total", Help: "Mailbox entries sent as their wake-up carried them, without a mailbox read.",
		}),
		reads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_push_mailbox_reads_total", Help: "Mailbox reads (Fetch calls).",
		}),
		unsent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_push_unsent_total", Help: "Command entries read from a mailbox but not published, handed back (Unsend).",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gw_push_refusals_total", Help: "Command entries their device refused (MQTT 5 PUBACK reason code 0x80 or more), by outcome: rejected (the command ended rejected) or noop.",
		}, []string{"outcome"}),
		abandoned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gw_push_answers_abandoned_total", Help: "Device answers held (Redis could not take them) until the node stopped: not completed, not acknowledged, by cause.",
		}, []string{"cause"}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gw_push_answers_held", Help: "Device answers read and held now: Redis could not take their completion step yet (retried off the connection's read loop; PUBACK once completed).",
		}),
		late: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gw_answers_late_total", Help: "Device answers that arrived after their command was final (recorded as late), by cause: device (the device answered after the command ended) or held (read in time, held while Redis could not take it).",
		}, []string{"cause"}),
		codecPanics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_push_codec_panics_total", Help: "Packets on which mochi's packet codec panicked: taken as malformed, their connection closed.",
		}),
		reoffers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_push_reoffers_total", Help: "Sessions whose delivered, unanswered commands were offered again (same id) once Redis came back from an outage (DESIGN §7a).",
		}),
		wakeResubscribes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gw_push_wake_subscriptions_total", Help: "Subscriptions of the node's wake channel: 1 at start, one more after each reconnect to Redis (each re-reads every session's mailbox).",
		}),
	}
	for _, r := range []string{dropMalformed, dropID, dropUnknown, dropDevice, dropNotSent, dropUnsent} {
		m.dropped.WithLabelValues(r)
	}
	for _, c := range []string{lateDevice, lateHeld} {
		m.late.WithLabelValues(c)
	}
	for _, c := range []string{"shutdown"} {
		m.abandoned.WithLabelValues(c)
	}
	for _, o := range []string{"rejected", "noop"} {
		m.refusals.WithLabelValues(o)
	}
	relayed := func(count func(*mailbox.Store) int64) func() float64 {
		return func() float64 {
			if s := store(); s != nil {
				return float64(count(s))
			}
			return 0
		}
	}
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gw_final_conflicts_total",
			Help: "Results this push server relayed that found a different final already in the client's claim: not delivered, written back to the record (DESIGN §7a), each logged at WARN.",
		}, relayed((*mailbox.Store).FinalConflicts)),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gw_commands_lost_total",
			Help: "Commands this push server's mailbox store ended as lost (-32006 \"lost by the gateway\"), each logged at WARN.",
		}, relayed((*mailbox.Store).Lost)),
	)
	reg.MustRegister(m.sessions, m.connecting, m.delivers, m.acks, m.redirects, m.sheds, m.responses, m.dropped, m.reads, m.carried, m.unsent, m.refusals, m.abandoned, m.codecPanics, m.held, m.late, m.wakeResubscribes, m.reoffers)
	return m
}
