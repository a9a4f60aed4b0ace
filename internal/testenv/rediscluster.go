package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// The URLs of the local Redis Cluster and Sentinel deployments that
// deployments/local/redis-cluster.sh and redis-sentinel.sh run (`make
// services` starts both), used when GW_TEST_REDIS_CLUSTER_URL and
// GW_TEST_REDIS_SENTINEL_URL are not set. They are in the forms of
// config.NewRedis.
const (
	DefaultRedisClusterURL  = "redis://127.0.0.1:7101?addr=127.0.0.1:7102&addr=127.0.0.1:7103&addr=127.0.0.1:7104&addr=127.0.0.1:7105&addr=127.0.0.1:7106"
	DefaultRedisSentinelURL = "redis://127.0.0.1:7211?master_name=gw&addr=127.0.0.1:7212&addr=127.0.0.1:7213"
)

// healthWait bounds how long the helpers wait for a deployment that
// answers to become healthy (after a fault test elsewhere, say) before they
// fail the test.
const healthWait = 30 * time.Second

// lockWait bounds how long a test waits for the tests that hold a
// deployment in the other mode (see RedisClusterURL and NewClusterControl).
const lockWait = 3 * time.Minute

// restoreTimeout bounds the restore a control's cleanup does.
const restoreTimeout = 2 * time.Minute

// pollEvery is the pause between two looks while waiting for evidence.
const pollEvery = 100 * time.Millisecond

// RedisServerURL returns RedisURL, the one Redis server, for a test that
// needs no RabbitMQ: with -short it skips t; otherwise it fails t (it does
// not skip) when the server does not answer within a few seconds, naming
// how to start it.
func RedisServerURL(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	rdb, err := dialRedis(ctx, true)
	if err != nil {
		t.Fatalf("testenv: Redis is not reachable at %s (GW_REDIS_URL): %v\nstart it with deployments/local/services.sh (or `make services`) from the repository root, or use go test -short to skip integration tests",
			redact(RedisURL()), err)
	}
	rdb.Close()
	return RedisURL()
}

// RedisClusterURL returns the URL of the Redis Cluster for tests:
// GW_TEST_REDIS_CLUSTER_URL, or DefaultRedisClusterURL. With -short it skips
// t. Otherwise it waits, for at most a few seconds when nothing answers and
// healthWait when the cluster answers, until the cluster is healthy (every
// slot served, every primary with a replica in sync), and fails t (it does
// not skip) when it is not, naming `make services` and the script.
//
// Until t ends, the cluster is shared with other tests, in this process and
// in others: a test that kills nodes (NewClusterControl) waits for t to end
// before it starts, and t waits for such a test to end. A test must not
// call both RedisClusterURL and NewClusterControl (it would wait for
// itself); ClusterControl.URL gives the URL to a fault test.
func RedisClusterURL(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	u := env("GW_TEST_REDIS_CLUSTER_URL", DefaultRedisClusterURL)
	opts := clusterOptions(t, u)
	holdLock(t, u, false)
	requireHealthy(t, "Redis Cluster", "GW_TEST_REDIS_CLUSTER_URL", u, "redis-cluster.sh", func(ctx context.Context) error {
		return clusterHealth(ctx, opts)
	})
	return u
}

// RedisSentinelURL returns the URL of the Redis Sentinel deployment for
// tests: GW_TEST_REDIS_SENTINEL_URL, or DefaultRedisSentinelURL. It skips,
// checks, fails and shares like RedisClusterURL; healthy means the sentinels
// agree on a primary, it has a replica in sync, and they can fail over
// (CKQUORUM).
func RedisSentinelURL(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	u := env("GW_TEST_REDIS_SENTINEL_URL", DefaultRedisSentinelURL)
	opts := sentinelOptions(t, u)
	holdLock(t, u, false)
	requireHealthy(t, "Redis Sentinel deployment", "GW_TEST_REDIS_SENTINEL_URL", u, "redis-sentinel.sh", func(ctx context.Context) error {
		return sentinelHealth(ctx, opts)
	})
	return u
}

