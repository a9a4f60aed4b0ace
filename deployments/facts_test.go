package deployments

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/iotgw/gateway/internal/config"
)

// binaries are the four commands of the gateway; every one is a package
// main in the folder of its name, and the image holds them all.
var binaries = []string{"apiserver", "msgworker", "pushserver", "devicesim"}

// metricsPort is the port of GW_METRICS_ADDR in compose and k8s (its
// default, 127.0.0.1:0, is neither reachable nor known in a container).
const metricsPort = 9100

// facts is what the Go sources say about the binaries: the GW_* variables
// each reads, the HTTP paths each serves, and the metrics they register.
type facts struct {
	// env maps a binary to the GW_* variables it reads: its flags
	// (config.EnvName) and any GW_* name it passes to getenv itself.
	env map[string]map[string]bool
	// paths maps a binary to the HTTP paths it serves (route patterns).
	paths map[string]map[string]bool
	// metrics maps a metric name to its kind: counter, gauge, histogram
	// or summary.
	metrics map[string]string
	// literals holds the string literals of a package folder, to check
	// label values (queue="commands") against the code that sets them.
	literals map[string]map[string]bool
}

var loadFacts = sync.OnceValues(func() (*facts, error) { return scanSources(repoRoot()) })

// sourceFacts returns the facts of the sources, failing the test when they
// cannot be read.
func sourceFacts(t *testing.T) *facts {
	t.Helper()
	f, err := loadFacts()
	if err != nil {
		t.Fatalf("cannot read the Go sources: %v", err)
	}
	return f
}

// repoRoot is the module root: go test runs in deployments/.
func repoRoot() string {
	abs, err := filepath.Abs("..")
	if err != nil {
		panic(err)
	}
	return abs
}

// parseDir parses the non-test Go files of dir.
func parseDir(dir string) ([]*ast.File, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	var files []*ast.File
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no Go files in %s", dir)
	}
	return files, nil
}

// stringLit returns the value of a string literal expression.
func stringLit(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil
}

// binderMethods are the config.Binder methods (and the flag.FlagSet ones,
// should a service define a flag directly) whose calls look like
// b.String(&field, "flag-name", default, usage).
var binderMethods = map[string]bool{
	"String": true, "Duration": true, "Int": true, "Float": true, "Bytes": true, "Bool": true,
	"StringVar": true, "DurationVar": true, "IntVar": true, "Int64Var": true, "Float64Var": true, "BoolVar": true,
}

var (
	flagNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)
	envNameRE  = regexp.MustCompile(`^GW_[A-Z0-9_]+$`)
)

// callName is the name of the function or method a call calls.
func callName(call *ast.CallExpr) string {
	switch fn := call.Fun.(type) {
	case *ast.SelectorExpr:
		return fn.Sel.Name
	case *ast.Ident:
		return fn.Name
	}
	return ""
}

// boundFlag returns the flag name of a binder call
// b.String(&field, "flag-name", default, usage).
func boundFlag(call *ast.CallExpr) (string, bool) {
	if !binderMethods[callName(call)] || len(call.Args) < 2 {
		return "", false
	}
	if u, ok := call.Args[0].(*ast.UnaryExpr); !ok || u.Op != token.AND {
		return "", false
	}
	name, ok := stringLit(call.Args[1])
	return name, ok && flagNameRE.MatchString(name)
}

// sharedBinds returns the flags of the shared settings of package config:
// for each type T with a method Bind (config.Common, config.Logging), the
// flags that method binds.
func sharedBinds(files []*ast.File) map[string][]string {
	out := map[string][]string{}
	for _, f := range files {
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Recv == nil || fd.Name.Name != "Bind" || fd.Body == nil {
				continue
			}
			typ := fd.Recv.List[0].Type
			if star, ok := typ.(*ast.StarExpr); ok {
				typ = star.X
			}
			id, ok := typ.(*ast.Ident)
			if !ok {
				continue
			}
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				if call, ok := n.(*ast.CallExpr); ok {
					if name, ok := boundFlag(call); ok {
						out[id.Name] = append(out[id.Name], name)
					}
				}
				return true
			})
		}
	}
	return out
}

// sharedBound returns the config type whose Bind a call calls: x.T.Bind(b)
// on an embedded config.T, or x.Bind(b) on a variable declared
// "var x config.T". It returns "" for any other call.
func sharedBound(call *ast.CallExpr, vars map[string]string, shared map[string][]string) string {
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != "Bind" || len(call.Args) != 1 {
		return ""
	}
	switch x := sel.X.(type) {
	case *ast.SelectorExpr:
		if _, ok := shared[x.Sel.Name]; ok {
			return x.Sel.Name
		}
	case *ast.Ident:
		return vars[x.Name]
	}
	return ""
}

