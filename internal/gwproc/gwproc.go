// Package gwproc builds the gateway's binaries and runs them as real
// processes on loopback, for the end-to-end tests and the benchmark: an
// apiserver, N msgworkers and M pushservers in one namespace on free
// ports. Processes can be stopped, killed with SIGKILL and restarted,
// which is how the fault tests exercise the guarantees.
package gwproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/iotgw/gateway/internal/auth"
)

// Binaries names the four commands.
var Binaries = []string{"apiserver", "msgworker", "pushserver", "devicesim"}

// RepoRoot finds the module root by walking up from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("gwproc: go.mod not found above the working directory")
		}
		dir = parent
	}
}

var buildMu sync.Mutex

// Build compiles the binaries into dir (with -race when race is true).
func Build(ctx context.Context, dir string, race bool) error {
	buildMu.Lock()
	defer buildMu.Unlock()
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	if race {
		args = append(args, "-race")
	}
	for _, b := range Binaries {
		args = append(args, "./"+b)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("cannot build the gateway: %w\n%s", err, out)
	}
	return nil
}

// Proc is one running process of the gateway.
type Proc struct {
	Name string
	Bin  string
	Args []string
	Env  []string
	Log  string // path of its log file
	// MetricsURL is where its Prometheus metrics are served ("" when
	// unknown).
	MetricsURL string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start runs the process, appending its output to its log file.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("cannot open log of %s: %w", p.Name, err)
	}
	cmd := exec.Command(p.Bin, p.Args...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("cannot start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// Pid is the process ID (0 when not running).
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether the process has not exited.
func (p *Proc) Running() bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Signal sends sig and, for SIGKILL or when wait is set, waits (at most
// timeout) for the exit; past the timeout it kills.
func (p *Proc) Signal(sig syscall.Signal, timeout time.Duration) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil || done == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s did not exit within %s after %s; killed", p.Name, timeout, sig)
	}
	return nil
}

// Stop sends SIGTERM and waits up to 15 s.
func (p *Proc) Stop() error { return p.Signal(syscall.SIGTERM, 15*time.Second) }

// Kill sends SIGKILL and waits for the exit.
func (p *Proc) Kill() error { return p.Signal(syscall.SIGKILL, 5*time.Second) }

// Tail returns the last n bytes of the log.
func (p *Proc) Tail(n int64) string {
	f, err := os.Open(p.Log)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// CPU returns the user+system CPU time the process used so far (Linux
// /proc; zero elsewhere).
func (p *Proc) CPU() time.Duration { return ProcessCPU(p.Pid()) }

// RSS returns the resident set size of the process in bytes (Linux).
func (p *Proc) RSS() int64 { return ProcessRSS(p.Pid()) }

// ProcessCPU returns the user+system CPU time process pid used so far,
// from /proc (zero when it cannot be read, or not on Linux).
func ProcessCPU(pid int) time.Duration {
	if pid <= 0 || runtime.GOOS != "linux" {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / ticks
}

// ProcessRSS returns the resident set size of process pid in bytes, from
// /proc (zero when it cannot be read).
func ProcessRSS(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// Options describe a gateway to start.
type Options struct {
	BinDir      string // where Build put the binaries
	RunDir      string // logs
	Namespace   string
	Secret      string
	AMQPURL     string
	RedisURL    string
	Workers     int // default 2
	PushServers int // default 3
	// ExtraEnv is added to every process (e.g. GW_CONFIRM_TIMEOUT=2s).
	ExtraEnv []string
}

// Gateway is a started set of processes.
type Gateway struct {
	Opts    Options
	API     *Proc
	APIURL  string
	Workers []*Proc
	Push    []*Proc
	// PushAddrs are the MQTT addresses of the push servers, by index.
	PushAddrs []string
}

// FreeAddr returns a free 127.0.0.1 TCP address.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func (o *Options) env() []string {
	env := []string{
		"GW_NAMESPACE=" + o.Namespace,
		"GW_AUTH_SECRET=" + o.Secret,
		"GW_METRICS_ADDR=127.0.0.1:0",
		// The test Redis (6379) is not durable; strict readiness would
		// refuse it (DESIGN §7). ExtraEnv may say strict.
		"GW_DURABILITY=relaxed",
	}
	if o.AMQPURL != "" {
		env = append(env, "GW_AMQP_URL="+o.AMQPURL)
	}
	if o.RedisURL != "" {
		env = append(env, "GW_REDIS_URL="+o.RedisURL)
	}
	return append(env, o.ExtraEnv...)
}

// Start starts push servers, workers and the apiserver, and waits until
// the apiserver is ready and every push server is in the ring.
func Start(ctx context.Context, o Options) (*Gateway, error) {
	if o.Workers == 0 {
		o.Workers = 2
	}
	if o.PushServers == 0 {
		o.PushServers = 3
	}
	if err := os.MkdirAll(o.RunDir, 0o755); err != nil {
		return nil, err
	}
	g := &Gateway{Opts: o}
	env := o.env()
	for i := 0; i < o.PushServers; i++ {
		addr, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		maddr, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		p := &Proc{Name: fmt.Sprintf("pushserver-%d", i), Bin: filepath.Join(o.BinDir, "pushserver"),
			Args: []string{"--mqtt-addr", addr, "--node-id", fmt.Sprintf("push-%d", i), "--metrics-addr", maddr},
			Env:  env, Log: filepath.Join(o.RunDir, fmt.Sprintf("pushserver-%d.log", i)), MetricsURL: "http://" + maddr + "/metrics"}
		g.Push = append(g.Push, p)
		g.PushAddrs = append(g.PushAddrs, addr)
	}
	for i := 0; i < o.Workers; i++ {
		maddr, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		g.Workers = append(g.Workers, &Proc{Name: fmt.Sprintf("msgworker-%d", i), Bin: filepath.Join(o.BinDir, "msgworker"),
			Args: []string{"--metrics-addr", maddr},
			Env:  env, Log: filepath.Join(o.RunDir, fmt.Sprintf("msgworker-%d.log", i)), MetricsURL: "http://" + maddr + "/metrics"})
	}
	apiAddr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	g.APIURL = "http://" + apiAddr
	g.API = &Proc{Name: "apiserver", Bin: filepath.Join(o.BinDir, "apiserver"), Args: []string{"--http-addr", apiAddr},
		Env: env, Log: filepath.Join(o.RunDir, "apiserver.log"), MetricsURL: g.APIURL + "/metrics"}
	for _, p := range g.All() {
		if err := p.Start(); err != nil {
			g.Stop()
			return nil, err
		}
	}
	if err := g.WaitReady(ctx, 30*time.Second); err != nil {
		g.Stop()
		return nil, err
	}
	return g, nil
}

// All lists every process: push servers, workers, apiserver.
func (g *Gateway) All() []*Proc {
	out := append([]*Proc{}, g.Push...)
	out = append(out, g.Workers...)
	return append(out, g.API)
}

// WaitReady waits until /readyz answers 200 and every running push server
// owns some identity in the ring.
func (g *Gateway) WaitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	want := 0
	for _, p := range g.Push {
		if p.Running() {
			want++
		}
	}
	var last string
	for time.Now().Before(deadline) {
		for _, p := range g.All() {
			if p.Pid() != 0 && !p.Running() {
				return fmt.Errorf("%s exited during start:\n%s", p.Name, p.Tail(4000))
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		nodes, err := g.RingNodes(ctx)
		if err == nil && nodes >= want {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("%d of %d push servers in the ring", nodes, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("gateway not ready within %s: %s\napiserver log:\n%s", timeout, last, g.API.Tail(4000))
}

// RingNodes counts the distinct push servers that own some of 200 probe
// identities, asking the apiserver as an operator would.
func (g *Gateway) RingNodes(ctx context.Context) (int, error) {
	resp, err := http.Get(g.APIURL + "/readyz")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("/readyz answered %d", resp.StatusCode)
	}
	tok, err := g.Token("operator", "gwproc-probe", nil)
	if err != nil {
		return 0, err
	}
	seen := map[string]bool{}
	for i := 0; i < 200; i++ {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/v1/connect/probe-%d", g.APIURL, i), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("/v1/connect answered %d: %s", resp.StatusCode, bytes.TrimSpace(body))
		}
		if i := bytes.Index(body, []byte(`"node":"`)); i >= 0 {
			rest := body[i+8:]
			if j := bytes.IndexByte(rest, '"'); j >= 0 {
				seen[string(rest[:j])] = true
			}
		}
	}
	return len(seen), nil
}

// Token mints a token with the gateway's secret.
func (g *Gateway) Token(role, sub string, devices []string) (string, error) {
	return auth.Mint([]byte(g.Opts.Secret), sub, auth.Role(role), devices, 24*time.Hour)
}

// Stop stops every process in order: apiserver, workers, push servers.
func (g *Gateway) Stop() {
	all := g.All()
	for i := len(all) - 1; i >= 0; i-- {
		if all[i] != nil {
			_ = all[i].Stop()
		}
	}
}

// Logs returns the tails of every log, for a failing test's message.
func (g *Gateway) Logs(n int64) string {
	var b strings.Builder
	for _, p := range g.All() {
		fmt.Fprintf(&b, "==> %s <==\n%s\n", p.Name, p.Tail(n))
	}
	return b.String()
}