// RedisNode is a Redis process on this host, as its INFO describes it.
type RedisNode struct {
	// Addr is host:port.
	Addr string
	// PID is the process ID (INFO server process_id).
	PID int
	// Executable and ConfigFile are what it was started with; Sentinel
	// tells whether it is a sentinel. Together they start it again.
	Executable string
	ConfigFile string
	Sentinel   bool
}

// ClusterControl lets a test kill and restore nodes of the Redis Cluster of
// RedisClusterURL. Make it with NewClusterControl.
type ClusterControl struct {
	url  string
	opts *redis.ClusterOptions
	ctl  control
}

// NewClusterControl returns a control of the test Redis Cluster (the URL of
// RedisClusterURL). It skips with -short, and fails t when the cluster is
// not healthy, like RedisClusterURL. It has the cluster to itself until t
// ends: it waits (up to lockWait) for the tests that use the cluster, in
// every process, to end, and keeps new ones waiting.
//
// When t ends, the nodes it killed and did not restore are restored, and t
// fails if the cluster is then not healthy.
func NewClusterControl(t testing.TB) *ClusterControl {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	u := env("GW_TEST_REDIS_CLUSTER_URL", DefaultRedisClusterURL)
	c := &ClusterControl{url: u, opts: clusterOptions(t, u)}
	c.ctl = control{
		health:   func(ctx context.Context) error { return clusterHealth(ctx, c.opts) },
		username: c.opts.Username, password: c.opts.Password,
	}
	c.ctl.take(t, "Redis Cluster", "GW_TEST_REDIS_CLUSTER_URL", u, DefaultRedisClusterURL, "redis-cluster", c.opts.Addrs)
	return c
}

// URL returns the cluster's URL.
func (c *ClusterControl) URL() string { return c.url }

// Healthy returns nil when the cluster is healthy: every node answers and
// says cluster_state:ok, no node is failing, and every primary that serves
// slots has a replica that is connected and in sync. Otherwise it says what
// is wrong.
func (c *ClusterControl) Healthy(ctx context.Context) error { return c.ctl.health(ctx) }