// configVars maps the variables the files declare as "var x config.T",
// for a T in shared, to T.
func configVars(files []*ast.File, shared map[string][]string) map[string]string {
	out := map[string]string{}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok {
				return true
			}
			sel, ok := vs.Type.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != "config" {
				return true
			}
			if _, ok := shared[sel.Sel.Name]; ok {
				for _, name := range vs.Names {
					out[name.Name] = sel.Sel.Name
				}
			}
			return true
		})
	}
	return out
}

// readEnv returns the GW_* variables the package in dir reads: the flags
// bound with a config.Binder (each is a variable through config.EnvName),
// those of the shared settings it binds (shared: the flags of each
// config type's Bind, from sharedBinds), and GW_* literals passed to a
// getenv-like call. Flags of a package that does not use config.NewBinder
// (devicesim's cobra flags) are not variables.
func readEnv(files []*ast.File, shared map[string][]string) map[string]bool {
	vars := map[string]bool{}
	binder := uses(files, "config", "NewBinder")
	declared := configVars(files, shared)
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			fun := callName(call)
			if binder {
				if name, ok := boundFlag(call); ok {
					vars[config.EnvName(name)] = true
				}
				for _, name := range shared[sharedBound(call, declared, shared)] {
					vars[config.EnvName(name)] = true
				}
			}
			if (strings.EqualFold(fun, "getenv") || fun == "LookupEnv") && len(call.Args) == 1 {
				if name, ok := stringLit(call.Args[0]); ok && envNameRE.MatchString(name) {
					vars[name] = true
				}
			}
			return true
		})
	}
	return vars
}

// httpMethods are the calls that register a route: echo's e.GET(path, …)
// and net/http's mux.Handle(path, …).
var httpMethods = map[string]bool{
	"GET": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "HEAD": true, "Any": true,
	"Handle": true, "HandleFunc": true,
}

// servedPaths returns the paths the files register.
func servedPaths(files []*ast.File) map[string]bool {
	paths := map[string]bool{}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) < 2 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || !httpMethods[sel.Sel.Name] {
				return true
			}
			if p, ok := stringLit(call.Args[0]); ok && strings.HasPrefix(p, "/") {
				paths[p] = true
			}
			return true
		})
	}
	return paths
}

// uses reports whether the files call pkg.fun.
func uses(files []*ast.File, pkg, fun string) bool {
	found := false
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if ok && sel.Sel.Name == fun {
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == pkg {
					found = true
				}
			}
			return !found
		})
	}
	return found
}

// metricKinds maps the prometheus option types to the kind of metric.
var metricKinds = map[string]string{
	"CounterOpts": "counter", "GaugeOpts": "gauge", "HistogramOpts": "histogram", "SummaryOpts": "summary",
}

// registeredMetrics adds to out the metrics named in prometheus.XxxOpts
// literals of the files (Namespace_Subsystem_Name), and those of
// prometheus.NewDesc calls (a custom Collector's const metrics; counted as
// gauges, the only kind the gateway exports that way).
func registeredMetrics(files []*ast.File, out map[string]string) {
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			if call, ok := n.(*ast.CallExpr); ok && len(call.Args) > 0 {
				if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "NewDesc" {
					if id, ok := sel.X.(*ast.Ident); ok && id.Name == "prometheus" {
						if name, ok := stringLit(call.Args[0]); ok {
							out[name] = "gauge"
						}
					}
				}
			}
			lit, ok := n.(*ast.CompositeLit)
			if !ok {
				return true
			}
			sel, ok := lit.Type.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			kind := metricKinds[sel.Sel.Name]
			if id, ok := sel.X.(*ast.Ident); !ok || id.Name != "prometheus" || kind == "" {
				return true
			}
			parts := map[string]string{}
			for _, el := range lit.Elts {
				kv, ok := el.(*ast.KeyValueExpr)
				if !ok {
					continue
				}
				key, ok := kv.Key.(*ast.Ident)
				if !ok {
					continue
				}
				if v, ok := stringLit(kv.Value); ok {
					parts[key.Name] = v
				}
			}
			var name []string
			for _, k := range []string{"Namespace", "Subsystem", "Name"} {
				if parts[k] != "" {
					name = append(name, parts[k])
				}
			}
			if parts["Name"] != "" {
				out[strings.Join(name, "_")] = kind
			}
			return true
		})
	}
}

// literalsOf returns every string literal of the files.
func literalsOf(files []*ast.File) map[string]bool {
	out := map[string]bool{}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			if s, ok := stringLit(asExpr(n)); ok {
				out[s] = true
			}
			return true
		})
	}
	return out
}

func asExpr(n ast.Node) ast.Expr {
	e, _ := n.(ast.Expr)
	return e
}

