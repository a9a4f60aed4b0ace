package deployments

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/protocol"
)

// The files checked, relative to deployments/.
const (
	dockerfilePath   = "Dockerfile"
	dockerignorePath = "Dockerfile.dockerignore"
	composeDir       = "compose"
	composePath      = "compose/compose.yaml"
	envExamplePath   = "compose/.env.example"
	k8sDir           = "k8s"
	secretEnvExample = "k8s/secret.env.example"
	helmChartDir     = "helm/iotgw"
	prometheusPath   = "monitoring/prometheus.yml"
	prometheusK8s    = "monitoring/prometheus-k8s.yml"
	alertsPath       = "monitoring/alerts.yml"
	dashboardPath    = "monitoring/grafana/dashboards/gateway.json"
	grafanaDSPath    = "monitoring/grafana/provisioning/datasources/prometheus.yaml"
	grafanaDashProv  = "monitoring/grafana/provisioning/dashboards/gateway.yaml"
)

// imageName is the repository of the one image (deployments/Dockerfile).
const imageName = "iotgw/gateway"

// gatewayJobs are the Prometheus job names both scrape configs define;
// alerts.yml and the dashboard select on them.
var gatewayJobs = []string{"apiserver", "msgworker", "pushserver", "rabbitmq", "rabbitmq-queues"}

// ---- reading files ----

type (
	obj = map[string]any
	arr = []any
)

func asObj(v any) obj { m, _ := v.(obj); return m }
func asArr(v any) arr { a, _ := v.(arr); return a }

// asStr returns a scalar as a string ("" for anything else).
func asStr(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case int, int64, float64, bool:
		return fmt.Sprint(v)
	}
	return ""
}

// joinWords joins a sequence of scalars with spaces (a command, a health
// check test); a string is returned as it is.
func joinWords(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	var words []string
	for _, w := range asArr(v) {
		words = append(words, asStr(w))
	}
	return strings.Join(words, " ")
}

// dig follows keys through nested mappings.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		v = asObj(v)[k]
	}
	return v
}

func readFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.FromSlash(rel))
	if err != nil {
		t.Fatalf("cannot read %s: %v", rel, err)
	}
	return b
}

// decodeYAML returns every document of a YAML file.
func decodeYAML(data []byte) ([]any, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []any
	for {
		var doc any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
}

func loadYAML(t *testing.T, rel string) []any {
	t.Helper()
	docs, err := decodeYAML(readFile(t, rel))
	if err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return docs
}

func loadYAML1(t *testing.T, rel string) obj {
	t.Helper()
	docs := loadYAML(t, rel)
	if len(docs) != 1 || asObj(docs[0]) == nil {
		t.Fatalf("%s: want one YAML mapping, got %d documents", rel, len(docs))
	}
	return asObj(docs[0])
}

// readEnvFile reads KEY=VALUE lines (compose's .env syntax, without
// quotes or interpolation).
func readEnvFile(t *testing.T, rel string) map[string]string {
	t.Helper()
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, rel)))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`).MatchString(k) {
			t.Errorf("%s:%d: not KEY=VALUE: %q", rel, n, line)
			continue
		}
		env[k] = v
	}
	return env
}

var interpRE = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// interpolate expands compose's ${VAR}, ${VAR:-default}, ${VAR-default},
// ${VAR:?error}, ${VAR?error} and $VAR with env; a required variable that
// env lacks is an error.
func interpolate(s string, env map[string]string) (string, error) {
	var err error
	out := interpRE.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		sub := interpRE.FindStringSubmatch(m)
		name, op, arg := sub[1], sub[2], sub[3]
		if name == "" {
			name = sub[4]
		}
		v, set := env[name]
		switch op {
		case ":-":
			if v == "" {
				return arg
			}
		case "-":
			if !set {
				return arg
			}
		case ":?", "?":
			if (op == ":?" && v == "") || !set {
				err = fmt.Errorf("%s is required (%s) and not set", name, arg)
			}
		}
		return v
	})
	return out, err
}

// hostPort splits an address like 0.0.0.0:8080 into its host and port.
func hostPort(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return "", 0, fmt.Errorf("port of %q: %w", addr, err)
	}
	return host, n, nil
}

func defaultPort(addr string) int {
	_, p, err := hostPort(addr)
	if err != nil {
		panic(err)
	}
	return p
}

// listenPorts checks the listen addresses a container's variables set and
// returns its ports by role ("http", "mqtt", "metrics"). In a container an
// address must not be loopback (nothing outside could reach it), and the
// HTTP and MQTT ports must be the documented defaults (DESIGN §9), which
// everything else (probes, Services, clients) assumes.
func listenPorts(t *testing.T, where, bin string, env map[string]string) map[string]int {
	t.Helper()
	ports := map[string]int{}
	check := func(role, variable, def string, wantPort int) {
		v, ok := env[variable]
		if !ok {
			t.Errorf("%s: %s does not set %s (default %s: loopback, not reachable from outside the container)", where, bin, variable, def)
			return
		}
		host, port, err := hostPort(v)
		if err != nil {
			t.Errorf("%s: %s=%q: %v", where, variable, v, err)
			return
		}
		if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
			t.Errorf("%s: %s=%q listens on loopback only", where, variable, v)
		}
		if wantPort != 0 && port != wantPort {
			t.Errorf("%s: %s=%q: port %d, want %d", where, variable, v, port, wantPort)
		}
		ports[role] = port
	}
	switch bin {
	case "apiserver":
		check("http", "GW_HTTP_ADDR", config.DefaultHTTPAddr, defaultPort(config.DefaultHTTPAddr))
	case "msgworker":
		check("metrics", "GW_METRICS_ADDR", config.DefaultMetricsAddr, metricsPort)
	case "pushserver":
		check("mqtt", "GW_MQTT_ADDR", config.DefaultMQTTAddr, defaultPort(config.DefaultMQTTAddr))
		check("metrics", "GW_METRICS_ADDR", config.DefaultMetricsAddr, metricsPort)
	}
	return ports
}

// checkEnv checks that every GW_* variable given to bin is one it reads,
// and that the services that need GW_AUTH_SECRET get it.
func checkEnv(t *testing.T, where, bin string, names []string) {
	t.Helper()
	f := sourceFacts(t)
	for _, name := range names {
		if strings.HasPrefix(name, "GW_") && !f.env[bin][name] {
			t.Errorf("%s: %s is given %s, which it does not read (it reads %v)", where, bin, name, sortedKeys(f.env[bin]))
		}
	}
	for _, name := range []string{"GW_AMQP_URL", "GW_AMQP_MGMT_URL", "GW_REDIS_URL", "GW_NAMESPACE"} {
		if f.env[bin][name] && !slices.Contains(names, name) {
			t.Errorf("%s: %s is not given %s (its default is loopback or the default namespace)", where, bin, name)
		}
	}
	// The fixed counts are given explicitly, so that no service falls back
	// on a default another service does not share (the fence would stop
	// it).
	for _, name := range []string{"GW_QUEUES", "GW_PARTITIONS"} {
		if f.env[bin][name] && !slices.Contains(names, name) {
			t.Errorf("%s: %s is not given %s: every service of a namespace must have the same one", where, bin, name)
		}
	}
	if f.env[bin]["GW_AUTH_SECRET"] && !slices.Contains(names, "GW_AUTH_SECRET") {
		t.Errorf("%s: %s is not given GW_AUTH_SECRET and refuses to start without it", where, bin)
	}
}

// checkHTTPPath checks that bin serves path.
func checkHTTPPath(t *testing.T, where, bin, path string) {
	t.Helper()
	if f := sourceFacts(t); !f.paths[bin][path] {
		t.Errorf("%s: %s does not serve %s (it serves %v)", where, bin, path, sortedKeys(f.paths[bin]))
	}
}

// ---- every file parses ----

func TestFilesParse(t *testing.T) {
	n := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// The chart's templates are YAML only once rendered
			// (helm_test.go renders them).
			if path == "local" || path == filepath.FromSlash(helmChartDir+"/templates") {
				return filepath.SkipDir
			}
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		switch filepath.Ext(path) {
		case ".yaml", ".yml":
			n++
			docs, err := decodeYAML(data)
			if err != nil {
				t.Errorf("%s: %v", path, err)
			} else if len(docs) == 0 {
				t.Errorf("%s: no YAML document", path)
			}
		case ".json":
			n++
			var v any
			if err := json.Unmarshal(data, &v); err != nil {
				t.Errorf("%s: %v", path, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Errorf("found only %d YAML and JSON files", n)
	}
}

// ---- Dockerfile ----

// dockerInstr is one Dockerfile instruction, continuation lines joined.
type dockerInstr struct {
	cmd, args string
	line      int
}

func readDockerfile(t *testing.T) []dockerInstr {
	t.Helper()
	var out []dockerInstr
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(string(readFile(t, dockerfilePath)), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, dockerInstr{strings.ToUpper(cmd), strings.TrimSpace(args), start})
		cur.Reset()
	}
	return out
}

func TestDockerfile(t *testing.T) {
	instrs := readDockerfile(t)
	args := map[string]string{}
	stages := map[string]bool{}
	var froms []string
	var built []string
	var user, cmd string
	for _, in := range instrs {
		switch in.cmd {
		case "ARG":
			k, v, _ := strings.Cut(in.args, "=")
			args[k] = v
		case "FROM":
			f := strings.Fields(in.args)
			img, err := interpolate(f[0], args)
			if err != nil {
				t.Errorf("Dockerfile:%d: %v", in.line, err)
			}
			froms = append(froms, img)
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				stages[f[2]] = true
			}
			user, cmd = "", ""
		case "RUN":
			if i := strings.Index(in.args, "go build"); i >= 0 {
				for _, w := range strings.Fields(in.args[i:]) {
					if strings.HasPrefix(w, "./") {
						built = append(built, strings.TrimSuffix(strings.TrimPrefix(w, "./"), "/"))
					}
				}
			}
		case "COPY":
			for _, w := range strings.Fields(in.args) {
				if from, ok := strings.CutPrefix(w, "--from="); ok && !stages[from] {
					t.Errorf("Dockerfile:%d: COPY --from=%s names no earlier stage", in.line, from)
				}
			}
		case "USER":
			user = in.args
		case "CMD", "ENTRYPOINT":
			var words []string
			if err := json.Unmarshal([]byte(in.args), &words); err != nil || len(words) == 0 {
				t.Errorf("Dockerfile:%d: %s %s: want the exec form", in.line, in.cmd, in.args)
			} else {
				cmd = words[0]
			}
		}
	}

	// The builder's Go is the module's.
	gomod := string(readFile(t, "../go.mod"))
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(gomod)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	if len(froms) < 2 {
		t.Fatalf("Dockerfile: want a multi-stage build, found FROM %v", froms)
	}
	if want := "golang:" + m[1]; !strings.HasPrefix(froms[0], want) {
		t.Errorf("Dockerfile: builder is %s, want %s (go.mod says go %s)", froms[0], want, m[1])
	}
	// It builds exactly the four binaries, each a package main.
	slices.Sort(built)
	want := slices.Clone(binaries)
	slices.Sort(want)
	if !slices.Equal(built, want) {
		t.Errorf("Dockerfile: go build builds %v, want %v", built, want)
	}
	// The runtime stage runs as a non-root user and starts a binary.
	uid, _, _ := strings.Cut(user, ":")
	if uid == "" || uid == "0" || uid == "root" {
		t.Errorf("Dockerfile: the runtime stage runs as %q, want a non-root USER", user)
	}
	if !slices.Contains(binaries, cmd) {
		t.Errorf("Dockerfile: CMD starts %q, want one of %v", cmd, binaries)
	}
	// The build context is the repository root; keep .git and local state out.
	ignore := string(readFile(t, dockerignorePath))
	for _, p := range []string{".git", "run", "bin"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(p) + `/?$`).MatchString(ignore) {
			t.Errorf("%s does not exclude %s", dockerignorePath, p)
		}
	}
}

// ---- compose ----

// composeService is a compose service with its variables interpolated.
type composeService struct {
	name     string
	raw      obj
	bin      string            // the gateway binary it runs, "" for others
	env      map[string]string // environment after interpolation
	rawEnv   map[string]string // environment as written
	replicas int
}

func loadCompose(t *testing.T) map[string]*composeService {
	t.Helper()
	doc := loadYAML1(t, composePath)
	dotenv := readEnvFile(t, envExamplePath)
	services := map[string]*composeService{}
	for name, v := range asObj(doc["services"]) {
		raw := asObj(v)
		s := &composeService{name: name, raw: raw, env: map[string]string{}, rawEnv: map[string]string{}, replicas: 1}
		switch e := raw["environment"].(type) {
		case obj:
			for k, v := range e {
				s.rawEnv[k] = asStr(v)
			}
		case arr:
			for _, kv := range e {
				k, v, _ := strings.Cut(asStr(kv), "=")
				s.rawEnv[k] = v
			}
		}
		for k, v := range s.rawEnv {
			iv, err := interpolate(v, dotenv)
			if err != nil {
				t.Errorf("compose %s: %s: %v (with %s)", name, k, err, envExamplePath)
			}
			s.env[k] = iv
		}
		if cmd := asArr(raw["command"]); len(cmd) > 0 && slices.Contains(binaries, asStr(cmd[0])) {
			s.bin = asStr(cmd[0])
		}
		if r := dig(raw, "deploy", "replicas"); r != nil {
			n, err := strconv.Atoi(asStr(r))
			if err != nil {
				t.Errorf("compose %s: deploy.replicas %v", name, r)
			}
			s.replicas = n
		}
		services[name] = s
	}
	return services
}

// publishedPorts parses the short syntax of ports: host port → container
// port.
func publishedPorts(t *testing.T, s *composeService) map[int]int {
	t.Helper()
	out := map[int]int{}
	for _, p := range asArr(s.raw["ports"]) {
		spec := strings.TrimSuffix(asStr(p), "/tcp")
		parts := strings.Split(spec, ":")
		c, err := strconv.Atoi(parts[len(parts)-1])
		h := c
		if len(parts) >= 2 && err == nil {
			h, err = strconv.Atoi(parts[len(parts)-2])
		}
		if err != nil {
			t.Errorf("compose %s: port %q: want [ip:]host:container", s.name, asStr(p))
			continue
		}
		out[h] = c
	}
	return out
}

var urlInCheck = regexp.MustCompile(`https?://(127\.0\.0\.1|localhost):(\d+)(/[^ "]*)`)