// PrimaryFor returns the address of the primary that serves key's slot, as
// the first node that answers sees it.
func (c *ClusterControl) PrimaryFor(ctx context.Context, key string) (string, error) {
	var errs []error
	for _, seed := range c.opts.Addrs {
		addr, err := c.primaryFrom(ctx, seed, key)
		if err == nil {
			return addr, nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("testenv: no node knows the primary of %q: %w", key, errors.Join(errs...))
}

func (c *ClusterControl) primaryFrom(ctx context.Context, addr, key string) (string, error) {
	rdb := nodeClient(addr, c.opts.Username, c.opts.Password)
	defer rdb.Close()
	slot, err := rdb.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return "", err
	}
	text, err := rdb.ClusterNodes(ctx).Result()
	if err != nil {
		return "", err
	}
	for _, n := range parseClusterNodes(text) {
		if n.has("master") && !n.failing() && n.serves(int(slot)) {
			return n.addr, nil
		}
	}
	return "", fmt.Errorf("%s: no live primary serves slot %d", addr, slot)
}

// KillPrimaryFor kills (SIGKILL) the primary that serves key's slot, and
// returns once the process is gone and its port refuses connections. The
// node must run on this host.
func (c *ClusterControl) KillPrimaryFor(ctx context.Context, key string) (RedisNode, error) {
	addr, err := c.PrimaryFor(ctx, key)
	if err != nil {
		return RedisNode{}, err
	}
	return c.ctl.kill(ctx, addr)
}

// Kill kills (SIGKILL) the node at addr, which must run on this host, and
// returns once the process is gone and its port refuses connections.
func (c *ClusterControl) Kill(ctx context.Context, addr string) (RedisNode, error) {
	return c.ctl.kill(ctx, addr)
}

// WaitPrimaryChange waits until a node other than old serves key's slot as
// a primary that says so itself (ROLE), and returns its address. It
// returns ctx's error, with the last thing it saw, when ctx ends first.
func (c *ClusterControl) WaitPrimaryChange(ctx context.Context, key, old string) (string, error) {
	var last error
	for {
		addr, err := c.PrimaryFor(ctx, key)
		switch {
		case err != nil:
			last = err
		case addr == old:
			last = fmt.Errorf("the nodes still name %s", old)
		default:
			if err := isPrimary(ctx, addr, c.opts.Username, c.opts.Password); err != nil {
				last = err
			} else {
				return addr, nil
			}
		}
		if err := pause(ctx); err != nil {
			return "", fmt.Errorf("testenv: the primary of %q is still not another node than %s: %w (last: %v)", key, old, err, last)
		}
	}
}

// Restore brings the cluster back to healthy after Kill: with the local
// deployment (the default URL, the repository's script found), it runs
// `deployments/local/redis-cluster.sh start`, which restarts the killed
// nodes (a killed primary rejoins as a replica); otherwise it starts each
// killed node again from its executable and config file. Then it waits
// until the cluster is healthy or ctx ends.
func (c *ClusterControl) Restore(ctx context.Context) error { return c.ctl.restore(ctx) }

// SentinelControl lets a test kill and restore the primary of the Redis
// Sentinel deployment of RedisSentinelURL. Make it with NewSentinelControl.
type SentinelControl struct {
	url  string
	opts *redis.FailoverOptions
	ctl  control
}

// NewSentinelControl is NewClusterControl for the test Redis Sentinel
// deployment (the URL of RedisSentinelURL).
func NewSentinelControl(t testing.TB) *SentinelControl {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	u := env("GW_TEST_REDIS_SENTINEL_URL", DefaultRedisSentinelURL)
	s := &SentinelControl{url: u, opts: sentinelOptions(t, u)}
	s.ctl = control{
		health:   func(ctx context.Context) error { return sentinelHealth(ctx, s.opts) },
		username: s.opts.Username, password: s.opts.Password,
	}
	s.ctl.take(t, "Redis Sentinel deployment", "GW_TEST_REDIS_SENTINEL_URL", u, DefaultRedisSentinelURL, "redis-sentinel", s.opts.SentinelAddrs)
	return s
}

// URL returns the deployment's URL.
func (s *SentinelControl) URL() string { return s.url }

// Healthy returns nil when every sentinel answers and they agree on the
// primary, which is a master with a replica in sync, that every sentinel
// sees as such, and CKQUORUM passes on each. Otherwise it says what is
// wrong.
func (s *SentinelControl) Healthy(ctx context.Context) error { return s.ctl.health(ctx) }

// Primary returns the address of the primary, as the first sentinel that
// answers names it (SENTINEL GET-MASTER-ADDR-BY-NAME).
func (s *SentinelControl) Primary(ctx context.Context) (string, error) {
	var errs []error
	for _, addr := range s.opts.SentinelAddrs {
		p, err := masterAddr(ctx, s.opts, addr)
		if err == nil {
			return p, nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("testenv: no sentinel names the primary: %w", errors.Join(errs...))
}

// KillPrimary kills (SIGKILL) the primary, which must run on this host, and
// returns once the process is gone and its port refuses connections.
func (s *SentinelControl) KillPrimary(ctx context.Context) (RedisNode, error) {
	addr, err := s.Primary(ctx)
	if err != nil {
		return RedisNode{}, err
	}
	return s.ctl.kill(ctx, addr)
}

// WaitFailover waits until every sentinel that answers names a primary
// other than old, the same one, and that node says it is a master (ROLE);
// it returns its address. It returns ctx's error, with the last thing it
// saw, when ctx ends first.
func (s *SentinelControl) WaitFailover(ctx context.Context, old string) (string, error) {
	var last error
	for {
		addr, err := s.agreedPrimary(ctx)
		switch {
		case err != nil:
			last = err
		case addr == old:
			last = fmt.Errorf("the sentinels still name %s", old)
		default:
			if err := isPrimary(ctx, addr, s.opts.Username, s.opts.Password); err != nil {
				last = err
			} else {
				return addr, nil
			}
		}
		if err := pause(ctx); err != nil {
			return "", fmt.Errorf("testenv: no failover away from %s: %w (last: %v)", old, err, last)
		}
	}
}

// agreedPrimary returns the primary that every sentinel that answers names.
func (s *SentinelControl) agreedPrimary(ctx context.Context) (string, error) {
	seen := ""
	for _, addr := range s.opts.SentinelAddrs {
		p, err := masterAddr(ctx, s.opts, addr)
		if err != nil {
			continue
		}
		if seen != "" && p != seen {
			return "", fmt.Errorf("the sentinels disagree (%s, %s)", seen, p)
		}
		seen = p
	}
	if seen == "" {
		return "", errors.New("no sentinel answers")
	}
	return seen, nil
}

// Restore is ClusterControl.Restore for the Sentinel deployment, with
// deployments/local/redis-sentinel.sh: the killed primary comes back as a
// replica of the one the sentinels promoted.
func (s *SentinelControl) Restore(ctx context.Context) error { return s.ctl.restore(ctx) }

// control is what both controls share: killing local nodes, restoring them,
// take gives the deployment of url (name, read from envVar, def when
// unset; started by deployments/local/<script>.sh, files in run/<script>)
// to t alone: it waits for the tests that use it to end, checks that it
// is healthy, finds its run folder, and restores what t killed when t
// ends.
func (c *control) take(t testing.TB, name, envVar, url, def, script string, addrs []string) {
	t.Helper()
	c.t = t
	c.script = localScript(url, def, script+".sh")
	holdLock(t, url, true)
	requireHealthy(t, name, envVar, url, script+".sh", c.health)
	c.findRunDir(addrs, script)
	t.Cleanup(c.cleanup)
}

// and the cleanup.
type control struct {
	t        testing.TB
	script   string // "" when the deployment is not the script's
	runDir   string // the GW_RUN_DIR of the script run that started it
	health   func(context.Context) error
	username string
	password string

	mu     sync.Mutex
	killed []RedisNode
}

func (c *control) kill(ctx context.Context, addr string) (RedisNode, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return RedisNode{}, fmt.Errorf("testenv: cannot kill %s: %w", addr, err)
	}
	if !isLoopback(host) {
		return RedisNode{}, fmt.Errorf("testenv: cannot kill %s: not on this host (a fault test needs the local deployment)", addr)
	}
	node, err := nodeInfo(ctx, addr, c.username, c.password)
	if err != nil {
		return RedisNode{}, fmt.Errorf("testenv: cannot kill %s: %w", addr, err)
	}
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", node.PID)); err == nil &&
		!strings.Contains(string(cmdline), "redis") {
		return RedisNode{}, fmt.Errorf("testenv: cannot kill %s: pid %d is not a Redis of this host (%q)", addr, node.PID, cmdline)
	}
	c.mu.Lock()
	c.killed = append(c.killed, node)
	c.mu.Unlock()
	if err := syscall.Kill(node.PID, syscall.SIGKILL); err != nil {
		return node, fmt.Errorf("testenv: cannot kill %s (pid %d): %w", addr, node.PID, err)
	}
	for {
		gone := syscall.Kill(node.PID, 0) == syscall.ESRCH
		if gone {
			conn, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				return node, nil
			}
			conn.Close()
		}
		if err := pause(ctx); err != nil {
			return node, fmt.Errorf("testenv: %s (pid %d) still there after SIGKILL: %w", addr, node.PID, err)
		}
	}
}

// findRunDir sets runDir from the config file of the first node at addrs
// that answers, when the script started it (<run dir>/<folder>/<port>/…);
// otherwise it clears script: restore then starts the killed nodes itself.
func (c *control) findRunDir(addrs []string, folder string) {
	if c.script == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*dialTimeout)
	defer cancel()
	for _, addr := range addrs {
		n, err := nodeInfo(ctx, addr, c.username, c.password)
		if err != nil {
			continue
		}
		portDir := filepath.Dir(n.ConfigFile)
		if n.ConfigFile != "" && filepath.Base(filepath.Dir(portDir)) == folder {
			c.runDir = filepath.Dir(filepath.Dir(portDir))
			return
		}
		break
	}
	c.t.Logf("testenv: the deployment was not started by %s; a restore starts the killed nodes itself", c.script)
	c.script = ""
}

