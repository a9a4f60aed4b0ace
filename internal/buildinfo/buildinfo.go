// Package buildinfo says which build of the gateway is running: the
// module path and version, the VCS commit, its time and whether the tree
// was modified, and the Go version, read from runtime/debug.ReadBuildInfo.
// Every binary prints it for --version, and every service exports it as
// the gauge gw_build_info{version,commit,go_version} = 1.
//
// A release build sets the version (and, when built outside a VCS
// checkout, the commit) with the linker:
//
//	go build -ldflags "-X github.com/iotgw/gateway/internal/buildinfo.Version=v1.2.0 \
//	  -X github.com/iotgw/gateway/internal/buildinfo.Commit=$(git rev-parse HEAD)" ./apiserver
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Version, when set with -ldflags "-X …buildinfo.Version=v1.2.0",
// overrides the module version the Go toolchain recorded.
var Version string

// Commit, when set with -ldflags "-X …buildinfo.Commit=<sha>", overrides
// the VCS commit the Go toolchain recorded.
var Commit string

// Info describes a build.
type Info struct {
	// Path is the main module's path (github.com/iotgw/gateway).
	Path string
	// Version is Version when set, else the main module's version:
	// "(devel)" or a pseudo-version derived from the VCS by go build.
	Version string
	// Commit is Commit when set, else vcs.revision ("" when unknown).
	Commit string
	// Time is vcs.time, the commit's time in RFC 3339 ("" when unknown).
	Time string
	// Dirty is vcs.modified: the tree had uncommitted changes.
	Dirty bool
	// GoVersion is the Go toolchain that built the binary.
	GoVersion string
}

// Read returns the running binary's build information.
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	return fromBuildInfo(bi, ok)
}

func fromBuildInfo(bi *debug.BuildInfo, ok bool) Info {
	info := Info{GoVersion: runtime.Version()}
	if ok && bi != nil {
		info.Path = bi.Main.Path
		info.Version = bi.Main.Version
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Commit = s.Value
			case "vcs.time":
				info.Time = s.Value
			case "vcs.modified":
				info.Dirty = s.Value == "true"
			}
		}
	}
	if Version != "" {
		info.Version = Version
	}
	if Commit != "" {
		info.Commit = Commit
	}
	if info.Path == "" {
		info.Path = "github.com/iotgw/gateway"
	}
	if info.Version == "" {
		info.Version = "(devel)"
	}
	return info
}

// String is the one line --version prints for program, e.g.
// "apiserver github.com/iotgw/gateway v1.2.0 commit 1a2b3c4 2026-12-07T04:55:07Z dirty go1.26.8".
func (i Info) String(program string) string {
	parts := []string{program, i.Path, i.Version}
	if i.Commit != "" {
		parts = append(parts, "commit "+i.Commit)
	}
	if i.Time != "" {
		parts = append(parts, i.Time)
	}
	if i.Dirty {
		parts = append(parts, "dirty")
	}
	parts = append(parts, i.GoVersion)
	return strings.Join(parts, " ")
}

// Collector returns the gauge gw_build_info{version,commit,go_version}
// with the value 1, for a service's registry. The commit carries a
// "-dirty" suffix when the tree was modified.
func Collector() prometheus.Collector {
	i := Read()
	commit := i.Commit
	if i.Dirty && commit != "" {
		commit += "-dirty"
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "gw_build_info",
		Help:        "The build that is running: module version, VCS commit and Go version. Always 1.",
		ConstLabels: prometheus.Labels{"version": i.Version, "commit": commit, "go_version": i.GoVersion},
	})
	g.Set(1)
	return g
}