func TestCompose(t *testing.T) {
	services := loadCompose(t)
	// .env.example feeds compose's interpolation; a GW_* name there must
	// still be a real setting, or it reads like one that does nothing.
	dotenv := readEnvFile(t, envExamplePath)
	if _, ok := dotenv["GW_AUTH_SECRET"]; !ok {
		t.Errorf("%s does not set GW_AUTH_SECRET", envExamplePath)
	}
	f := sourceFacts(t)
	for k := range dotenv {
		if strings.HasPrefix(k, "GW_") && !f.env["apiserver"][k] && !f.env["msgworker"][k] && !f.env["pushserver"][k] {
			t.Errorf("%s: %s is read by no service", envExamplePath, k)
		}
	}

	// The parts are all there.
	for _, name := range []string{"rabbitmq", "redis"} {
		if services[name] == nil {
			t.Fatalf("compose has no service %q", name)
		}
	}
	count := map[string]int{}
	for _, s := range services {
		if s.bin != "" {
			count[s.bin] += s.replicas
		}
	}
	for bin, want := range map[string]int{"apiserver": 1, "msgworker": 2, "pushserver": 3} {
		if count[bin] < want {
			t.Errorf("compose runs %d %s, want at least %d", count[bin], bin, want)
		}
	}

	// RabbitMQ with management and Prometheus plugins; Redis durable.
	rabbit := services["rabbitmq"]
	if img := asStr(rabbit.raw["image"]); !strings.HasPrefix(img, "rabbitmq:") || !strings.Contains(img, "management") {
		t.Errorf("compose rabbitmq: image %q, want rabbitmq:…-management", img)
	}
	if hc := joinWords(dig(rabbit.raw, "healthcheck", "test")); !strings.Contains(hc, "rabbitmq-diagnostics") || !strings.Contains(hc, "ping") {
		t.Errorf("compose rabbitmq: health check %s, want rabbitmq-diagnostics ping", hc)
	}
	plugins := ""
	for _, v := range asArr(rabbit.raw["volumes"]) {
		src, dst, _ := strings.Cut(asStr(v), ":")
		if strings.HasPrefix(dst, "/etc/rabbitmq/enabled_plugins") {
			plugins = string(readFile(t, filepath.Join(composeDir, src)))
		}
	}
	for _, p := range []string{"rabbitmq_management", "rabbitmq_prometheus"} {
		if !strings.Contains(plugins, p) {
			t.Errorf("compose rabbitmq: %s is not in the mounted enabled_plugins", p)
		}
	}
	redisCmd := joinWords(services["redis"].raw["command"])
	for _, want := range []string{"--appendonly yes", "--appendfsync always"} {
		if !strings.Contains(redisCmd, want) {
			t.Errorf("compose redis: command %s lacks %s (DESIGN §7)", redisCmd, want)
		}
	}
	if hc := joinWords(dig(services["redis"].raw, "healthcheck", "test")); !strings.Contains(hc, "redis-cli ping") {
		t.Errorf("compose redis: health check %s, want redis-cli ping", hc)
	}

	// Every service has a health check; every dependency waits for one.
	for name, s := range services {
		hc := asObj(s.raw["healthcheck"])
		if len(asArr(hc["test"])) == 0 || hc["disable"] == true {
			t.Errorf("compose %s: no health check", name)
		}
		for dep, cond := range asObj(s.raw["depends_on"]) {
			if services[dep] == nil {
				t.Errorf("compose %s: depends on unknown service %s", name, dep)
			}
			if c := asStr(dig(cond, "condition")); c != "service_healthy" {
				t.Errorf("compose %s: depends on %s with condition %q, want service_healthy", name, dep, c)
			}
		}
		// Bind mounts name files that exist.
		for _, v := range asArr(s.raw["volumes"]) {
			src, _, _ := strings.Cut(asStr(v), ":")
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join(composeDir, src)); err != nil {
					t.Errorf("compose %s: mounts %s: %v", name, src, err)
				}
			}
		}
	}

	// The gateway services.
	namespaces := map[string]bool{}
	counts := map[string]bool{} // "GW_QUEUES/GW_PARTITIONS" of each service
	nodeIDs := map[string]string{}
	advertised := map[string]string{}
	var image string
	for name, s := range services {
		if s.bin == "" {
			if strings.Contains(fmt.Sprint(s.raw["image"]), imageName) {
				t.Errorf("compose %s: runs the gateway image with command %v, want one of %v", name, s.raw["command"], binaries)
			}
			continue
		}
		where := "compose " + name
		img := asStr(s.raw["image"])
		if repo, _, _ := strings.Cut(img, ":"); repo != imageName {
			t.Errorf("%s: image %q, want %s", where, img, imageName)
		}
		if image != "" && img != image {
			t.Errorf("%s: image %q, others run %q", where, img, image)
		}
		image = img
		ctx, dockerfile := asStr(dig(s.raw, "build", "context")), asStr(dig(s.raw, "build", "dockerfile"))
		if got, _ := filepath.Abs(filepath.Join(composeDir, ctx, dockerfile)); got != mustAbs(dockerfilePath) {
			t.Errorf("%s: builds %s, want deployments/%s", where, filepath.Join(ctx, dockerfile), dockerfilePath)
		}
		if got, _ := filepath.Abs(filepath.Join(composeDir, ctx)); got != repoRoot() {
			t.Errorf("%s: build context %s, want the repository root", where, ctx)
		}
		for _, dep := range []string{"rabbitmq", "redis"} {
			if asObj(s.raw["depends_on"])[dep] == nil {
				t.Errorf("%s: does not depend on %s", where, dep)
			}
		}

		checkEnv(t, where, s.bin, sortedKeys(s.env))
		if _, ok := s.env["GW_AUTH_SECRET"]; ok && !strings.Contains(s.rawEnv["GW_AUTH_SECRET"], "${GW_AUTH_SECRET:?") {
			t.Errorf("%s: GW_AUTH_SECRET=%q, want ${GW_AUTH_SECRET:?…} so that compose refuses to start without it", where, s.rawEnv["GW_AUTH_SECRET"])
		}
		namespaces[s.env["GW_NAMESPACE"]] = true
		counts[s.env["GW_QUEUES"]+"/"+s.env["GW_PARTITIONS"]] = true
		for _, v := range []string{"GW_AMQP_URL", "GW_AMQP_MGMT_URL", "GW_REDIS_URL"} {
			if _, ok := s.env[v]; !ok {
				continue // checkEnv reports a missing one
			}
			u, err := url.Parse(s.env[v])
			if err != nil || services[u.Hostname()] == nil {
				t.Errorf("%s: %s=%q does not name a compose service", where, v, s.env[v])
			}
		}

		ports := listenPorts(t, where, s.bin, s.env)
		listening := map[int]bool{}
		for _, p := range ports {
			listening[p] = true
		}
		published := publishedPorts(t, s)
		for host, c := range published {
			if !listening[c] {
				t.Errorf("%s: publishes %d:%d, but listens on %v", where, host, c, ports)
			}
		}
		hc := joinWords(dig(s.raw, "healthcheck", "test"))
		m := urlInCheck.FindStringSubmatch(hc)
		if m == nil {
			t.Errorf("%s: health check %s: want an HTTP check of 127.0.0.1", where, hc)
		} else {
			if p, _ := strconv.Atoi(m[2]); !listening[p] {
				t.Errorf("%s: health check on port %d, but %s listens on %v", where, p, s.bin, ports)
			}
			checkHTTPPath(t, where+" health check", s.bin, m[3])
		}
		if s.bin == "apiserver" && (m == nil || m[3] != "/readyz") {
			t.Errorf("%s: the health check should be /readyz (RabbitMQ and Redis reachable)", where)
		}

		if s.bin == "pushserver" {
			if s.replicas != 1 {
				t.Errorf("%s: %d replicas would share one GW_NODE_ID", where, s.replicas)
			}
			id, adv := s.env["GW_NODE_ID"], s.env["GW_ADVERTISE_URL"]
			if id == "" || adv == "" {
				t.Errorf("%s: GW_NODE_ID=%q GW_ADVERTISE_URL=%q, want both set", where, id, adv)
			}
			if other, dup := nodeIDs[id]; dup {
				t.Errorf("%s and %s share GW_NODE_ID %q", other, name, id)
			}
			if other, dup := advertised[adv]; dup {
				t.Errorf("%s and %s share GW_ADVERTISE_URL %q", other, name, adv)
			}
			nodeIDs[id], advertised[adv] = name, name
			// A client outside Docker reaches the advertised port, which
			// must be this server's published MQTT port.
			u, err := url.Parse(adv)
			if err != nil || u.Scheme != "mqtt" {
				t.Errorf("%s: GW_ADVERTISE_URL %q, want mqtt://host:port", where, adv)
				continue
			}
			hp, _ := strconv.Atoi(u.Port())
			if c, ok := published[hp]; !ok || c != ports["mqtt"] {
				t.Errorf("%s: advertises port %d, which is not published to the MQTT port %d (published %v)", where, hp, ports["mqtt"], published)
			}
		}
	}
	if len(namespaces) != 1 {
		t.Errorf("compose: GW_NAMESPACE differs between services: %v", sortedKeys(namespaces))
	}
	checkCounts(t, "compose", counts)
}