func (c *control) restore(ctx context.Context) error {
	c.mu.Lock()
	killed := c.killed
	c.mu.Unlock()
	if c.script != "" {
		cmd := exec.CommandContext(ctx, "bash", c.script, "start")
		// This test holds the lock the script would wait for; and the
		// script must look after the files of the run that started the
		// nodes, perhaps another checkout's.
		cmd.Env = append(os.Environ(), "GW_TESTENV_LOCK_HELD=1", "GW_RUN_DIR="+c.runDir)
		cmd.WaitDelay = 5 * time.Second
		out, err := cmd.CombinedOutput()
		c.t.Logf("testenv: bash %s start:\n%s", c.script, strings.TrimSpace(string(out)))
		if err != nil {
			return fmt.Errorf("testenv: bash %s start: %w", c.script, err)
		}
	} else {
		for _, n := range killed {
			if err := startNode(n); err != nil {
				return err
			}
		}
	}
	var last error
	for {
		if last = c.health(ctx); last == nil {
			c.mu.Lock()
			c.killed = nil
			c.mu.Unlock()
			return nil
		}
		if err := pause(ctx); err != nil {
			return fmt.Errorf("testenv: not healthy after the restore: %w (last: %v)", err, last)
		}
	}
}

// cleanup restores what a test killed and did not restore, and fails the
// test when the deployment is not healthy afterwards.
func (c *control) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), restoreTimeout)
	defer cancel()
	c.mu.Lock()
	n := len(c.killed)
	c.mu.Unlock()
	if n == 0 {
		if err := c.health(ctx); err == nil {
			return
		}
	}
	if err := c.restore(ctx); err != nil {
		c.t.Errorf("testenv: cannot restore the deployment the test changed: %v", err)
	}
}

