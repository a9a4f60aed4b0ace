package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/protocol"
)

// redisDeploy is a Redis deployment the gateway's state can live in: one
// server, or a Redis Cluster. The bench reaches it through the same
// client the services use (config.NewRedis), so every URL form of
// GW_REDIS_URL works.
type redisDeploy struct {
	// Name is "single Redis" or "Redis Cluster".
	Name string
	URL  string
	rdb  redis.UniversalClient
}

// openRedis returns a deployment for rawURL with a client pool sized for
// load.
func openRedis(name, rawURL string, pool int) (*redisDeploy, error) {
	c := config.Common{RedisURL: rawURL}
	rdb, err := c.NewRedis(func(o *redis.UniversalOptions) { o.PoolSize = pool })
	if err != nil {
		return nil, err
	}
	return &redisDeploy{Name: name, URL: rawURL, rdb: rdb}, nil
}

// cluster reports whether d is a Redis Cluster.
func (d *redisDeploy) cluster() bool { return config.IsCluster(d.rdb) }

// redisNode is one redis-server process of a deployment.
type redisNode struct {
	addr    string
	pid     int
	primary bool
	client  *redis.Client // nil for a replica
}

// nodes returns the deployment's servers: the one server and its
// replicas, or every primary and replica of the Cluster, primaries first,
// by address.
func (d *redisDeploy) nodes(ctx context.Context) ([]redisNode, error) {
	cc, ok := d.rdb.(*redis.ClusterClient)
	if !ok {
		return d.serverNodes(ctx)
	}
	var out []redisNode
	var mu sync.Mutex
	collect := func(primary bool) func(context.Context, *redis.Client) error {
		return func(ctx context.Context, n *redis.Client) error {
			pid, err := processID(ctx, n)
			if err != nil {
				return err
			}
			node := redisNode{addr: n.Options().Addr, pid: pid, primary: primary}
			if primary {
				node.client = n
			}
			// ForEach* runs the nodes concurrently.
			mu.Lock()
			out = append(out, node)
			mu.Unlock()
			return nil
		}
	}
	if err := cc.ForEachMaster(ctx, collect(true)); err != nil {
		return nil, err
	}
	if err := cc.ForEachSlave(ctx, collect(false)); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].primary != out[j].primary {
			return out[i].primary
		}
		return out[i].addr < out[j].addr
	})
	return out, nil
}

// serverNodes returns the nodes of one server: the server itself and the
// replicas it reports (INFO replication), each of which is asked for its
// process id. Without replicas the server's addr is "" (its CPU row is
// "redis"); with some, every node has its address, as a Cluster's.
func (d *redisDeploy) serverNodes(ctx context.Context) ([]redisNode, error) {
	c, _ := d.rdb.(*redis.Client)
	m, err := d.rdb.InfoMap(ctx, "server", "replication").Result()
	if err != nil {
		return nil, err
	}
	pid, _ := strconv.Atoi(m["Server"]["process_id"])
	self := redisNode{pid: pid, primary: true, client: c}
	var out []redisNode
	for _, addr := range replicaAddrs(m["Replication"]) {
		r := redis.NewClient(&redis.Options{Addr: addr, Username: c.Options().Username, Password: c.Options().Password})
		rpid, err := processID(ctx, r)
		r.Close()
		if err != nil {
			return nil, fmt.Errorf("cannot read INFO of the replica %s: %w", addr, err)
		}
		out = append(out, redisNode{addr: addr, pid: rpid})
	}
	if len(out) > 0 && c != nil {
		self.addr = c.Options().Addr
	}
	return append([]redisNode{self}, out...), nil
}

// processID returns the process id of the Redis of c (INFO server; 0 when
// INFO does not give one).
func processID(ctx context.Context, c *redis.Client) (int, error) {
	m, err := c.InfoMap(ctx, "server").Result()
	if err != nil {
		return 0, err
	}
	pid, _ := strconv.Atoi(m["Server"]["process_id"])
	return pid, nil
}

// replicaAddrs returns the addresses of the replicas that the fields of
// INFO replication list (slave0, slave1, … in order, each
// "ip=127.0.0.1,port=7302,state=online,offset=…,lag=0"); an entry without
// an IP address or a port in 1-65535 is left out.
func replicaAddrs(repl map[string]string) []string {
	var out []string
	for i := 0; ; i++ {
		v, ok := repl["slave"+strconv.Itoa(i)]
		if !ok {
			return out
		}
		var ip, port string
		for _, kv := range strings.Split(v, ",") {
			switch k, val, _ := strings.Cut(kv, "="); k {
			case "ip":
				ip = val
			case "port":
				port = val
			}
		}
		if n, err := strconv.Atoi(port); net.ParseIP(ip) == nil || err != nil || n < 1 || n > 65535 {
			continue
		}
		out = append(out, net.JoinHostPort(ip, port))
	}
}

