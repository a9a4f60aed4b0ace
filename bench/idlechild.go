package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// idleClientsCmd is the first argument that makes the bench binary an
// idle-session client process (runIdleClients) instead of the benchmark:
// the idle section spreads its sessions over several such processes, as
// one process may hold at most RLIMIT_NOFILE sockets.
const idleClientsCmd = "idle-clients"

// idleSecretEnv passes the token secret to an idle-client process (not on
// its command line, which ps shows).
const idleSecretEnv = "GW_BENCH_IDLE_SECRET"

// idleReply is what an idle-client process answers to each line of its
// standard input.
type idleReply struct {
	Connected int    `json:"connected"`
	Err       string `json:"err,omitempty"`
}

// runIdleClients is an idle-client process: it reads the device
// identities of --ids (one a line), and for each line "N" on its
// standard input connects sessions (raw MQTT 3.1.1, clean session, keep
// alive --keepalive, subscribed at QoS 1 to the device's commands) to
// --addr until N are connected, --parallel at a time, and answers one
// JSON line (idleReply). At the end of its input it disconnects them all
// and exits.
func runIdleClients(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet(idleClientsCmd, flag.ContinueOnError)
	addr := fs.String("addr", "", "the push server's MQTT address")
	idsFile := fs.String("ids", "", "file of device identities, one a line")
	keepAlive := fs.Duration("keepalive", 10*time.Minute, "keep alive of the sessions")
	par := fs.Int("parallel", 64, "sessions connecting at a time")
	if err := fs.Parse(args); err != nil {
		return err
	}
	secret := getenv(idleSecretEnv)
	if *addr == "" || *idsFile == "" || secret == "" || *par < 1 {
		return fmt.Errorf("%s needs --addr, --ids, --parallel ≥ 1 and %s", idleClientsCmd, idleSecretEnv)
	}
	data, err := os.ReadFile(*idsFile)
	if err != nil {
		return err
	}
	ids := strings.Fields(string(data))
	raiseNoFile()
	sessions := make([]*rawSession, 0, len(ids))
	defer func() { closeSessions(sessions) }()
	enc := json.NewEncoder(stdout)
	sc := bufio.NewScanner(stdin)
	for sc.Scan() {
		want, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
		if err != nil || want < len(sessions) || want > len(ids) {
			return fmt.Errorf("bad request %q: want a count from %d to %d", sc.Text(), len(sessions), len(ids))
		}
		from := len(sessions)
		batch := make([]*rawSession, want-from)
		err = parallel(ctx, *par, len(batch), func(k int) error {
			id := ids[from+k]
			tok, err := auth.Mint([]byte(secret), id, auth.RoleDevice, nil, 24*time.Hour)
			if err != nil {
				return err
			}
			rs, err := rawConnect(*addr, id, id, tok, protocol.DeviceCommandsTopic(id), *keepAlive)
			if err != nil {
				return fmt.Errorf("session %s: %w", id, err)
			}
			batch[k] = rs
			return nil
		})
		for _, rs := range batch {
			if rs != nil {
				sessions = append(sessions, rs)
			}
		}
		r := idleReply{Connected: len(sessions)}
		if err != nil {
			r.Err = err.Error()
		}
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return sc.Err()
}

// closeSessions disconnects sessions, 64 at a time.
func closeSessions(sessions []*rawSession) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, rs := range sessions {
		if rs == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() { defer wg.Done(); defer func() { <-sem }(); rs.Close() }()
	}
	wg.Wait()
}

// idleClients is the bench's handle on one idle-client process.
type idleClients struct {
	name  string
	ids   int // identities it was given
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	count int // sessions connected, as it last answered
}

// startIdleClients starts an idle-client process (this binary again)
// holding sessions of ids on the push server at addr; its standard error
// goes to logPath.
func (b *Bench) startIdleClients(name, addr string, ids []string, idsPath, logPath string) (*idleClients, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(idsPath, []byte(strings.Join(ids, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(self, idleClientsCmd, "--addr", addr, "--ids", idsPath)
	cmd.Env = append(os.Environ(), idleSecretEnv+"="+b.Secret)
	cmd.Stderr = logf
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &idleClients{name: name, ids: len(ids), cmd: cmd, in: in, out: bufio.NewScanner(out)}, nil
}

// connect asks the process to hold n sessions and waits for its answer.
func (c *idleClients) connect(n int) error {
	if _, err := fmt.Fprintf(c.in, "%d\n", n); err != nil {
		return fmt.Errorf("%s: %w", c.name, err)
	}
	if !c.out.Scan() {
		return fmt.Errorf("%s ended without an answer: %v", c.name, c.out.Err())
	}
	var r idleReply
	if err := json.Unmarshal(c.out.Bytes(), &r); err != nil {
		return fmt.Errorf("%s answered %q: %w", c.name, c.out.Text(), err)
	}
	c.count = r.Connected
	if r.Err != "" {
		return fmt.Errorf("%s: %s", c.name, r.Err)
	}
	return nil
}

// stop ends the input of the process, which then disconnects its
// sessions and exits; it waits at most a minute.
func (c *idleClients) stop() error {
	_ = c.in.Close()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute):
		_ = c.cmd.Process.Kill()
		return errors.Join(fmt.Errorf("%s did not exit within a minute", c.name), <-done)
	}
}