// startNode starts a killed node again, from its executable and config
// file, in a session of its own (the configs of the local scripts
// daemonize; a node that does not outlives the test anyway).
func startNode(n RedisNode) error {
	if n.Executable == "" || n.ConfigFile == "" {
		return fmt.Errorf("testenv: cannot start %s again: it was started without a config file", n.Addr)
	}
	args := []string{n.ConfigFile}
	if n.Sentinel {
		args = append(args, "--sentinel")
	}
	cmd := exec.Command(n.Executable, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("testenv: cannot start %s again: %w", n.Addr, err)
	}
	go cmd.Wait() //nolint:errcheck // reaps it; a daemonizing server exits at once
	return nil
}

// nodeInfo reads the process facts of the Redis at addr.
func nodeInfo(ctx context.Context, addr, username, password string) (RedisNode, error) {
	rdb := nodeClient(addr, username, password)
	defer rdb.Close()
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return RedisNode{}, err
	}
	f := infoFields(info)
	pid, err := strconv.Atoi(f["process_id"])
	if err != nil || pid <= 1 {
		return RedisNode{}, fmt.Errorf("INFO server has no usable process_id (%q)", f["process_id"])
	}
	return RedisNode{Addr: addr, PID: pid, Executable: executable(f["executable"]), ConfigFile: f["config_file"], Sentinel: f["redis_mode"] == "sentinel"}, nil
}

// executable returns the program that starts the Redis whose INFO names
// info as its executable: info itself when it exists, else the program of
// that name on the PATH. (Redis derives info from argv[0] and its working
// folder, which is wrong for a program found on the PATH; and
// /proc/<pid>/exe will not do: Debian's redis-server is a link to
// redis-check-rdb, which picks its role by the name it is called by.)
func executable(info string) string {
	if st, err := os.Stat(info); err == nil && !st.IsDir() {
		return info
	}
	name := filepath.Base(info)
	if name == "." || name == "/" || name == "" {
		name = "redis-server"
	}
	if exe, err := exec.LookPath(name); err == nil {
		return exe
	}
	if exe, err := exec.LookPath("redis-server"); err == nil {
		return exe
	}
	return info
}

