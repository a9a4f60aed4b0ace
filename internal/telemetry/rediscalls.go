package telemetry

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Redis calls sent. Redis's own INFO commandstats counts every command a
// script runs (an FCALL of a batch of 50 steps counts hundreds of calls),
// so it measures the work of Redis, not how often the gateway talks to
// it. These counters are the gateway's side: every command a process
// sends on its own is one call, and every pipeline or MULTI/EXEC
// transaction sent to one server is one call too (one network round
// trip), whatever it carries. A new connection's handshake (HELLO,
// CLIENT SETINFO) counts as well. They are process-wide: every client
// config.NewRedis makes counts into them, and every registry made by
// NewRegistry serves them.
var (
	redisCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gw_redis_calls_total",
		Help: "Calls sent to Redis by this process: kind=command for a command sent on its own (a script call is one), kind=pipeline for a pipeline or MULTI/EXEC sent to one server (one network round trip, however many commands it carries).",
	}, []string{"kind"})
	redisCommandCalls  = redisCalls.WithLabelValues("command")
	redisPipelineCalls = redisCalls.WithLabelValues("pipeline")
	redisPipelined     = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gw_redis_pipelined_commands_total",
		Help: "Commands sent to Redis inside the pipelines counted by gw_redis_calls_total{kind=\"pipeline\"} (MULTI and EXEC included).",
	})
)

// RedisCallsHook is the go-redis hook that counts the calls of
// gw_redis_calls_total. Add it to a client that talks to one server (a
// *redis.Client, or each node of a ClusterClient, so that a pipeline that
// spans nodes counts one call per node and a redirected command counts
// each time it is sent); adding it to a ClusterClient itself as well
// would count its calls twice.
type RedisCallsHook struct{}

// DialHook is the dialer unchanged.
func (RedisCallsHook) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook counts one command call.
func (RedisCallsHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		redisCommandCalls.Inc()
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook counts one pipeline call and its commands.
func (RedisCallsHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		redisPipelineCalls.Inc()
		redisPipelined.Add(float64(len(cmds)))
		return next(ctx, cmds)
	}
}

// redisCallsCollectors are the counters NewRegistry registers.
func redisCallsCollectors() []prometheus.Collector {
	return []prometheus.Collector{redisCalls, redisPipelined}
}