// scanSources reads the sources of the services.
func scanSources(root string) (*facts, error) {
	f := &facts{
		env:      map[string]map[string]bool{},
		paths:    map[string]map[string]bool{},
		metrics:  map[string]string{},
		literals: map[string]map[string]bool{},
	}
	telemetryFiles, err := parseDir(filepath.Join(root, "internal", "telemetry"))
	if err != nil {
		return nil, err
	}
	configFiles, err := parseDir(filepath.Join(root, "internal", "config"))
	if err != nil {
		return nil, err
	}
	shared := sharedBinds(configFiles)
	for _, bin := range binaries {
		files, err := parseDir(filepath.Join(root, bin))
		if err != nil {
			return nil, err
		}
		if files[0].Name.Name != "main" {
			return nil, fmt.Errorf("%s is package %s, not main", bin, files[0].Name.Name)
		}
		f.env[bin] = readEnv(files, shared)
		f.paths[bin] = servedPaths(files)
		// msgworker and pushserver serve /metrics and /healthz through
		// telemetry.ServeMetrics.
		if uses(files, "telemetry", "ServeMetrics") {
			for p := range servedPaths(telemetryFiles) {
				f.paths[bin][p] = true
			}
		}
		registeredMetrics(files, f.metrics)
		f.literals[bin] = literalsOf(files)
	}
	// Metrics may also be registered by shared packages.
	for _, dir := range []string{"mailbox", "internal/ring", "internal/amqpx", "internal/telemetry"} {
		files, err := parseDir(filepath.Join(root, dir))
		if err != nil {
			if os.IsNotExist(err) || strings.Contains(err.Error(), "no Go files") {
				continue
			}
			return nil, err
		}
		registeredMetrics(files, f.metrics)
		f.literals[dir] = literalsOf(files)
	}
	return f, nil
}

// knownMetric reports whether name is a registered metric or one of the
// series of a registered histogram or summary.
func (f *facts) knownMetric(name string) bool {
	if _, ok := f.metrics[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		switch f.metrics[base] {
		case "histogram":
			return true
		case "summary":
			if suffix != "_bucket" {
				return true
			}
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// TestSourceFacts checks that the scan of the sources found what the other
// tests rely on, so that a change in how the services bind their flags
// makes this test fail instead of making the others vacuous.
func TestSourceFacts(t *testing.T) {
	f := sourceFacts(t)
	// Every service binds config.Scale: the fixed counts and the
	// durability settings.
	scale := []string{"GW_QUEUES", "GW_PARTITIONS", "GW_REDIS_WAIT_REPLICAS", "GW_DURABILITY", "GW_ANSWER_GRACE"}
	want := map[string][]string{
		"apiserver":  append([]string{"GW_AMQP_URL", "GW_REDIS_URL", "GW_NAMESPACE", "GW_LOG_LEVEL", "GW_LOG_FORMAT", "GW_AUTH_SECRET", "GW_HTTP_ADDR"}, scale...),
		"msgworker":  append([]string{"GW_AMQP_URL", "GW_REDIS_URL", "GW_NAMESPACE", "GW_LOG_LEVEL", "GW_LOG_FORMAT", "GW_METRICS_ADDR"}, scale...),
		"pushserver": append([]string{"GW_AMQP_URL", "GW_REDIS_URL", "GW_NAMESPACE", "GW_LOG_LEVEL", "GW_LOG_FORMAT", "GW_AUTH_SECRET", "GW_MQTT_ADDR", "GW_METRICS_ADDR", "GW_NODE_ID", "GW_ADVERTISE_URL"}, scale...),
	}
	for bin, vars := range want {
		for _, v := range vars {
			if !f.env[bin][v] {
				t.Errorf("%s: the scan found no flag for %s; it found %v", bin, v, sortedKeys(f.env[bin]))
			}
		}
	}
	for _, bin := range []string{"apiserver", "msgworker", "pushserver"} {
		if !f.paths[bin]["/metrics"] {
			t.Errorf("%s: serves no /metrics (found %v)", bin, sortedKeys(f.paths[bin]))
		}
		if !f.paths[bin]["/healthz"] {
			t.Errorf("%s: serves no /healthz (found %v)", bin, sortedKeys(f.paths[bin]))
		}
	}
	if !f.paths["apiserver"]["/readyz"] {
		t.Errorf("apiserver serves no /readyz (found %v)", sortedKeys(f.paths["apiserver"]))
	}
	for _, prefix := range []string{"gw_api_", "gw_worker_", "gw_push_"} {
		found := false
		for name := range f.metrics {
			found = found || strings.HasPrefix(name, prefix)
		}
		if !found {
			t.Errorf("no metric named %s* in the sources (found %v)", prefix, sortedKeys(f.metrics))
		}
	}
	t.Logf("GW_* variables read: apiserver %v; msgworker %v; pushserver %v; devicesim %v",
		sortedKeys(f.env["apiserver"]), sortedKeys(f.env["msgworker"]), sortedKeys(f.env["pushserver"]), sortedKeys(f.env["devicesim"]))
}
