package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/protocol"
)

// startGateway starts an apiserver, workers msgworkers and push
// pushservers in namespace ns, logging under the section's run folder,
// with their state on the one Redis server.
func (b *Bench) startGateway(ctx context.Context, section, ns string, workers, push int) (*gwproc.Gateway, error) {
	return b.startGatewayOn(ctx, b.redis, section, ns, workers, push)
}

// startGatewayOn is startGateway with every service's GW_REDIS_URL on d,
// and env added to every process's environment.
func (b *Bench) startGatewayOn(ctx context.Context, d *redisDeploy, section, ns string, workers, push int, env ...string) (*gwproc.Gateway, error) {
	if err := b.need("apiserver", "msgworker", "pushserver"); err != nil {
		return nil, err
	}
	g, err := gwproc.Start(ctx, gwproc.Options{
		BinDir:      b.BinDir,
		RunDir:      filepath.Join(b.RunDir, section),
		Namespace:   ns,
		Secret:      b.Secret,
		AMQPURL:     b.AMQPURL,
		RedisURL:    d.URL,
		Workers:     workers,
		PushServers: push,
		ExtraEnv:    append(b.extraEnv(), env...),
	})
	if err != nil {
		return nil, fmt.Errorf("cannot start the gateway: %w", err)
	}
	return g, nil
}

// gatewaySources are the CPU sources of a gateway's processes.
func gatewaySources(g *gwproc.Gateway) []cpuSource {
	var out []cpuSource
	for _, p := range g.All() {
		out = append(out, procSource(p))
	}
	return out
}