// isPrimary returns nil when the Redis at addr says it is a master.
func isPrimary(ctx context.Context, addr, username, password string) error {
	rdb := nodeClient(addr, username, password)
	defer rdb.Close()
	role, err := rdb.Do(ctx, "ROLE").Slice()
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	if len(role) == 0 || role[0] != "master" {
		return fmt.Errorf("%s is not a master (ROLE %v)", addr, role)
	}
	return nil
}

// --- health ------------------------------------------------------------------

// clusterHealth returns nil when the cluster is healthy (see
// ClusterControl.Healthy), and otherwise what is wrong.
func clusterHealth(ctx context.Context, opts *redis.ClusterOptions) error {
	var text string
	var errs []error
	for _, seed := range opts.Addrs {
		rdb := nodeClient(seed, opts.Username, opts.Password)
		t, err := rdb.ClusterNodes(ctx).Result()
		rdb.Close()
		if err == nil {
			text = t
			break
		}
		errs = append(errs, fmt.Errorf("%s: %w", seed, err))
	}
	if text == "" {
		return &unreachableError{errors.Join(errs...)}
	}
	nodes := parseClusterNodes(text)
	replicas := map[string]int{}
	for _, n := range nodes {
		if n.failing() {
			return fmt.Errorf("node %s is %s", n.addr, strings.Join(n.flags, ","))
		}
		if n.has("slave") && n.link == "connected" {
			replicas[n.master]++
		}
	}
	primaries := 0
	for _, n := range nodes {
		if !n.has("master") || len(n.slots) == 0 {
			continue
		}
		primaries++
		if replicas[n.id] == 0 {
			return fmt.Errorf("primary %s has no connected replica", n.addr)
		}
	}
	if primaries == 0 {
		return errors.New("no primary serves slots")
	}
	for _, n := range nodes {
		rdb := nodeClient(n.addr, opts.Username, opts.Password)
		info, err := rdb.ClusterInfo(ctx).Result()
		var repl string
		if err == nil && n.has("slave") {
			repl, err = rdb.Info(ctx, "replication").Result()
		}
		rdb.Close()
		if err != nil {
			return fmt.Errorf("node %s: %w", n.addr, err)
		}
		if s := infoFields(info)["cluster_state"]; s != "ok" {
			return fmt.Errorf("node %s: cluster_state:%s", n.addr, s)
		}
		if n.has("slave") {
			if s := infoFields(repl)["master_link_status"]; s != "up" {
				return fmt.Errorf("replica %s: master_link_status:%s", n.addr, s)
			}
		}
	}
	return nil
}

// sentinelHealth returns nil when the Sentinel deployment is healthy (see
// SentinelControl.Healthy), and otherwise what is wrong.
func sentinelHealth(ctx context.Context, opts *redis.FailoverOptions) error {
	primary := ""
	answered := 0
	var errs []error
	for _, addr := range opts.SentinelAddrs {
		p, err := masterAddr(ctx, opts, addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("sentinel %s: %w", addr, err))
			continue
		}
		answered++
		if primary != "" && p != primary {
			return fmt.Errorf("the sentinels disagree on the primary (%s, %s)", primary, p)
		}
		primary = p
	}
	if answered == 0 {
		return &unreachableError{errors.Join(errs...)}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, addr := range opts.SentinelAddrs {
		sc := sentinelClient(opts, addr)
		q, err := sc.CkQuorum(ctx, opts.MasterName).Result()
		var master map[string]string
		var reps []map[string]string
		if err == nil {
			master, err = sc.Master(ctx, opts.MasterName).Result()
		}
		if err == nil {
			reps, err = sc.Replicas(ctx, opts.MasterName).Result()
		}
		sc.Close()
		if err != nil {
			return fmt.Errorf("sentinel %s: %w", addr, err)
		}
		if !strings.HasPrefix(q, "OK") {
			return fmt.Errorf("sentinel %s: CKQUORUM %s", addr, q)
		}
		if master["flags"] != "master" {
			return fmt.Errorf("sentinel %s: the primary's flags are %q", addr, master["flags"])
		}
		if len(reps) == 0 {
			return fmt.Errorf("sentinel %s sees no replica", addr)
		}
		for _, r := range reps {
			if r["flags"] != "slave" || r["master-link-status"] != "ok" {
				return fmt.Errorf("sentinel %s: replica %s:%s has flags %q, master link %q", addr, r["ip"], r["port"], r["flags"], r["master-link-status"])
			}
		}
	}
	rdb := nodeClient(primary, opts.Username, opts.Password)
	defer rdb.Close()
	if err := isPrimary(ctx, primary, opts.Username, opts.Password); err != nil {
		return err
	}
	repl, err := rdb.Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("primary %s: %w", primary, err)
	}
	f := infoFields(repl)
	if n, _ := strconv.Atoi(f["connected_slaves"]); n == 0 {
		return fmt.Errorf("primary %s has no connected replica", primary)
	}
	for k, v := range f {
		if strings.HasPrefix(k, "slave") && strings.Contains(v, "state=") && !strings.Contains(v, "state=online") {
			return fmt.Errorf("primary %s: replica %s", primary, v)
		}
	}
	return nil
}

