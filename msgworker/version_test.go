package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/testenv"
)

// TestVersion: msgworker --version prints the module path and the Go version
// and exits 0, without any configuration.
func TestVersion(t *testing.T) {
	t.Parallel()
	testenv.RequireVersion(t, ".")
}

// TestBuildInfoMetric: the worker's metrics listener serves
// gw_build_info{version,commit,go_version} 1.
func TestBuildInfoMetric(t *testing.T) {
	t.Parallel()
	testenv.RequireServices(t)
	ns := testenv.Namespace(t)
	p := startProcess(t, buildBinary(t, "."), ns, "build-info")
	var addr string
	require.Eventually(t, func() bool {
		sc := bufio.NewScanner(strings.NewReader(p.out.String()))
		for sc.Scan() {
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "metrics listening" {
				addr = rec.Addr
				return true
			}
		}
		return false
	}, 20*time.Second, 20*time.Millisecond, "metrics address never logged:\n%s", p.out.String())
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var line string
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "gw_build_info{") {
			line = l
		}
	}
	require.NotEmpty(t, line, "no gw_build_info in /metrics:\n%s", body)
	require.Contains(t, line, `go_version="`+runtime.Version()+`"`)
	require.True(t, strings.HasSuffix(line, "} 1"), "gw_build_info = %q, want 1", line)
}
