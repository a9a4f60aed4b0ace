package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// profile is a pprof profile of a gateway process, fetched through its
// metrics listener (/debug/pprof/) into path: a CPU profile over some
// seconds (start it when the run to profile starts), or the heap in use.
// summary returns what it shows.
type profile struct {
	path, bin string
	done      chan error
}

// startProfile starts fetching a CPU profile over seconds of the process
// whose binary is bin and whose metrics listener is at addr.
func startProfile(ctx context.Context, addr, bin, path string, seconds int) *profile {
	return fetchProfile(ctx, addr, "profile?seconds="+strconv.Itoa(seconds), bin, path, time.Duration(seconds+10)*time.Second)
}

// heapProfile fetches the heap profile of the process whose binary is
// bin and whose metrics listener is at addr.
func heapProfile(ctx context.Context, addr, bin, path string) *profile {
	return fetchProfile(ctx, addr, "heap", bin, path, 10*time.Second)
}

func fetchProfile(ctx context.Context, addr, query, bin, path string, timeout time.Duration) *profile {
	cp := &profile{path: path, bin: bin, done: make(chan error, 1)}
	go func() {
		cp.done <- func() error {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/"+query, nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s", req.URL, resp.Status)
			}
			f, err := os.Create(path)
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, resp.Body); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		}()
	}()
	return cp
}

// summary waits for the profile and returns the functions that cost the
// most (CPU, or heap in use): the top n by their own (flat), and the top
// n of the gateway's own code including callees (cum), as `go tool pprof
// -top` prints them, in one line each.
func (cp *profile) summary(ctx context.Context, n int) (flat, cum string, err error) {
	if err := <-cp.done; err != nil {
		return "", "", fmt.Errorf("no profile: %w", err)
	}
	top := func(extra ...string) (string, error) {
		args := append([]string{"tool", "pprof", "-top", "-nodecount=" + strconv.Itoa(n)}, extra...)
		out, err := exec.CommandContext(ctx, "go", append(args, cp.bin, cp.path)...).Output()
		if err != nil {
			return "", fmt.Errorf("go tool pprof: %w", err)
		}
		return pprofTop(string(out)), nil
	}
	if flat, err = top(); err != nil {
		return "", "", err
	}
	cum, err = top("-cum", `-show=iotgw/gateway|^main\.`)
	return flat, cum, err
}

// pprofTop turns the table of `go tool pprof -top` into "name flat% (cum
// cum%), …", with the total it reports.
func pprofTop(out string) string {
	var parts []string
	var total string
	inTable := false
	for _, line := range strings.Split(out, "\n") {
		fs := strings.Fields(line)
		switch {
		case len(fs) > 0 && fs[0] == "Showing" && strings.Contains(line, "total"):
			if i := strings.Index(line, "of "); i >= 0 {
				total = strings.TrimSuffix(strings.Fields(line[i+3:])[0], ",")
			}
		case len(fs) >= 5 && fs[0] == "flat":
			inTable = true
		case inTable && len(fs) >= 6:
			name := strings.Join(fs[5:], " ")
			name = strings.TrimPrefix(name, "github.com/iotgw/gateway/")
			parts = append(parts, fmt.Sprintf("%s %s (cum %s)", name, fs[1], fs[4]))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	s := strings.Join(parts, ", ")
	if total != "" {
		s = "of " + total + " in all: " + s
	}
	return s
}
