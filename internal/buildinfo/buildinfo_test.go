package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestFromBuildInfo(t *testing.T) {
	vcs := func(rev, at, modified string) *debug.BuildInfo {
		return &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Path: "github.com/iotgw/gateway", Version: "v0.0.0-20261207045507-1a2b3c4d5e6f+dirty"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.time", Value: at}, {Key: "vcs.modified", Value: modified}}}
	}
	for _, tc := range []struct {
		name            string
		bi              *debug.BuildInfo
		ok              bool
		version, commit string
		want            Info
		wantLine        string
	}{
		{
			name: "a dirty checkout",
			bi:   vcs("1a2b3c4d5e6f", "2026-12-07T04:55:07Z", "true"), ok: true,
			want: Info{Path: "github.com/iotgw/gateway", Version: "v0.0.0-20261207045507-1a2b3c4d5e6f+dirty", Commit: "1a2b3c4d5e6f",
				Time: "2026-12-07T04:55:07Z", Dirty: true, GoVersion: "go1.26.1"},
			wantLine: "apiserver github.com/iotgw/gateway v0.0.0-20261207045507-1a2b3c4d5e6f+dirty commit 1a2b3c4d5e6f 2026-12-07T04:55:07Z dirty go1.26.1",
		},
		{
			name: "a release build overrides version and commit",
			bi:   vcs("1a2b3c4d5e6f", "2026-12-07T04:55:07Z", "false"), ok: true, version: "v1.2.0", commit: "feedface",
			want:     Info{Path: "github.com/iotgw/gateway", Version: "v1.2.0", Commit: "feedface", Time: "2026-12-07T04:55:07Z", GoVersion: "go1.26.1"},
			wantLine: "apiserver github.com/iotgw/gateway v1.2.0 commit feedface 2026-12-07T04:55:07Z go1.26.1",
		},
		{
			name: "no VCS information",
			bi:   &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Path: "github.com/iotgw/gateway", Version: "(devel)"}}, ok: true,
			want:     Info{Path: "github.com/iotgw/gateway", Version: "(devel)", GoVersion: "go1.26.1"},
			wantLine: "apiserver github.com/iotgw/gateway (devel) go1.26.1",
		},
		{
			name:     "no build information at all",
			want:     Info{Path: "github.com/iotgw/gateway", Version: "(devel)", GoVersion: runtime.Version()},
			wantLine: "apiserver github.com/iotgw/gateway (devel) " + runtime.Version(),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			Version, Commit = tc.version, tc.commit
			defer func() { Version, Commit = "", "" }()
			got := fromBuildInfo(tc.bi, tc.ok)
			if got != tc.want {
				t.Errorf("fromBuildInfo = %+v, want %+v", got, tc.want)
			}
			if line := got.String("apiserver"); line != tc.wantLine {
				t.Errorf("String(apiserver) = %q, want %q", line, tc.wantLine)
			}
		})
	}
}

// TestCollector: the gauge is 1 and labelled with the running build.
func TestCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(Collector())
	i := Read()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "gw_build_info" || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("Gather() = %v, want one gw_build_info sample", mfs)
	}
	m := mfs[0].GetMetric()[0]
	if got := m.GetGauge().GetValue(); got != 1 {
		t.Errorf("gw_build_info = %v, want 1", got)
	}
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	want := map[string]string{"version": i.Version, "commit": commitLabel(i), "go_version": i.GoVersion}
	for k, v := range want {
		if labels[k] != v {
			t.Errorf("gw_build_info label %s = %q, want %q", k, labels[k], v)
		}
	}
	if len(labels) != len(want) {
		t.Errorf("gw_build_info labels = %v, want exactly %v", labels, want)
	}
	if !strings.HasPrefix(i.GoVersion, "go") {
		t.Errorf("GoVersion = %q, want a go version", i.GoVersion)
	}
}

func commitLabel(i Info) string {
	if i.Dirty && i.Commit != "" {
		return i.Commit + "-dirty"
	}
	return i.Commit
}
