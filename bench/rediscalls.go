package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// redisSent is what one gateway process counted of the calls it sent to
// Redis (gw_redis_calls_total, gw_redis_pipelined_commands_total; see
// telemetry.RedisCallsHook): commands sent on their own (an FCALL is one
// however many commands it runs), pipelines (one network round trip to
// one server each) and the commands those pipelines carried.
type redisSent struct {
	commands, pipelines, pipelined float64
}

// calls is the calls sent: one per command and one per pipeline.
func (r redisSent) calls() float64 { return r.commands + r.pipelines }

func (r redisSent) sub(o redisSent) redisSent {
	return redisSent{r.commands - o.commands, r.pipelines - o.pipelines, r.pipelined - o.pipelined}
}

// scrapeRedisSent reads a process's Redis call counters from its
// Prometheus endpoint url.
func scrapeRedisSent(ctx context.Context, url string) (redisSent, error) {
	var r redisSent
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return r, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return r, fmt.Errorf("%s answered %s", url, resp.Status)
	}
	found := false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			continue
		}
		switch name {
		case `gw_redis_calls_total{kind="command"}`:
			r.commands, found = v, true
		case `gw_redis_calls_total{kind="pipeline"}`:
			r.pipelines, found = v, true
		case "gw_redis_pipelined_commands_total":
			r.pipelined = v
		}
	}
	if err := sc.Err(); err != nil {
		return r, err
	}
	if !found {
		return r, fmt.Errorf("no gw_redis_calls_total at %s", url)
	}
	return r, nil
}

// RedisSentRow is the Redis calls one gateway process sent over a
// measured run, per message.
type RedisSentRow struct {
	Process string `json:"process"`
	// Commands sent on their own, pipelines sent (each one network round
	// trip to one server) and the commands those carried, per message.
	Commands  float64 `json:"commands_per_msg"`
	Pipelines float64 `json:"pipelines_per_msg"`
	Pipelined float64 `json:"pipelined_commands_per_msg"`
}

// Calls is the calls sent per message: commands plus pipelines.
func (r RedisSentRow) Calls() float64 { return r.Commands + r.Pipelines }