// cpuSources are the CPU sources of the deployment's redis-server
// processes: "redis" for one server without replicas, "redis :port
// (primary|replica)" for the nodes of a Cluster or of a server with
// replicas. Each is marked redis, so that a CPU table can
// sum them.
func (d *redisDeploy) cpuSources(ctx context.Context) []cpuSource {
	nodes, err := d.nodes(ctx)
	if err != nil {
		return nil
	}
	var out []cpuSource
	for _, n := range nodes {
		if n.pid <= 0 || gwproc.ProcessCPU(n.pid) <= 0 {
			continue
		}
		name := "redis"
		if n.addr != "" {
			role := "replica"
			if n.primary {
				role = "primary"
			}
			_, port, _ := strings.Cut(n.addr, ":")
			name = fmt.Sprintf("redis :%s (%s)", port, role)
		}
		pid := n.pid
		out = append(out, cpuSource{name: name, redis: true, primary: n.primary, cpu: func() time.Duration { return gwproc.ProcessCPU(pid) }})
	}
	return out
}

// primaries returns a client of every primary (the client itself for one
// server), for INFO commandstats and for cleanup.
func (d *redisDeploy) primaries(ctx context.Context) []*redis.Client {
	nodes, err := d.nodes(ctx)
	if err != nil {
		return nil
	}
	var out []*redis.Client
	for _, n := range nodes {
		if n.client != nil {
			out = append(out, n.client)
		}
	}
	return out
}

// cleanup deletes every key of namespace ns (protocol.Keys.Owns: node
// keys "ns:…", partition keys "{ns:p}:…", ring keys "{ns:ring:g}:…") on
// every primary.
func (d *redisDeploy) cleanup(ctx context.Context, ns string) error {
	keys := protocol.NewKeys(ns)
	var errs []error
	for _, n := range d.primaries(ctx) {
		for _, pattern := range []string{ns + ":*", "{" + ns + ":*"} {
			var cursor uint64
			for {
				found, next, err := n.Scan(ctx, cursor, pattern, 1000).Result()
				if err != nil {
					errs = append(errs, fmt.Errorf("cannot scan keys of %s on %s: %w", ns, n.Options().Addr, err))
					break
				}
				// One UNLINK per key: the keys of a batch span slots.
				pipe := n.Pipeline()
				for _, k := range found {
					if keys.Owns(k) {
						pipe.Unlink(ctx, k)
					}
				}
				if pipe.Len() > 0 {
					if _, err := pipe.Exec(ctx); err != nil {
						errs = append(errs, fmt.Errorf("cannot unlink keys of %s on %s: %w", ns, n.Options().Addr, err))
						break
					}
				}
				if cursor = next; cursor == 0 {
					break
				}
			}
		}
	}
	return errors.Join(errs...)
}

// commandStats reads INFO commandstats of every primary and sums them
// (nil when it cannot).
func commandStats(clients []*redis.Client) map[string]redisCmd {
	if len(clients) == 0 {
		return nil
	}
	out := map[string]redisCmd{}
	for _, c := range clients {
		m := redisCommandStats(c)
		if m == nil {
			return nil
		}
		for k, v := range m {
			s := out[k]
			s.calls += v.calls
			s.usec += v.usec
			out[k] = s
		}
	}
	return out
}

// persistence describes how the deployment keeps its data: appendonly
// and appendfsync of its first primary, and its primaries and replicas
// ("appendonly no, appendfsync everysec; 1 primary, 0 replicas").
func (d *redisDeploy) persistence(ctx context.Context) string {
	nodes, err := d.nodes(ctx)
	if err != nil || len(nodes) == 0 || nodes[0].client == nil {
		return ""
	}
	v, err := nodes[0].client.ConfigGet(ctx, "append*").Result()
	if err != nil {
		return ""
	}
	primaries, replicas := 0, 0
	for _, n := range nodes {
		if n.primary {
			primaries++
		} else {
			replicas++
		}
	}
	return fmt.Sprintf("appendonly %s, appendfsync %s; %d primary(ies), %d replica(s)", v["appendonly"], v["appendfsync"], primaries, replicas)
}

// memory returns the bytes of every key of namespace ns on every primary
// and those of the key one (MEMORY USAGE with SAMPLES 0: exact).
func (d *redisDeploy) memory(ctx context.Context, ns, one string) (all, key int64, err error) {
	keys := protocol.NewKeys(ns)
	for _, n := range d.primaries(ctx) {
		for _, pattern := range []string{ns + ":*", "{" + ns + ":*"} {
			iter := n.Scan(ctx, 0, pattern, 1000).Iterator()
			for iter.Next(ctx) {
				k := iter.Val()
				if !keys.Owns(k) {
					continue
				}
				b, err := n.MemoryUsage(ctx, k, 0).Result()
				if err != nil {
					return 0, 0, fmt.Errorf("cannot read MEMORY USAGE of %s: %w", k, err)
				}
				all += b
				if k == one {
					key = b
				}
			}
			if err := iter.Err(); err != nil {
				return 0, 0, fmt.Errorf("cannot scan keys of %s: %w", ns, err)
			}
		}
	}
	return all, key, nil
}