// waitOnline waits until every identity has a live session registered in
// Redis (protocol.Keys.Session) of dep, at most d. It returns how many
// have.
func (b *Bench) waitOnline(ctx context.Context, dep *redisDeploy, ns string, ids []string, d time.Duration) (int, error) {
	keys := protocol.NewKeys(ns)
	deadline := time.Now().Add(d)
	for {
		n := 0
		for i := 0; i < len(ids); i += 500 {
			// One EXISTS per key: the keys span partitions, so slots.
			pipe := dep.rdb.Pipeline()
			var cmds []*redis.IntCmd
			for _, id := range ids[i:min(i+500, len(ids))] {
				cmds = append(cmds, pipe.Exists(ctx, keys.Part(protocol.Partition(id, protocol.DefaultPartitions)).Session(id)))
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return n, err
			}
			for _, c := range cmds {
				n += int(c.Val())
			}
		}
		if n >= len(ids) || time.Now().After(deadline) || ctx.Err() != nil {
			return n, ctx.Err()
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitHTTP waits until url answers 200, at most d.
func waitHTTP(ctx context.Context, url string, d time.Duration, p *gwproc.Proc) error {
	deadline := time.Now().Add(d)
	var last string
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if p != nil && p.Pid() != 0 && !p.Running() {
			return fmt.Errorf("%s exited during start:\n%s", p.Name, p.Tail(2000))
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %s: %s", url, d, last)
}

// waitTCP waits until addr accepts connections, at most d.
func waitTCP(ctx context.Context, addr string, d time.Duration, p *gwproc.Proc) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if p != nil && p.Pid() != 0 && !p.Running() {
			return fmt.Errorf("%s exited during start:\n%s", p.Name, p.Tail(2000))
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("nothing listens on %s after %s", addr, d)
}

// startPushServer starts one push server in ns and waits until it
// listens and is a ring member. Node "push-N" is process pushserver-N.
// Its Prometheus metrics (and pprof) are served at b.metricsAddr[p] (see
// scrapeGo).
func (b *Bench) startPushServer(ctx context.Context, section, ns, node string) (*gwproc.Proc, string, error) {
	if err := b.need("pushserver"); err != nil {
		return nil, "", err
	}
	addr, err := gwproc.FreeAddr()
	if err != nil {
		return nil, "", err
	}
	maddr, err := gwproc.FreeAddr()
	if err != nil {
		return nil, "", err
	}
	p := b.proc(section, "pushserver-"+strings.TrimPrefix(node, "push-"), "pushserver", []string{"--mqtt-addr", addr, "--node-id", node, "--metrics-addr", maddr}, b.gwEnv(ns))
	b.metricsAddr[p] = maddr
	p.MetricsURL = "http://" + maddr + "/metrics"
	if err := p.Start(); err != nil {
		return nil, "", err
	}
	if err := waitTCP(ctx, addr, 20*time.Second, p); err != nil {
		_ = p.Stop()
		return nil, "", err
	}
	keys := protocol.NewKeys(ns).Ring(protocol.RingPush)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if n, _ := b.rdb.Exists(ctx, keys.Node(node)).Result(); n == 1 {
			break
		}
		if time.Now().After(deadline) {
			_ = p.Stop()
			return nil, "", fmt.Errorf("push server %s did not join the ring (no key %s) within 10s", node, keys.Node(node))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p, addr, nil
}

// goStats are Go runtime figures of a process, from its /metrics.
type goStats struct {
	goroutines, heapInuse, stackInuse float64
}

// scrapeGo reads the Go collector's figures from a process's Prometheus
// endpoint.
func scrapeGo(ctx context.Context, addr string) (goStats, error) {
	var st goStats
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			continue
		}
		switch name {
		case "go_goroutines":
			st.goroutines = v
		case "go_memstats_heap_inuse_bytes":
			st.heapInuse = v
		case "go_memstats_stack_inuse_bytes":
			st.stackInuse = v
		}
	}
	if st.goroutines == 0 {
		return st, fmt.Errorf("no go_goroutines at http://%s/metrics", addr)
	}
	return st, sc.Err()
}

// logProblems summarises the warnings and errors in the logs of procs:
// counts by level and the most frequent messages.
func logProblems(procs ...*gwproc.Proc) []string {
	var out []string
	for _, p := range procs {
		if p == nil {
			continue
		}
		f, err := os.Open(p.Log)
		if err != nil {
			continue
		}
		counts := map[string]int{}
		msgs := map[string]int{}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			var rec struct {
				Level string `json:"level"`
				Msg   string `json:"msg"`
				Err   string `json:"err"`
			}
			if !bytes.HasPrefix(line, []byte("{")) || json.Unmarshal(line, &rec) != nil {
				if bytes.Contains(line, []byte("panic")) || bytes.Contains(line, []byte("fatal error")) {
					counts["PANIC"]++
					msgs[string(line[:min(len(line), 160)])]++
				}
				continue
			}
			if rec.Level == "WARN" || rec.Level == "ERROR" {
				counts[rec.Level]++
				m := rec.Msg
				if rec.Err != "" {
					m += ": " + rec.Err
				}
				if len(m) > 200 {
					m = m[:200] + "…"
				}
				msgs[rec.Level+" "+m]++
			}
		}
		f.Close()
		if len(counts) == 0 {
			continue
		}
		type kv struct {
			k string
			n int
		}
		var top []kv
		for k, n := range msgs {
			top = append(top, kv{k, n})
		}
		sort.Slice(top, func(i, j int) bool { return top[i].n > top[j].n || top[i].n == top[j].n && top[i].k < top[j].k })
		var parts []string
		for _, t := range top[:min(3, len(top))] {
			parts = append(parts, fmt.Sprintf("%d× “%s”", t.n, t.k))
		}
		var levels []string
		for _, l := range []string{"PANIC", "ERROR", "WARN"} {
			if counts[l] > 0 {
				levels = append(levels, fmt.Sprintf("%d %s", counts[l], l))
			}
		}
		out = append(out, fmt.Sprintf("Log of %s: %s; most frequent: %s.", p.Name, strings.Join(levels, ", "), strings.Join(parts, "; ")))
	}
	return out
}

// runJSON runs a command to completion and decodes its standard output
// as JSON into out; stderr goes to logPath; env is added to the bench's
// own environment. It returns the CPU time the command used.
func runJSON(ctx context.Context, bin string, args, env []string, logPath string, out any) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	cmd.Stderr = f
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	var cpu time.Duration
	if cmd.ProcessState != nil {
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		return cpu, fmt.Errorf("%s %s: %w (see %s)", filepath.Base(bin), args[0], err, logPath)
	}
	if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
		return cpu, fmt.Errorf("cannot decode the JSON report of %s %s: %w", filepath.Base(bin), args[0], err)
	}
	return cpu, nil
}

// logField returns field of the first record of the JSON log at path
// whose msg is msg, formatted with %v; "" when there is none (the log
// names its fields; a process that changes them just loses the figure).
func logField(path, msg, field string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec["msg"] != msg {
			continue
		}
		if v, ok := rec[field]; ok {
			return fmt.Sprint(v)
		}
		return ""
	}
	return ""
}
