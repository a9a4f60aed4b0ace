package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Private servers for fault tests (`make faults`): a Redis server and a
// RabbitMQ node of the test's own, on free loopback ports with their own
// data folders, that the test may kill, freeze and restart without
// touching the shared servers (6379, 5672) other tests use. Each is
// stopped, and its folder removed, when the test ends.

// startWait bounds how long a private server may take to accept
// connections after a start (a RabbitMQ node takes 15-30 s on a loaded
// 2-core machine).
const startWait = 90 * time.Second

// proc is one private server process, run in a process group of its own
// so that a signal reaches the whole server (RabbitMQ's start script and
// its Erlang VM).
type proc struct {
	name string
	argv []string
	env  []string
	dir  string
	log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("testenv: %s is running already", p.name)
		}
	}
	lf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("testenv: cannot start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		lf.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// signal sends sig to the server's process group.
func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("testenv: %s was never started", p.name)
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil {
		return fmt.Errorf("testenv: signal %v to %s: %w", sig, p.name, err)
	}
	return nil
}

// kill sends SIGKILL to the group and waits (bounded) until it has ended.
func (p *proc) kill() error {
	if err := p.signal(syscall.SIGKILL); err != nil {
		return err
	}
	p.mu.Lock()
	done := p.done
	pgid := p.cmd.Process.Pid
	p.mu.Unlock()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("testenv: %s did not end within 10s of SIGKILL", p.name)
	}
	// The group's other processes (an Erlang VM under its start script)
	// end with it; wait until none is left.
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(-pgid, 0) == nil {
		if time.Now().After(deadline) {
			return fmt.Errorf("testenv: processes of %s left after SIGKILL", p.name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// stop ends the server for good: SIGCONT (it may be frozen), SIGKILL.
func (p *proc) stop() {
	p.mu.Lock()
	started := p.cmd != nil
	p.mu.Unlock()
	if !started {
		return
	}
	_ = p.signal(syscall.SIGCONT)
	_ = p.kill()
}

// tail returns the end of the server's log, for failure messages.
func (p *proc) tail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// waitTCP waits until addr accepts a connection, or ctx ends.
func waitTCP(ctx context.Context, addr string) error {
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nothing accepts connections on %s: %w", addr, ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}

// PrivateRedis is a Redis server of one test; see StartRedis.
type PrivateRedis struct {
	p    *proc
	addr string
	dir  string
}

// StartRedis starts a Redis server of t's own on a free loopback port,
// with an append-only file in a folder of its own, fsynced as fsync says
// ("always" or "everysec"), and no RDB snapshots. It is killed when t
// ends. It fails t when redis-server is missing or does not start.
func StartRedis(t testing.TB, fsync string) *PrivateRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testenv: redis-server is not installed (deployments/local/services.sh installs it): %v", err)
	}
	dir := t.TempDir()
	port := FreePort(t)
	r := &PrivateRedis{addr: fmt.Sprintf("127.0.0.1:%d", port), dir: dir}
	r.p = &proc{name: "private redis " + r.addr, dir: dir, log: filepath.Join(dir, "redis.log"),
		argv: []string{bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
			"--appendonly", "yes", "--appendfsync", fsync, "--save", "", "--protected-mode", "no",
			"--aof-load-truncated", "yes"}}
	t.Cleanup(r.p.stop)
	ctx, cancel := context.WithTimeout(context.Background(), startWait)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return r
}

// URL is the server's URL for GW_REDIS_URL.
func (r *PrivateRedis) URL() string { return "redis://" + r.addr + "/0" }

// Addr is the server's host:port.
func (r *PrivateRedis) Addr() string { return r.addr }

// Start starts the server (again, on the same port and files) and waits
// until it answers PING.
func (r *PrivateRedis) Start(ctx context.Context) error {
	if err := r.p.start(); err != nil {
		return err
	}
	c := redis.NewClient(&redis.Options{Addr: r.addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	for {
		err := c.Ping(ctx).Err()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: %s does not answer PING: %w; its log:\n%s", r.p.name, err, r.p.tail())
		case <-time.After(pollEvery):
		}
	}
}

// Kill sends SIGKILL to the server and waits until it has ended.
func (r *PrivateRedis) Kill() error { return r.p.kill() }

// Freeze stops the server with SIGSTOP; Thaw resumes it (SIGCONT).
func (r *PrivateRedis) Freeze() error { return r.p.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen server.
func (r *PrivateRedis) Thaw() error { return r.p.signal(syscall.SIGCONT) }

// Pause runs CLIENT PAUSE d ALL: the server answers no client for d.
func (r *PrivateRedis) Pause(ctx context.Context, d time.Duration) error {
	c := redis.NewClient(&redis.Options{Addr: r.addr})
	defer c.Close()
	return c.Do(ctx, "CLIENT", "PAUSE", d.Milliseconds(), "ALL").Err()
}

// AOFSize is the size of the newest append-only file, to emulate a host
// crash with CrashCut.
func (r *PrivateRedis) AOFSize() (int64, error) {
	f, err := r.incrFile()
	if err != nil {
		return 0, err
	}
	st, err := os.Stat(f)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// CrashCut emulates a host crash under appendfsync everysec: it kills the
// server with SIGKILL and cuts its newest append-only file back to size
// (its size a second before, from AOFSize: the writes of the last second
// never reached the disk). Start brings the server back with what is left.
func (r *PrivateRedis) CrashCut(size int64) error {
	if err := r.Kill(); err != nil {
		return err
	}
	f, err := r.incrFile()
	if err != nil {
		return err
	}
	return os.Truncate(f, size)
}

// incrFile is the newest incremental append-only file (Redis 7's
// multi-part AOF: appendonlydir/<name>.N.incr.aof).
func (r *PrivateRedis) incrFile() (string, error) {
	files, err := filepath.Glob(filepath.Join(r.dir, "appendonlydir", "*.incr.aof"))
	if err != nil || len(files) == 0 {
		return "", fmt.Errorf("testenv: no incremental AOF in %s", r.dir)
	}
	best, bestN := "", -1
	for _, f := range files {
		parts := strings.Split(filepath.Base(f), ".")
		if len(parts) < 4 {
			continue
		}
		if n, err := strconv.Atoi(parts[len(parts)-3]); err == nil && n > bestN {
			best, bestN = f, n
		}
	}
	if best == "" {
		return "", fmt.Errorf("testenv: no incremental AOF in %s", r.dir)
	}
	return best, nil
}

// PrivateRabbit is a RabbitMQ node of one test; see StartRabbit.
type PrivateRabbit struct {
	p       *proc
	node    string
	addr    string
	home    string
	env     []string
	ctlPath string
}

// rabbitBin is where Debian's package keeps the scripts that run as the
// calling user (/usr/sbin's wrappers switch to the rabbitmq user, and so
// to its HOME and Erlang cookie).
const rabbitBin = "/usr/lib/rabbitmq/bin"

// StartRabbit starts a RabbitMQ node of t's own: its own node name,
// AMQP and distribution ports on loopback, data and log folders, and HOME
// (so its own Erlang cookie), no plugins, and a configuration file of
// its own (the system's rabbitmq.conf and rabbitmq-env.conf are not
// read). It is killed when t ends. It fails t when RabbitMQ is not
// installed or the node does not start within startWait.
func StartRabbit(t testing.TB) *PrivateRabbit {
	t.Helper()
	r := newRabbit(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), startWait)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return r
}

// StartRabbitCluster starts n private RabbitMQ nodes (as StartRabbit)
// that share an Erlang cookie, and joins the others to the first: one
// cluster, whose quorum queues have a member on every node. They are
// killed when t ends.
func StartRabbitCluster(t testing.TB, n int) []*PrivateRabbit {
	t.Helper()
	cookie := fmt.Sprintf("GWFAULTS%d", time.Now().UnixNano())
	nodes := make([]*PrivateRabbit, n)
	for i := range nodes {
		nodes[i] = newRabbit(t, cookie)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*startWait)
	defer cancel()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, r := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.Start(ctx)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range nodes[1:] {
		for _, args := range [][]string{{"stop_app"}, {"join_cluster", nodes[0].node}, {"start_app"}} {
			if _, err := r.Ctl(ctx, args...); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.waitAMQP(ctx); err != nil {
			t.Fatal(err)
		}
	}
	out, err := nodes[0].Ctl(ctx, "cluster_status", "--formatter", "json")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range nodes {
		if !strings.Contains(out, r.node) {
			t.Fatalf("testenv: %s is not in the cluster: %s", r.node, out)
		}
	}
	return nodes
}

// Node is the node's Erlang name (name@localhost).
func (r *PrivateRabbit) Node() string { return r.node }

// newRabbit prepares a private node (its folders, files and
// environment; with cookie, the Erlang cookie in its HOME) without
// starting it; t's cleanup kills it.
func newRabbit(t testing.TB, cookie string) *PrivateRabbit {
	t.Helper()
	server := filepath.Join(rabbitBin, "rabbitmq-server")
	if _, err := os.Stat(server); err != nil {
		t.Fatalf("testenv: RabbitMQ is not installed at %s (deployments/local/services.sh installs it): %v", rabbitBin, err)
	}
	dir := t.TempDir()
	amqpPort, distPort := FreePort(t), FreePort(t)
	name := fmt.Sprintf("gwf%d@localhost", amqpPort)
	home := filepath.Join(dir, "home")
	for _, d := range []string{home, filepath.Join(dir, "mnesia"), filepath.Join(dir, "log")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"enabled_plugins":   "[].\n",
		"rabbitmq-env.conf": "",
		"rabbitmq.conf": fmt.Sprintf("listeners.tcp.1 = 127.0.0.1:%d\nloopback_users = none\n"+
			"vm_memory_high_watermark.relative = 0.6\ndisk_free_limit.absolute = 50MB\n", amqpPort),
	}
	for f, body := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := &PrivateRabbit{node: name, addr: fmt.Sprintf("127.0.0.1:%d", amqpPort), home: home,
		ctlPath: filepath.Join(rabbitBin, "rabbitmqctl")}
	r.env = []string{
		"HOME=" + home,
		"RABBITMQ_CONF_ENV_FILE=" + filepath.Join(dir, "rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE=" + filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE=" + filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_NODENAME=" + name,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT=" + strconv.Itoa(amqpPort),
		"RABBITMQ_DIST_PORT=" + strconv.Itoa(distPort),
		"RABBITMQ_MNESIA_BASE=" + filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE=" + filepath.Join(dir, "log"),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}",
	}
	r.p = &proc{name: "private RabbitMQ " + name, dir: dir, log: filepath.Join(dir, "rabbitmq.out"),
		argv: []string{server}, env: r.env}
	if cookie != "" {
		if err := os.WriteFile(filepath.Join(home, ".erlang.cookie"), []byte(cookie), 0o400); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(r.p.stop)
	return r
}

// URL is the node's AMQP URL for GW_AMQP_URL.
func (r *PrivateRabbit) URL() string { return "amqp://guest:guest@" + r.addr + "/" }

// Start starts the node (again, with the same data) and waits until it
// accepts AMQP connections.
func (r *PrivateRabbit) Start(ctx context.Context) error {
	if err := r.p.start(); err != nil {
		return err
	}
	return r.waitAMQP(ctx)
}

func (r *PrivateRabbit) waitAMQP(ctx context.Context) error {
	if err := waitTCP(ctx, r.addr); err != nil {
		return fmt.Errorf("testenv: %s: %w; its output:\n%s", r.p.name, err, r.p.tail())
	}
	return nil
}

// Kill sends SIGKILL to the node (its Erlang VM) and waits until it has
// ended.
func (r *PrivateRabbit) Kill() error { return r.p.kill() }

// Freeze stops the node with SIGSTOP; Thaw resumes it.
func (r *PrivateRabbit) Freeze() error { return r.p.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen node (SIGCONT).
func (r *PrivateRabbit) Thaw() error { return r.p.signal(syscall.SIGCONT) }

// Ctl runs rabbitmqctl with args against the node (with the node's HOME,
// so its cookie) and returns its output.
func (r *PrivateRabbit) Ctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, r.ctlPath, append([]string{"-n", r.node}, args...)...)
	cmd.Env = append(os.Environ(), r.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("testenv: rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// StopApp stops the RabbitMQ application (the VM stays up): every
// connection is closed and none is accepted until StartApp.
func (r *PrivateRabbit) StopApp(ctx context.Context) error {
	_, err := r.Ctl(ctx, "stop_app")
	return err
}

// StartApp starts the application again and waits until the node
// accepts AMQP connections. A start_app that fails (on a loaded machine
// rabbitmqctl may give up with exit status 69 while the node is busy) is
// tried again every 2 s until ctx is done: the fault is the stop, not a
// node left down.
func (r *PrivateRabbit) StartApp(ctx context.Context) error {
	for {
		_, err := r.Ctl(ctx, "start_app")
		if err == nil {
			return r.waitAMQP(ctx)
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(2 * time.Second):
		}
	}
}

// MemoryAlarm sets (on) or clears the node's memory alarm: while it is
// set, publishers are blocked (connection.blocked).
func (r *PrivateRabbit) MemoryAlarm(ctx context.Context, on bool) error {
	wm := "0.6"
	if on {
		wm = "0.0000001"
	}
	_, err := r.Ctl(ctx, "set_vm_memory_high_watermark", wm)
	return err
}