// unreachableError says that no node of a deployment answers.
type unreachableError struct{ err error }

func (e *unreachableError) Error() string { return "nothing answers: " + e.err.Error() }
func (e *unreachableError) Unwrap() error { return e.err }

// requireHealthy fails t unless check passes: at once when nothing
// answers, after healthWait when the deployment stays unhealthy.
func requireHealthy(t testing.TB, what, variable, u, script string, check func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), healthWait)
	defer cancel()
	var err error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 3*dialTimeout)
		err = check(cctx)
		ccancel()
		var unreachable *unreachableError
		if err == nil || errors.As(err, &unreachable) || pause(ctx) != nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("testenv: the %s at %s (%s) is not usable: %v\nstart it with `make services` or `bash deployments/local/%s start` from the repository root, or use go test -short to skip integration tests",
			what, redactAll(u), variable, err, script)
	}
}

// --- CLUSTER NODES -----------------------------------------------------------

type clusterNode struct {
	id, addr string
	flags    []string
	master   string
	link     string
	slots    [][2]int
}

func (n clusterNode) has(flag string) bool {
	for _, f := range n.flags {
		if f == flag {
			return true
		}
	}
	return false
}

func (n clusterNode) failing() bool {
	return n.has("fail") || n.has("fail?") || n.has("handshake") || n.has("noaddr")
}

func (n clusterNode) serves(slot int) bool {
	for _, r := range n.slots {
		if r[0] <= slot && slot <= r[1] {
			return true
		}
	}
	return false
}

// parseClusterNodes reads the reply of CLUSTER NODES: <id> <ip:port@cport
// [,hostname]> <flags> <primary> <ping-sent> <pong-recv> <epoch> <link>
// <slot>...
func parseClusterNodes(text string) []clusterNode {
	var nodes []clusterNode
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr := f[1]
		if i := strings.IndexAny(addr, "@,"); i >= 0 {
			addr = addr[:i]
		}
		n := clusterNode{id: f[0], addr: addr, flags: strings.Split(f[2], ","), master: f[3], link: f[7]}
		for _, s := range f[8:] {
			if strings.HasPrefix(s, "[") { // a slot being migrated or imported
				continue
			}
			lo, hi, ok := strings.Cut(s, "-")
			a, err1 := strconv.Atoi(lo)
			b := a
			var err2 error
			if ok {
				b, err2 = strconv.Atoi(hi)
			}
			if err1 == nil && err2 == nil {
				n.slots = append(n.slots, [2]int{a, b})
			}
		}
		nodes = append(nodes, n)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].addr < nodes[j].addr })
	return nodes
}

// infoFields reads the name:value lines of an INFO reply.
func infoFields(info string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			m[k] = v
		}
	}
	return m
}

// --- clients -----------------------------------------------------------------

// nodeClient returns a client for one node that gives up at the first
// failure, for checks.
func nodeClient(addr, username, password string) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr: addr, Username: username, Password: password,
		DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
		MaxRetries: -1, DialerRetries: 1, PoolSize: 1,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
}

