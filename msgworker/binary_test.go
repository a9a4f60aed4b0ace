package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// TestBinarySIGKILL runs the msgworker binary as two processes, kills one
// with SIGKILL in the middle of a batch of 1,000 commands, and checks that
// every command is sent exactly once (one mailbox entry each) and, driven
// to the end, reaches exactly one final status with one client result.
// The survivor then stops cleanly on SIGTERM.
func TestBinarySIGKILL(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	start := time.Now()
	bin := buildBinary(t, ".")
	t.Logf("built in %v", time.Since(start))
	a := startProcess(t, bin, h.ns, "a")
	b := startProcess(t, bin, h.ns, "b")
	a.waitConsuming(t)
	b.waitConsuming(t)

	const n, devices, killAt = 1000, 50, 350
	var sent atomic.Int32
	killed := make(chan struct{})
	envs := h.sendMany(n, 8, func(i int) spec {
		if sent.Add(1) == killAt {
			go func() {
				defer close(killed)
				if err := a.cmd.Process.Kill(); err != nil { // SIGKILL
					t.Errorf("cannot kill worker a: %v", err)
				}
				_ = a.cmd.Wait()
			}()
		}
		return spec{client: fmt.Sprintf("c%d", i%7), device: fmt.Sprintf("d%d", i%devices), id: strconv.Itoa(i)}
	})
	<-killed
	t.Logf("published in %v", time.Since(start))

	// Every command gets sent (the survivor takes over what the killed
	// worker held unacked).
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for _, env := range envs {
		for {
			c, err := h.store.Get(ctx, env.Client, env.MsgID.Key())
			require.NoError(t, err)
			if c.Status == protocol.StatusSent {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s:%s is %s, want sent\n%s", env.Client, env.MsgID.Key(), c.Status, b.out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	h.checkMailboxesOnce(envs, devices)
	t.Logf("survivor: %d commands sent, %d redeliveries found already sent",
		b.metric(t, `gw_worker_handled_total{outcome="sent",queue="commands"}`),
		b.metric(t, `gw_worker_handled_total{outcome="noop",queue="commands"}`))

	for d := range devices {
		require.Len(t, h.deliver(fmt.Sprintf("d%d", d)), n/devices)
	}
	h.answerAll(envs, func(int) int { return 0 })
	h.waitAllFinal(envs, func(int) protocol.Status { return protocol.StatusSucceeded }, 30*time.Second)

	// Graceful stop.
	require.NoError(t, b.cmd.Process.Signal(syscall.SIGTERM))
	done := make(chan error, 1)
	go func() { done <- b.cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, "exit after SIGTERM\n%s", b.out.String())
	case <-time.After(12 * time.Second):
		t.Fatal("msgworker did not exit within 12s of SIGTERM")
	}
	require.Contains(t, b.out.String(), "msgworker stopped")
}

var (
	binDirOnce sync.Once
	binDir     string
	binDirErr  error
	builds     sync.Map // package path → *build
)

type build struct {
	once sync.Once
	bin  string
	err  error
}

// buildBinary builds the binary of a package (a path relative to this
// folder) once per test process, into a temporary folder removed by
// TestMain.
func buildBinary(t testing.TB, pkg string) string {
	t.Helper()
	binDirOnce.Do(func() { binDir, binDirErr = os.MkdirTemp("", "msgworker-bin-") })
	require.NoError(t, binDirErr)
	v, _ := builds.LoadOrStore(pkg, &build{})
	b := v.(*build)
	b.once.Do(func() {
		b.bin = filepath.Join(binDir, filepath.Base(filepath.Clean(pkg)))
		if pkg == "." {
			b.bin = filepath.Join(binDir, "msgworker")
		}
		out, err := exec.Command("go", "build", "-o", b.bin, pkg).CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	})
	require.NoError(t, b.err)
	return b.bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// process is a msgworker subprocess.
type process struct {
	cmd *exec.Cmd
	out *testenv.SyncBuffer
}

func startProcess(t testing.TB, bin, ns, name string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(bin), out: &testenv.SyncBuffer{}}
	p.cmd.Env = append(os.Environ(),
		"GW_NAMESPACE="+ns,
		"GW_AMQP_URL="+testenv.AMQPURL(),
		"GW_REDIS_URL="+testenv.RedisURL(),
		"GW_METRICS_ADDR=127.0.0.1:0",
		"GW_TIMER_INTERVAL=100ms",
		"GW_LOG_LEVEL=info",
		"GW_LOG_FORMAT=json",
	)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	require.NoError(t, p.cmd.Start())
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("output of msgworker %s:\n%s", name, p.out.String())
		}
	})
	return p
}

// waitConsuming waits until the process consumes its queues: the
// protocol.DefaultQueues command queues and the commands dead-letter
// queue.
func (p *process) waitConsuming(t testing.TB) {
	t.Helper()
	require.Eventually(t, func() bool {
		return strings.Count(p.out.String(), `"msg":"consuming"`) >= protocol.DefaultQueues+1
	}, 20*time.Second, 20*time.Millisecond, "msgworker never consumed:\n%s", p.out.String())
}

// metric scrapes the process's /metrics (address from its log) and
// returns the value of the sample named exactly so.
func (p *process) metric(t testing.TB, sample string) int {
	t.Helper()
	var addr string
	sc := bufio.NewScanner(strings.NewReader(p.out.String()))
	for sc.Scan() {
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "metrics listening" {
			addr = rec.Addr
		}
	}
	require.NotEmpty(t, addr, "metrics address not logged")
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return int(f)
		}
	}
	return 0
}