// checkCounts checks that the services of a deployment share one
// GW_QUEUES/GW_PARTITIONS pair (the keys of counts), and that it is valid.
func checkCounts(t *testing.T, where string, counts map[string]bool) (queues, partitions int) {
	t.Helper()
	if len(counts) != 1 {
		t.Errorf("%s: GW_QUEUES/GW_PARTITIONS differ between services: %v; the fence refuses all but the first", where, sortedKeys(counts))
		return protocol.DefaultQueues, protocol.DefaultPartitions
	}
	q, p, _ := strings.Cut(sortedKeys(counts)[0], "/")
	queues, err1 := strconv.Atoi(q)
	partitions, err2 := strconv.Atoi(p)
	if err := errors.Join(err1, err2, protocol.CheckQueues(queues), protocol.CheckPartitions(partitions)); err != nil {
		t.Errorf("%s: GW_QUEUES=%q GW_PARTITIONS=%q: %v", where, q, p, err)
	}
	return queues, partitions
}

func mustAbs(rel string) string {
	abs, err := filepath.Abs(rel)
	if err != nil {
		panic(err)
	}
	return abs
}

// ---- Kubernetes ----

type k8sObject struct {
	kind, name, file string
	doc              obj
}

type k8sSet struct {
	kust    obj
	objects []k8sObject
}