func sentinelClient(opts *redis.FailoverOptions, addr string) *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{
		Addr: addr, Username: opts.SentinelUsername, Password: opts.SentinelPassword,
		DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
		MaxRetries: -1, DialerRetries: 1, PoolSize: 1,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
}

// masterAddr asks the sentinel at addr for the primary's address.
func masterAddr(ctx context.Context, opts *redis.FailoverOptions, addr string) (string, error) {
	sc := sentinelClient(opts, addr)
	defer sc.Close()
	hp, err := sc.GetMasterAddrByName(ctx, opts.MasterName).Result()
	if err != nil {
		return "", err
	}
	if len(hp) != 2 {
		return "", fmt.Errorf("GET-MASTER-ADDR-BY-NAME %s = %v", opts.MasterName, hp)
	}
	return net.JoinHostPort(hp[0], hp[1]), nil
}

func clusterOptions(t testing.TB, u string) *redis.ClusterOptions {
	t.Helper()
	opts, err := redis.ParseClusterURL(u)
	if err != nil {
		t.Fatalf("testenv: cannot parse the Redis Cluster URL %s: %v", redactAll(u), unwrapURL(err))
	}
	return opts
}

func sentinelOptions(t testing.TB, u string) *redis.FailoverOptions {
	t.Helper()
	opts, err := redis.ParseFailoverURL(u)
	if err != nil {
		t.Fatalf("testenv: cannot parse the Redis Sentinel URL %s: %v", redactAll(u), unwrapURL(err))
	}
	if opts.MasterName == "" {
		t.Fatalf("testenv: the Redis Sentinel URL %s has no master_name", redactAll(u))
	}
	return opts
}

// unwrapURL drops a *url.Error, which repeats the URL and its password.
func unwrapURL(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// pause waits pollEvery, or returns ctx's error when ctx ends first.
func pause(ctx context.Context) error {
	timer := time.NewTimer(pollEvery)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// localScript returns the path of the repository's script for the
// deployment when u is the script's (the default URL), and "" otherwise.
func localScript(u, def, name string) string {
	if u != def {
		return ""
	}
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "deployments", "local", name)
			if _, err := os.Stat(p); err == nil {
				return p
			}
			return ""
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// --- sharing a deployment ----------------------------------------------------

// redactAll is redact that also hides the values of password-like query
// parameters (a Sentinel URL carries the data nodes' password there).
func redactAll(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.RawQuery != "" {
		parts := strings.Split(u.RawQuery, "&")
		for i, p := range parts {
			if k, _, ok := strings.Cut(p, "="); ok && strings.Contains(strings.ToLower(k), "password") {
				parts[i] = k + "=xxxxx"
			}
		}
		u.RawQuery = strings.Join(parts, "&")
	}
	return u.Redacted()
}

// lockPath is the lock file of the deployment at u: named for the first
// address of u, which the local scripts know too (they wait for a fault
// test that holds it exclusively before they start or stop anything).
func lockPath(u string) string {
	host := "unknown"
	if pu, err := url.Parse(u); err == nil && pu.Host != "" {
		host = pu.Host
	}
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' {
			return r
		}
		return '-'
	}, host)
	return filepath.Join(os.TempDir(), "gwtest-redis-"+name+".lock")
}

// holdLock takes a lock on the deployment at u, shared or exclusive, across
// processes (flock on a file in the temporary folder), and releases it when
// t ends. It fails t after lockWait.
func holdLock(t testing.TB, u string, exclusive bool) {
	t.Helper()
	path := lockPath(u)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatalf("testenv: cannot open the lock file %s: %v", path, err)
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	deadline := time.Now().Add(lockWait)
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			t.Fatalf("testenv: cannot lock %s (%s) for %v: %v; a test that kills nodes waits for the tests that use the deployment, and the other way round (a test that does both waits for itself)",
				redactAll(u), path, lockWait, err)
		}
		time.Sleep(pollEvery)
	}
	t.Cleanup(func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing unlocks too
		f.Close()
	})
}