func (s *k8sSet) get(kind, name string) obj {
	for _, o := range s.objects {
		if o.kind == kind && o.name == name {
			return o.doc
		}
	}
	return nil
}

func (s *k8sSet) all(kinds ...string) []k8sObject {
	var out []k8sObject
	for _, o := range s.objects {
		if slices.Contains(kinds, o.kind) {
			out = append(out, o)
		}
	}
	return out
}

func loadK8s(t *testing.T) *k8sSet {
	t.Helper()
	set := &k8sSet{kust: loadYAML1(t, k8sDir+"/kustomization.yaml")}
	listed := map[string]bool{}
	for _, r := range asArr(set.kust["resources"]) {
		file := asStr(r)
		listed[file] = true
		for _, d := range loadYAML(t, k8sDir+"/"+file) {
			doc := asObj(d)
			set.objects = append(set.objects, k8sObject{
				kind: asStr(doc["kind"]), name: asStr(dig(doc, "metadata", "name")), file: file, doc: doc,
			})
		}
	}
	for _, o := range set.objects {
		if o.kind == "Secret" {
			t.Errorf("k8s/%s: Secret %s is a resource: kubectl apply -k would overwrite the real one (create it by hand, %s)", o.file, o.name, secretEnvExample)
		}
	}
	set.objects = append(set.objects, documentedSecret(t, k8sSecretName))
	entries, err := os.ReadDir(k8sDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if ext := filepath.Ext(e.Name()); (ext == ".yaml" || ext == ".yml") && e.Name() != "kustomization.yaml" && !listed[e.Name()] {
			t.Errorf("k8s/%s is not in kustomization.yaml's resources", e.Name())
		}
	}
	return set
}

// k8sSecretName is the Secret the Kubernetes files read, created by hand
// from secret.env.example.
const k8sSecretName = "gateway-secrets"

// documentedSecret stands for a Secret created as deployments/README.md
// says, with the keys of secret.env.example (as stringData). Its
// placeholder for GW_AUTH_SECRET must be one the services refuse.
func documentedSecret(t *testing.T, name string) k8sObject {
	t.Helper()
	env := readEnvFile(t, secretEnvExample)
	data := obj{}
	for k, v := range env {
		data[k] = v
	}
	if err := auth.CheckSecret(env["GW_AUTH_SECRET"]); err == nil {
		t.Errorf("%s: GW_AUTH_SECRET=%q is a placeholder the services accept; make it one they refuse (auth.CheckSecret)", secretEnvExample, env["GW_AUTH_SECRET"])
	}
	return k8sObject{kind: "Secret", name: name, file: filepath.Base(secretEnvExample), doc: obj{
		"apiVersion": "v1", "kind": "Secret", "metadata": obj{"name": name}, "stringData": data,
	}}
}

// matches reports whether labels has every pair of selector.
func matches(selector, labels obj) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if asStr(labels[k]) != asStr(v) {
			return false
		}
	}
	return true
}

// containerEnv resolves the variables of a container: envFrom ConfigMaps
// and Secrets first, then env in order (a $(VAR) reference must name a
// variable defined before it). It returns the values (Secret values and
// fieldRefs as placeholders) and where each came from.
func containerEnv(t *testing.T, where string, set *k8sSet, c obj) (map[string]string, map[string]string) {
	t.Helper()
	env, source := map[string]string{}, map[string]string{}
	for _, ef := range asArr(c["envFrom"]) {
		if name := asStr(dig(ef, "configMapRef", "name")); name != "" {
			cm := set.get("ConfigMap", name)
			if cm == nil {
				t.Errorf("%s: envFrom names no ConfigMap %q", where, name)
			}
			for k, v := range asObj(cm["data"]) {
				if _, ok := v.(string); !ok {
					t.Errorf("ConfigMap %s: %s is %T, want a string (quote it)", name, k, v)
				}
				env[k], source[k] = asStr(v), "configmap"
			}
		}
		if name := asStr(dig(ef, "secretRef", "name")); name != "" {
			sec := set.get("Secret", name)
			if sec == nil {
				t.Errorf("%s: envFrom names no Secret %q", where, name)
			}
			for k := range asObj(sec["stringData"]) {
				env[k], source[k] = "<secret>", "secret"
			}
			for k := range asObj(sec["data"]) {
				env[k], source[k] = "<secret>", "secret"
			}
		}
	}
	refRE := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	for _, e := range asArr(c["env"]) {
		name := asStr(dig(e, "name"))
		if v, ok := asObj(e)["value"]; ok {
			val := asStr(v)
			for _, m := range refRE.FindAllStringSubmatch(val, -1) {
				if _, ok := env[m[1]]; !ok {
					t.Errorf("%s: %s refers to $(%s), which is not defined before it", where, name, m[1])
				}
			}
			env[name], source[name] = val, "value"
			continue
		}
		vf := asObj(dig(e, "valueFrom"))
		switch {
		case vf["secretKeyRef"] != nil:
			sn, key := asStr(dig(vf, "secretKeyRef", "name")), asStr(dig(vf, "secretKeyRef", "key"))
			if !secretHasKey(set.get("Secret", sn), key) {
				t.Errorf("%s: %s comes from Secret %s key %s, which does not exist", where, name, sn, key)
			}
			env[name], source[name] = "<secret "+key+">", "secret"
		case vf["configMapKeyRef"] != nil:
			cn, key := asStr(dig(vf, "configMapKeyRef", "name")), asStr(dig(vf, "configMapKeyRef", "key"))
			v, ok := asObj(set.get("ConfigMap", cn)["data"])[key]
			if !ok {
				t.Errorf("%s: %s comes from ConfigMap %s key %s, which does not exist", where, name, cn, key)
			}
			env[name], source[name] = asStr(v), "configmap"
		case vf["fieldRef"] != nil:
			env[name], source[name] = "<"+asStr(dig(vf, "fieldRef", "fieldPath"))+">", "field"
		default:
			t.Errorf("%s: %s has neither value nor a known valueFrom", where, name)
		}
	}
	return env, source
}

// secretHasKey reports whether a Secret has key, in stringData or data.
func secretHasKey(sec obj, key string) bool {
	_, inString := asObj(sec["stringData"])[key]
	_, inData := asObj(sec["data"])[key]
	return inString || inData
}

// containerPorts maps the port names of a container to their numbers.
func containerPorts(c obj) (map[string]int, map[int]bool) {
	named, numbers := map[string]int{}, map[int]bool{}
	for _, p := range asArr(c["ports"]) {
		n, _ := strconv.Atoi(asStr(dig(p, "containerPort")))
		numbers[n] = true
		if name := asStr(dig(p, "name")); name != "" {
			named[name] = n
		}
	}
	return named, numbers
}

// resolvePort resolves a port given by name or number.
func resolvePort(v any, named map[string]int) (int, bool) {
	if n, err := strconv.Atoi(asStr(v)); err == nil {
		return n, true
	}
	n, ok := named[asStr(v)]
	return n, ok
}

func TestKubernetes(t *testing.T) {
	set := loadK8s(t)
	ns := asStr(set.kust["namespace"])
	if nsObj := set.all("Namespace"); len(nsObj) != 1 || nsObj[0].name != ns {
		t.Errorf("k8s: kustomization namespace %q, want one Namespace resource of that name", ns)
	}
	imageOK := false
	for _, img := range asArr(set.kust["images"]) {
		imageOK = imageOK || asStr(dig(img, "name")) == imageName
	}
	if !imageOK {
		t.Errorf("k8s: kustomization.yaml sets no tag for %s (images:)", imageName)
	}

	// URLs in the Secret name hosts that resolve from KEDA's namespace too.
	for _, sec := range set.all("Secret") {
		for k, v := range asObj(sec.doc["stringData"]) {
			if !strings.HasSuffix(k, "_URL") {
				continue
			}
			u, err := url.Parse(asStr(v))
			if err != nil || !strings.HasSuffix(u.Hostname(), "."+ns+".svc") {
				t.Errorf("Secret %s: %s host %q, want <service>.%s.svc", sec.name, k, u.Hostname(), ns)
			}
		}
	}

	f := checkWorkloads(t, "k8s", set, imageName)
	checkServices(t, set, f)
	checkScaledObject(t, "k8s", set, f, true)
}

// workloadFacts is what checkWorkloads learned of a set of Kubernetes
// objects, for the checks that follow.
type workloadFacts struct {
	workloads          []k8sObject
	podPorts           map[string]map[string]int // workload name → named ports
	ns                 string                    // GW_NAMESPACE
	queues, partitions int
}

// checkWorkloads checks the Deployments and StatefulSets of set (the
// kustomize files or a rendered chart, named by what) against what the
// binaries read and serve: image, command, security, resources, variables
// (from ConfigMaps and Secrets of set), ports, probes, the pushserver's
// identity, a PodDisruptionBudget each, and one GW_NAMESPACE,
// GW_QUEUES/GW_PARTITIONS and GW_RETENTION for all.
func checkWorkloads(t *testing.T, what string, set *k8sSet, image string) workloadFacts {
	t.Helper()
	workloads := set.all("Deployment", "StatefulSet")
	seen := map[string]bool{}
	namespaces := map[string]bool{}
	counts := map[string]bool{} // "GW_QUEUES/GW_PARTITIONS" of each service
	retention := map[string]bool{}
	podPorts := map[string]map[string]int{} // workload name → named ports
	for _, w := range workloads {
		where := w.kind + " " + w.name
		spec := asObj(w.doc["spec"])
		tmpl := asObj(spec["template"])
		podLabels := asObj(dig(tmpl, "metadata", "labels"))
		if !matches(asObj(dig(spec, "selector", "matchLabels")), podLabels) {
			t.Errorf("%s: selector does not match the pod labels", where)
		}
		pod := asObj(tmpl["spec"])
		if dig(pod, "securityContext", "runAsNonRoot") != true {
			t.Errorf("%s: pod securityContext.runAsNonRoot is not true", where)
		}
		containers := asArr(pod["containers"])
		if len(containers) != 1 {
			t.Errorf("%s: %d containers, want 1", where, len(containers))
		}
		for _, cv := range containers {
			c := asObj(cv)
			cwhere := where + " container " + asStr(c["name"])
			if img := asStr(c["image"]); img != image {
				t.Errorf("%s: %s: image %q, want %s", what, cwhere, img, image)
			}
			cmd := asArr(c["command"])
			if len(cmd) == 0 || !slices.Contains(binaries, asStr(cmd[0])) {
				t.Errorf("%s: command %v, want one of %v", cwhere, c["command"], binaries)
				continue
			}
			bin := asStr(cmd[0])
			seen[bin] = true
			sc := asObj(c["securityContext"])
			if sc["readOnlyRootFilesystem"] != true || sc["allowPrivilegeEscalation"] != false {
				t.Errorf("%s: want securityContext readOnlyRootFilesystem: true, allowPrivilegeEscalation: false", cwhere)
			}
			if drop := fmt.Sprint(dig(sc, "capabilities", "drop")); drop != "[ALL]" {
				t.Errorf("%s: capabilities.drop %s, want [ALL]", cwhere, drop)
			}
			for _, kind := range []string{"requests", "limits"} {
				for _, r := range []string{"cpu", "memory"} {
					if dig(c, "resources", kind, r) == nil {
						t.Errorf("%s: no resources.%s.%s", cwhere, kind, r)
					}
				}
			}

			env, source := containerEnv(t, cwhere, set, c)
			checkEnv(t, cwhere, bin, sortedKeys(env))
			for _, v := range []string{"GW_AUTH_SECRET", "GW_AMQP_URL", "GW_AMQP_MGMT_URL", "GW_REDIS_URL"} {
				if _, ok := env[v]; ok && source[v] != "secret" {
					t.Errorf("%s: %s comes from a %s, want a Secret", cwhere, v, source[v])
				}
			}
			namespaces[env["GW_NAMESPACE"]] = true
			counts[env["GW_QUEUES"]+"/"+env["GW_PARTITIONS"]] = true
			if r, ok := env["GW_RETENTION"]; ok {
				retention[r] = true
			}

			listen := listenPorts(t, cwhere, bin, env)
			named, numbers := containerPorts(c)
			podPorts[w.name] = named
			for role, p := range listen {
				if !numbers[p] {
					t.Errorf("%s: listens on %d (%s) but declares ports %v", cwhere, p, role, named)
				}
				if named[role] != p {
					t.Errorf("%s: want the %s port %d named %q (Services and Prometheus select it by name)", cwhere, role, p, role)
				}
			}
			for n := range numbers {
				if !slices.Contains(sortedValues(listen), n) {
					t.Errorf("%s: declares port %d, which %s does not listen on", cwhere, n, bin)
				}
			}
			for _, probe := range []string{"readinessProbe", "livenessProbe"} {
				pr := asObj(c[probe])
				if pr == nil {
					t.Errorf("%s: no %s", cwhere, probe)
					continue
				}
				var port any
				if hg := asObj(pr["httpGet"]); hg != nil {
					checkHTTPPath(t, cwhere+" "+probe, bin, asStr(hg["path"]))
					port = hg["port"]
				} else if ts := asObj(pr["tcpSocket"]); ts != nil {
					port = ts["port"]
				}
				if p, ok := resolvePort(port, named); !ok || !numbers[p] {
					t.Errorf("%s: %s port %v is not a port of the container", cwhere, probe, port)
				}
			}
			if bin == "apiserver" && asStr(dig(c, "readinessProbe", "httpGet", "path")) != "/readyz" {
				t.Errorf("%s: readiness should be /readyz (RabbitMQ and Redis reachable)", cwhere)
			}

			if bin == "pushserver" {
				if w.kind != "StatefulSet" {
					t.Errorf("%s: pushservers need stable node IDs: want a StatefulSet", where)
				}
				svcName := asStr(spec["serviceName"])
				svc := set.get("Service", svcName)
				if svc == nil || asStr(dig(svc, "spec", "clusterIP")) != "None" {
					t.Errorf("%s: serviceName %q is not a headless Service", where, svcName)
				}
				if env["POD_NAME"] != "<metadata.name>" || env["POD_NAMESPACE"] != "<metadata.namespace>" {
					t.Errorf("%s: POD_NAME and POD_NAMESPACE must come from the downward API (metadata.name, metadata.namespace)", cwhere)
				}
				if env["GW_NODE_ID"] != "$(POD_NAME)" {
					t.Errorf("%s: GW_NODE_ID=%q, want $(POD_NAME)", cwhere, env["GW_NODE_ID"])
				}
				want := fmt.Sprintf("mqtt://$(POD_NAME).%s.$(POD_NAMESPACE).svc:%d", svcName, listen["mqtt"])
				if env["GW_ADVERTISE_URL"] != want {
					t.Errorf("%s: GW_ADVERTISE_URL=%q, want %q", cwhere, env["GW_ADVERTISE_URL"], want)
				}
			}
		}

		// A PodDisruptionBudget covers every workload.
		covered := false
		for _, pdb := range set.all("PodDisruptionBudget") {
			covered = covered || matches(asObj(dig(pdb.doc, "spec", "selector", "matchLabels")), podLabels)
		}
		if !covered {
			t.Errorf("%s: no PodDisruptionBudget selects its pods", where)
		}
	}
	for _, bin := range []string{"apiserver", "msgworker", "pushserver"} {
		if !seen[bin] {
			t.Errorf("%s: no workload runs %s", what, bin)
		}
	}
	if len(namespaces) != 1 {
		t.Errorf("%s: GW_NAMESPACE differs between services: %v", what, sortedKeys(namespaces))
	}
	if len(retention) > 1 {
		t.Errorf("%s: GW_RETENTION differs between apiserver and msgworker: %v", what, sortedKeys(retention))
	}
	f := workloadFacts{workloads: workloads, podPorts: podPorts}
	f.queues, f.partitions = checkCounts(t, what, counts)
	for n := range namespaces {
		f.ns = n
	}
	return f
}

// checkServices checks that every Service selects a workload and targets
// its ports.
func checkServices(t *testing.T, set *k8sSet, f workloadFacts) {
	t.Helper()
	for _, svc := range set.all("Service") {
		sel := asObj(dig(svc.doc, "spec", "selector"))
		var target string
		for _, w := range f.workloads {
			if matches(sel, asObj(dig(w.doc, "spec", "template", "metadata", "labels"))) {
				target = w.name
			}
		}
		if target == "" {
			t.Errorf("Service %s selects no workload", svc.name)
			continue
		}
		for _, p := range asArr(dig(svc.doc, "spec", "ports")) {
			if _, ok := resolvePort(dig(p, "targetPort"), f.podPorts[target]); !ok {
				t.Errorf("Service %s: targetPort %v is not a port of %s", svc.name, dig(p, "targetPort"), target)
			}
		}
	}
}

// checkScaledObject checks KEDA's ScaledObject, which scales the workers
// on the command queues of the namespace, summed (a queue-name regex
// through the management API), when keda is true, and that there is none
// and the msgworker Deployment has a replica count otherwise. Device
// answers do not cross RabbitMQ, so there is no results queue to scale on.
func checkScaledObject(t *testing.T, what string, set *k8sSet, f workloadFacts, keda bool) {
	t.Helper()
	ns1 := f.ns
	topo := protocol.NewTopology(ns1, f.queues, f.partitions)
	sos := set.all("ScaledObject")
	if !keda {
		if len(sos) != 0 || len(set.all("TriggerAuthentication")) != 0 {
			t.Errorf("%s: KEDA is off, yet there are %d ScaledObjects and %d TriggerAuthentications", what, len(sos), len(set.all("TriggerAuthentication")))
		}
		for _, d := range set.all("Deployment") {
			if cs := asArr(dig(d.doc, "spec", "template", "spec", "containers")); len(cs) > 0 && fmt.Sprint(dig(cs[0], "command")) == "[msgworker]" {
				if r, err := strconv.Atoi(asStr(dig(d.doc, "spec", "replicas"))); err != nil || r < 1 {
					t.Errorf("%s: without KEDA, Deployment %s needs a replica count (it has %v)", what, d.name, dig(d.doc, "spec", "replicas"))
				}
			}
		}
		return
	}
	if len(sos) != 1 {
		t.Fatalf("%s: %d KEDA ScaledObjects, want 1", what, len(sos))
	}
	so := sos[0].doc
	target := asStr(dig(so, "spec", "scaleTargetRef", "name"))
	d := set.get("Deployment", target)
	if cs := asArr(dig(d, "spec", "template", "spec", "containers")); len(cs) == 0 || fmt.Sprint(dig(cs[0], "command")) != "[msgworker]" {
		t.Errorf("ScaledObject %s: scaleTargetRef %q is not the msgworker Deployment", sos[0].name, target)
	}
	if dig(d, "spec", "replicas") != nil {
		t.Errorf("Deployment %s: sets replicas, which fights KEDA's HPA on every apply", target)
	}
	commands := false
	for _, tr := range asArr(dig(so, "spec", "triggers")) {
		md := asObj(dig(tr, "metadata"))
		q := asStr(md["queueName"])
		if asStr(dig(tr, "type")) != "rabbitmq" {
			t.Errorf("ScaledObject: trigger type %v, want rabbitmq", dig(tr, "type"))
		}
		if asStr(md["mode"]) != "QueueLength" {
			t.Errorf("ScaledObject: trigger on %s has mode %q, want QueueLength", q, md["mode"])
		}
		hostKey := ""
		auth := asStr(dig(tr, "authenticationRef", "name"))
		ta := set.get("TriggerAuthentication", auth)
		if ta == nil {
			t.Errorf("ScaledObject: trigger on %s uses TriggerAuthentication %q, which does not exist", q, auth)
		}
		for _, ref := range asArr(dig(ta, "spec", "secretTargetRef")) {
			sn, key := asStr(dig(ref, "name")), asStr(dig(ref, "key"))
			if !secretHasKey(set.get("Secret", sn), key) {
				t.Errorf("TriggerAuthentication %s: Secret %s has no key %s", auth, sn, key)
			}
			if asStr(dig(ref, "parameter")) == "host" {
				hostKey = key
			}
		}
		if asStr(md["useRegex"]) == "true" {
			checkCommandsTrigger(t, topo, md, hostKey)
			commands = true
			continue
		}
		if !slices.Contains(topo.Queues(), q) {
			t.Errorf("ScaledObject: queueName %q is not a queue of namespace %q (%v)", q, ns1, topo.Queues())
		}
		if slices.Contains(topo.CommandQueues(), q) {
			t.Errorf("ScaledObject: a trigger on the one command queue %s: scale on their sum (useRegex, operation sum)", q)
		}
		if strings.HasSuffix(q, ".results") || strings.HasSuffix(q, ".results.dead") {
			t.Errorf("ScaledObject: a trigger on %s, a results queue that no longer exists", q)
		}
	}
	if !commands {
		t.Errorf("ScaledObject: no trigger on the command queues of %q (useRegex with operation sum)", ns1)
	}
}

// checkCommandsTrigger checks KEDA's trigger on the command queues: the
// management API (protocol http, with the host from GW_AMQP_MGMT_URL), a
// queue-name regex that matches every command queue of topo, and of any
// other count, and no other queue of the namespace or of another, summed
// over the ready messages.
func checkCommandsTrigger(t *testing.T, topo protocol.Topology, md obj, hostKey string) {
	t.Helper()
	if p := asStr(md["protocol"]); p != "http" {
		t.Errorf("ScaledObject: the regex trigger has protocol %q; useRegex needs http (the management API)", p)
	}
	if hostKey != "GW_AMQP_MGMT_URL" {
		t.Errorf("ScaledObject: the regex trigger's host comes from %q, want the management API's URL, GW_AMQP_MGMT_URL", hostKey)
	}
	if op := asStr(md["operation"]); op != "sum" {
		t.Errorf("ScaledObject: the regex trigger has operation %q, want sum (every worker consumes every command queue)", op)
	}
	if asStr(md["excludeUnacknowledged"]) != "true" {
		t.Errorf("ScaledObject: the regex trigger counts unacknowledged messages; set excludeUnacknowledged (workers hold GW_PREFETCH each)")
	}
	if n, err := strconv.Atoi(asStr(md["pageSize"])); md["pageSize"] != nil && (err != nil || n <= protocol.MaxQueues) {
		t.Errorf("ScaledObject: pageSize %v, want more than %d (KEDA fails when the regex matches more than a page)", md["pageSize"], protocol.MaxQueues)
	} else if md["pageSize"] == nil && topo.QueueCount >= 100 {
		t.Errorf("ScaledObject: %d command queues need a pageSize above KEDA's default of 100", topo.QueueCount)
	}
	re, err := regexp.Compile(asStr(md["queueName"]))
	if err != nil {
		t.Errorf("ScaledObject: queueName %q: %v", md["queueName"], err)
		return
	}
	for _, other := range []int{1, topo.QueueCount, 16, protocol.MaxQueues} {
		for _, q := range protocol.NewTopology(topo.NS, other, topo.PartitionCount).CommandQueues() {
			if !re.MatchString(q) {
				t.Errorf("ScaledObject: queueName %q does not match the command queue %s", re, q)
			}
		}
	}
	others := append([]string{topo.NS + ".results", topo.CommandsDeadQueue, topo.NS + ".results.dead", topo.FenceQueue, topo.CommandsGroup,
		topo.NS + "x.commands.0", "x" + topo.NS + ".commands.0", topo.NS + ".commands.0.dead"},
		protocol.NewTopology(topo.NS+"-other", topo.QueueCount, topo.PartitionCount).Queues()...)
	for _, q := range others {
		if re.MatchString(q) {
			t.Errorf("ScaledObject: queueName %q matches %s, which is not a command queue of %s", re, q, topo.NS)
		}
	}
}

func sortedValues(m map[string]int) []int {
	var out []int
	for _, v := range m {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

// ---- monitoring ----

var (
	gwMetricRE = regexp.MustCompile(`\bgw_[a-z0-9_]+`)
	selectorRE = regexp.MustCompile(`\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}`)
	matcherRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
)

// checkPromQL checks an expression against the sources: every gw_* name is
// a registered metric, brackets balance, and the label values the code
// sets (route, queue, outcome) and the job names exist.
func checkPromQL(t *testing.T, where, expr string) {
	t.Helper()
	f := sourceFacts(t)
	for _, name := range gwMetricRE.FindAllString(expr, -1) {
		if !f.knownMetric(name) {
			t.Errorf("%s: metric %s is registered by no service (known: %v)", where, name, sortedKeys(f.metrics))
		}
	}
	depth := map[rune]int{}
	pairs := map[rune]rune{')': '(', ']': '[', '}': '{'}
	inStr := false
	for i, r := range expr {
		switch {
		case r == '"' && (i == 0 || expr[i-1] != '\\'):
			inStr = !inStr
		case inStr:
		case r == '(' || r == '[' || r == '{':
			depth[r]++
		case pairs[r] != 0:
			depth[pairs[r]]--
			if depth[pairs[r]] < 0 {
				t.Errorf("%s: unbalanced %c in %s", where, r, expr)
				return
			}
		}
	}
	for r, d := range depth {
		if d != 0 {
			t.Errorf("%s: unbalanced %c in %s", where, r, expr)
		}
	}
	for _, sel := range selectorRE.FindAllStringSubmatch(expr, -1) {
		metric := sel[1]
		for _, m := range matcherRE.FindAllStringSubmatch(sel[2], -1) {
			label, op, value := m[1], m[2], m[3]
			if op == "=~" && label == "queue" && (strings.HasPrefix(metric, "rabbitmq_") || strings.HasPrefix(metric, "gw_queue_")) {
				checkQueueRegex(t, where, value)
				continue
			}
			if op != "=" && !(op == "=~" && label == "job") {
				continue
			}
			values := []string{value}
			if op == "=~" {
				values = strings.Split(value, "|")
			}
			for _, v := range values {
				switch {
				case label == "job":
					if !slices.Contains(gatewayJobs, v) {
						t.Errorf("%s: job %q is not a job of the scrape configs %v", where, v, gatewayJobs)
					}
				case label == "route" && strings.HasPrefix(metric, "gw_api_"):
					if !f.paths["apiserver"][v] {
						t.Errorf("%s: route %q is not an apiserver route", where, v)
					}
				case (label == "queue" || label == "outcome") && strings.HasPrefix(metric, "gw_worker_"):
					if !f.literals["msgworker"][v] && !f.literals["mailbox"][v] {
						t.Errorf("%s: %s=%q appears nowhere in msgworker or mailbox", where, label, v)
					}
				case label == "queue" && (strings.HasPrefix(metric, "rabbitmq_") || strings.HasPrefix(metric, "gw_queue_")):
					ns, _, _ := strings.Cut(v, ".")
					if !strings.Contains(v, "$") && !slices.Contains(protocol.NewTopology(ns, protocol.MaxQueues, protocol.DefaultPartitions).Queues(), v) {
						t.Errorf("%s: queue %q is not a gateway queue (the command queues are %s.commands.N)", where, v, ns)
					}
				}
			}
		}
	}
}

// checkQueueRegex checks a queue=~"…" matcher of the dashboard ($ns is
// the namespace) or the alerts: it must match some queue of a namespace
// ("gw", four command queues), and one that names the command queues
// (commands followed by a number) must match all of them and no other
// queue.
func checkQueueRegex(t *testing.T, where, value string) {
	t.Helper()
	expr := strings.ReplaceAll(strings.ReplaceAll(value, "$ns", "gw"), `\\`, `\`) // PromQL string escapes
	if strings.Contains(expr, "$") {
		return // another variable
	}
	re, err := regexp.Compile("^(?:" + expr + ")$") // PromQL anchors its regexes
	if err != nil {
		t.Errorf("%s: queue=~%q: %v", where, value, err)
		return
	}
	topo := protocol.NewTopology("gw", 4, protocol.DefaultPartitions)
	var matched []string
	for _, q := range append(topo.Queues(), topo.FenceQueue) {
		if re.MatchString(q) {
			matched = append(matched, q)
		}
	}
	if len(matched) == 0 {
		t.Errorf("%s: queue=~%q matches no queue of %v", where, value, topo.Queues())
	}
	if strings.Contains(value, "commands") && strings.Contains(value, "[0-9]") && !slices.Equal(matched, topo.CommandQueues()) {
		t.Errorf("%s: queue=~%q matches %v, want exactly the command queues %v", where, value, matched, topo.CommandQueues())
	}
	if slices.Contains(matched, topo.FenceQueue) && !strings.Contains(value, ".*") {
		t.Errorf("%s: queue=~%q matches the fence %s, which carries no messages", where, value, topo.FenceQueue)
	}
}

func TestPrometheus(t *testing.T) {
	services := loadCompose(t)
	for _, path := range []string{prometheusPath, prometheusK8s} {
		doc := loadYAML1(t, path)
		for _, rf := range asArr(doc["rule_files"]) {
			if _, err := os.Stat(filepath.Join(filepath.Dir(path), asStr(rf))); err != nil {
				t.Errorf("%s: rule file %v: %v", path, rf, err)
			}
		}
		jobs := map[string]obj{}
		for _, sc := range asArr(doc["scrape_configs"]) {
			jobs[asStr(dig(sc, "job_name"))] = asObj(sc)
		}
		if got, want := sortedKeys(jobs), slices.Sorted(slices.Values(gatewayJobs)); !slices.Equal(got, want) {
			t.Errorf("%s: jobs %v, want %v", path, got, want)
		}
		for name, job := range jobs {
			mp := asStr(job["metrics_path"])
			if mp == "" {
				mp = "/metrics"
			}
			if slices.Contains(binaries, name) {
				checkHTTPPath(t, path+" job "+name, name, mp)
			}
			if strings.HasPrefix(name, "rabbitmq-queues") {
				if fam := fmt.Sprint(dig(job, "params", "family")); !strings.Contains(fam, "queue_coarse_metrics") || mp != "/metrics/detailed" {
					t.Errorf("%s: job %s must scrape /metrics/detailed with family=queue_coarse_metrics (for rabbitmq_detailed_queue_*)", path, name)
				}
			}
			if path == prometheusPath {
				checkComposeTargets(t, name, job, services)
			} else {
				checkK8sTargets(t, name, job)
			}
		}
	}
}

// checkComposeTargets checks that a job of prometheus.yml scrapes compose
// services on ports they listen on.
func checkComposeTargets(t *testing.T, job string, cfg obj, services map[string]*composeService) {
	t.Helper()
	var targets []string
	for _, sc := range asArr(cfg["static_configs"]) {
		for _, tg := range asArr(dig(sc, "targets")) {
			targets = append(targets, asStr(tg))
		}
	}
	for _, sd := range asArr(cfg["dns_sd_configs"]) {
		for _, n := range asArr(dig(sd, "names")) {
			targets = append(targets, net.JoinHostPort(asStr(n), asStr(dig(sd, "port"))))
		}
	}
	if len(targets) == 0 {
		t.Errorf("%s job %s: no targets", prometheusPath, job)
	}
	for _, tg := range targets {
		host, port, err := hostPort(tg)
		s := services[host]
		if err != nil || s == nil {
			t.Errorf("%s job %s: target %q is not a compose service", prometheusPath, job, tg)
			continue
		}
		if s.bin == "" {
			if host == "rabbitmq" && port != 15692 {
				t.Errorf("%s job %s: RabbitMQ's Prometheus plugin listens on 15692, not %d", prometheusPath, job, port)
			}
			continue
		}
		if s.bin != job {
			t.Errorf("%s job %s: target %s runs %s", prometheusPath, job, tg, s.bin)
		}
		ok := false
		for _, p := range listenPorts(t, "compose "+host, s.bin, s.env) {
			ok = ok || p == port
		}
		if !ok {
			t.Errorf("%s job %s: %s does not listen on %d", prometheusPath, job, host, port)
		}
	}
	for name, s := range services {
		if s.bin == job && !slices.ContainsFunc(targets, func(tg string) bool { return strings.HasPrefix(tg, name+":") }) {
			t.Errorf("%s job %s: compose service %s is not scraped", prometheusPath, job, name)
		}
	}
}

// checkK8sTargets checks that a job of prometheus-k8s.yml keeps pods by
// the app.kubernetes.io/name label and a port name that the workload has.
func checkK8sTargets(t *testing.T, job string, cfg obj) {
	t.Helper()
	if !slices.Contains([]string{"apiserver", "msgworker", "pushserver"}, job) {
		return
	}
	set := loadK8s(t)
	for _, rc := range asArr(cfg["relabel_configs"]) {
		if asStr(dig(rc, "action")) != "keep" {
			continue
		}
		name, port, ok := strings.Cut(asStr(dig(rc, "regex")), ";")
		if !ok {
			continue
		}
		found := false
		for _, w := range set.all("Deployment", "StatefulSet") {
			tmpl := asObj(dig(w.doc, "spec", "template"))
			if asStr(dig(tmpl, "metadata", "labels", "app.kubernetes.io/name")) != name {
				continue
			}
			for _, c := range asArr(dig(tmpl, "spec", "containers")) {
				named, _ := containerPorts(asObj(c))
				_, found = named[port]
			}
		}
		if !found || name != job {
			t.Errorf("%s job %s: keeps %s pods' port %q, which no such workload has", prometheusK8s, job, name, port)
		}
		return
	}
	t.Errorf("%s job %s: no keep rule on pod label and port name", prometheusK8s, job)
}

func TestAlerts(t *testing.T) {
	doc := loadYAML1(t, alertsPath)
	names := map[string]bool{}
	for _, g := range asArr(doc["groups"]) {
		for _, r := range asArr(dig(g, "rules")) {
			rule := asObj(r)
			name := asStr(rule["alert"])
			where := alertsPath + " " + name
			if name == "" || names[name] {
				t.Errorf("%s: missing or duplicate alert name", where)
			}
			names[name] = true
			if asStr(dig(rule, "labels", "severity")) == "" || asStr(dig(rule, "annotations", "summary")) == "" {
				t.Errorf("%s: want labels.severity and annotations.summary", where)
			}
			expr := asStr(rule["expr"])
			if strings.TrimSpace(expr) == "" {
				t.Errorf("%s: empty expr", where)
			}
			checkPromQL(t, where, expr)
		}
	}
	for _, want := range []string{"GatewayQueueBacklogGrowing", "GatewayDeadLetters", "GatewayNoPushServers", "GatewayAPI5xx"} {
		if !names[want] {
			t.Errorf("%s: no alert %s", alertsPath, want)
		}
	}
}

// dashboardExprs returns the queries of the dashboard's panels.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	var dash struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(readFile(t, dashboardPath), &dash); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var out []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	return out
}

func TestGrafana(t *testing.T) {
	var dash struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Templating struct {
			List []struct {
				Name, Type string
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(readFile(t, dashboardPath), &dash); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Errorf("%s: want a uid and a title", dashboardPath)
	}
	vars := map[string]bool{}
	for _, v := range dash.Templating.List {
		vars[v.Name] = true
	}
	var all strings.Builder
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		where := dashboardPath + " panel " + strconv.Quote(p.Title)
		if ds := strings.Trim(p.Datasource.UID, "${}"); !vars[ds] {
			t.Errorf("%s: data source %q is not a dashboard variable", where, p.Datasource.UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no query", where)
		}
		for _, tg := range p.Targets {
			checkPromQL(t, where, tg.Expr)
			all.WriteString(tg.Expr + "\n")
		}
	}
	// The dashboard shows what the issue asks for.
	for what, metric := range map[string]string{
		"queue depth":          "gw_queue_ready_messages",
		"queue consumers":      "gw_queue_consumers",
		"mailboxes":            "gw_mailbox_entries",
		"pending timers":       "gw_timers_pending",
		"dead commands":        "gw_dead_commands",
		"command rates":        "gw_worker_handled_total",
		"202 latency":          "gw_api_request_duration_seconds_bucket",
		"push sessions":        "gw_push_sessions",
		"deliveries":           "gw_push_deliveries_total",
		"acks":                 "gw_push_acks_total",
		"dead letters":         "gw_worker_dead_letters_total",
		"timers":               "gw_worker_timers_fired_total",
		"accepted commands":    "gw_api_commands_accepted_total",
		"requests by status":   "gw_api_requests_total",
		"publish failures":     "gw_api_publish_failures_total",
		"responses dropped":    "gw_push_responses_dropped_total",
		"redirects and sheds":  "gw_push_redirects_total",
		"worker handler times": "gw_worker_handler_duration_seconds_bucket",
	} {
		if !strings.Contains(all.String(), metric) {
			t.Errorf("%s: no panel shows %s (%s)", dashboardPath, what, metric)
		}
	}

	// Provisioning: the data source is the compose Prometheus, the
	// dashboards folder is where compose mounts this one.
	services := loadCompose(t)
	ds := loadYAML1(t, grafanaDSPath)
	for _, d := range asArr(ds["datasources"]) {
		u, err := url.Parse(asStr(dig(d, "url")))
		if err != nil || services[u.Hostname()] == nil || u.Port() != "9090" {
			t.Errorf("%s: url %v, want the compose prometheus service on 9090", grafanaDSPath, dig(d, "url"))
		}
	}
	prov := loadYAML1(t, grafanaDashProv)
	dir := asStr(dig(asArr(prov["providers"])[0], "options", "path"))
	mounted := false
	for _, v := range asArr(services["grafana"].raw["volumes"]) {
		src, dst, _ := strings.Cut(asStr(v), ":")
		dst, _, _ = strings.Cut(dst, ":")
		if dst == dir {
			got, _ := filepath.Abs(filepath.Join(composeDir, src))
			mounted = got == mustAbs(filepath.Dir(dashboardPath))
		}
	}
	if !mounted {
		t.Errorf("%s: path %s is not where compose mounts %s", grafanaDashProv, dir, filepath.Dir(dashboardPath))
	}
}

// ---- the real tools, where installed ----

// tool runs name with args in dir, with a timeout.
func tool(t *testing.T, dir, name string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

func TestDockerCompose(t *testing.T) {
	if _, err := exec.LookPath("docker"); err != nil {
		t.Log("docker is not installed: skipping `docker compose config`")
		return
	}
	if _, err := tool(t, ".", "docker", "compose", "version"); err != nil {
		t.Log("`docker compose version` fails (no compose plugin): skipping `docker compose config`")
		return
	}
	for _, profile := range []string{"", "monitoring"} {
		args := []string{"compose", "--env-file", ".env.example", "-f", "compose.yaml"}
		if profile != "" {
			args = append(args, "--profile", profile)
		}
		if _, err := tool(t, composeDir, "docker", append(args, "config", "--quiet")...); err != nil {
			t.Error(err)
		}
	}
}

func TestKustomize(t *testing.T) {
	if _, err := exec.LookPath("kubectl"); err != nil {
		t.Log("kubectl is not installed: skipping `kubectl kustomize`")
		return
	}
	out, err := tool(t, ".", "kubectl", "kustomize", k8sDir)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := decodeYAML(out)
	if err != nil {
		t.Fatalf("kubectl kustomize output: %v", err)
	}
	kinds := map[string]int{}
	for _, d := range docs {
		kinds[asStr(dig(d, "kind"))]++
		if ns := asStr(dig(d, "metadata", "namespace")); dig(d, "kind") != "Namespace" && ns != "iotgw" {
			t.Errorf("kustomize: %v %v is in namespace %q", dig(d, "kind"), dig(d, "metadata", "name"), ns)
		}
		for _, c := range asArr(dig(d, "spec", "template", "spec", "containers")) {
			if img := asStr(dig(c, "image")); !strings.HasPrefix(img, imageName+":") {
				t.Errorf("kustomize: image %q has no tag", img)
			}
		}
	}
	if kinds["Secret"] != 0 {
		t.Errorf("kustomize: the output has %d Secrets: kubectl apply -k would overwrite the real one", kinds["Secret"])
	}
	for _, kind := range []string{"Namespace", "ConfigMap", "Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication"} {
		if kinds[kind] == 0 {
			t.Errorf("kustomize: no %s in the output", kind)
		}
	}
}

func TestPromtool(t *testing.T) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Log("promtool is not installed: skipping `promtool check`")
		return
	}
	if _, err := tool(t, "monitoring", "promtool", "check", "rules", "alerts.yml"); err != nil {
		t.Error(err)
	}
	for _, f := range []string{"prometheus.yml", "prometheus-k8s.yml"} {
		_, err := tool(t, "monitoring", "promtool", "check", "config", "--syntax-only", f)
		if err != nil && strings.Contains(err.Error(), "field kubernetes_sd_configs not found") {
			t.Logf("this promtool is built without Kubernetes service discovery (Debian's is): skipping %s", f)
			continue
		}
		if err != nil {
			t.Error(err)
		}
	}
	// The dashboard's queries, as recording rules, with Grafana's
	// variables replaced.
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	repl := strings.NewReplacer("$__rate_interval", "5m", "$ns", "gw")
	for i, expr := range dashboardExprs(t) {
		q, _ := json.Marshal(repl.Replace(expr))
		fmt.Fprintf(&rules, "      - record: dashboard:query_%d\n        expr: %s\n", i, q)
	}
	file := filepath.Join(t.TempDir(), "dashboard.rules.yml")
	if err := os.WriteFile(file, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := tool(t, ".", "promtool", "check", "rules", file); err != nil {
		t.Errorf("the dashboard's queries: %v", err)
	}
}
