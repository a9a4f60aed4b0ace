package deployments

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/iotgw/gateway/internal/auth"
)

// helmVersion is the helm that deployments/local/services.sh installs
// into <repo>/bin when none is in PATH (TestHelmPinned keeps them equal).
const helmVersion = "v3.21.4"

// helmKubeVersion is the Kubernetes version the chart is rendered for.
const helmKubeVersion = "v1.31.0"

// helmNamespace is the namespace the chart is rendered for.
const helmNamespace = "iotgw"

// helmInstall is the command that installs helm where findHelm looks.
func helmInstall() string {
	return fmt.Sprintf("GOBIN=%s go install helm.sh/helm/v3/cmd/helm@%s", filepath.Join(repoRoot(), "bin"), helmVersion)
}

// findHelm returns helm from PATH or <repo>/bin, and fails the test when
// there is none: the chart is part of what go test checks, and a test
// never installs software itself.
func findHelm(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	p := filepath.Join(repoRoot(), "bin", "helm")
	if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return p
	}
	t.Fatalf("helm is not installed (neither in PATH nor %s); install it with\n  %s\nor run `make services`, which does", p, helmInstall())
	return ""
}

func TestHelmPinned(t *testing.T) {
	script := string(readFile(t, "local/services.sh"))
	if !strings.Contains(script, "HELM_VERSION="+helmVersion+"\n") {
		t.Errorf("local/services.sh does not install helm %s (HELM_VERSION), the version this test names", helmVersion)
	}
	if !strings.Contains(script, `GOBIN=$ROOT/bin go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"`) {
		t.Errorf("local/services.sh does not install helm into <repo>/bin with go install, where findHelm looks")
	}
}

// helmCase is one rendering of the chart.
type helmCase struct {
	name    string
	release string
	set     []string // --set arguments
}

func (c helmCase) has(kv string) bool { return slices.Contains(c.set, kv) }

// value returns the value a --set argument gives key, or "".
func (c helmCase) value(key string) string {
	for _, kv := range c.set {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

var helmCases = []helmCase{
	{name: "defaults", release: "iotgw"},
	{name: "existingSecret", release: "iotgw", set: []string{"existingSecret=gw-secrets"}},
	{name: "keda", release: "iotgw", set: []string{"keda.enabled=true"}},
	{name: "kedaNamespace", release: "iotgw", set: []string{"keda.enabled=true", "gateway.namespace=edge-gw", "gateway.queues=16"}},
	{name: "serviceMonitor", release: "iotgw", set: []string{"serviceMonitor.enabled=true", "serviceMonitor.labels.release=prometheus", "networkPolicy.enabled=true"}},
	{name: "replicas", release: "edge", set: []string{"apiserver.replicas=3", "msgworker.replicas=4", "pushserver.replicas=5",
		"image.tag=1.2.3", "gateway.namespace=edge-gw", "gateway.queues=8", "secrets.authSecret=0123456789abcdef0123456789abcdef"}},
	{name: "everything", release: "iotgw", set: []string{"existingSecret=gw-secrets", "keda.enabled=true", "serviceMonitor.enabled=true", "networkPolicy.enabled=true"}},
}

func helmArgs(verb string, c helmCase) []string {
	args := []string{verb}
	if verb == "template" {
		args = append(args, c.release)
	}
	// A helm built with go install (no release ldflags) assumes
	// Kubernetes v1.20, which Chart.yaml's kubeVersion refuses.
	args = append(args, helmChartDir, "--namespace", helmNamespace, "--kube-version", helmKubeVersion)
	for _, kv := range c.set {
		args = append(args, "--set", kv)
	}
	return args
}

// renderChart runs helm template and returns the objects.
func renderChart(t *testing.T, helm string, c helmCase) *k8sSet {
	t.Helper()
	out, err := tool(t, ".", helm, helmArgs("template", c)...)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := decodeYAML(out)
	if err != nil {
		t.Fatalf("helm template (%s): %v", c.name, err)
	}
	set := &k8sSet{}
	for _, d := range docs {
		doc := asObj(d)
		set.objects = append(set.objects, k8sObject{
			kind: asStr(doc["kind"]), name: asStr(dig(doc, "metadata", "name")), file: "helm template " + c.name, doc: doc,
		})
	}
	return set
}

func TestHelmLint(t *testing.T) {
	helm := findHelm(t)
	for _, c := range helmCases {
		out, err := tool(t, ".", helm, append(helmArgs("lint", c), "--strict")...)
		if err != nil {
			t.Errorf("helm lint (%s): %v\n%s", c.name, err, out)
		}
	}
}

func TestHelmChart(t *testing.T) {
	helm := findHelm(t)
	chart := loadYAML1(t, helmChartDir+"/Chart.yaml")
	if asStr(chart["apiVersion"]) != "v2" {
		t.Errorf("Chart.yaml: apiVersion %v, want v2", chart["apiVersion"])
	}
	for _, c := range helmCases {
		t.Run(c.name, func(t *testing.T) {
			set := renderChart(t, helm, c)
			checkHelmRender(t, c, set, asStr(chart["appVersion"]))
		})
	}
}

func checkHelmRender(t *testing.T, c helmCase, set *k8sSet, appVersion string) {
	what := "helm (" + c.name + ")"
	for _, o := range set.objects {
		if ns := asStr(dig(o.doc, "metadata", "namespace")); ns != helmNamespace {
			t.Errorf("%s: %s %s is in namespace %q, want the release's, %q", what, o.kind, o.name, ns, helmNamespace)
		}
		if o.kind == "Namespace" {
			t.Errorf("%s: renders Namespace %s (helm install --create-namespace does that)", what, o.name)
		}
	}

	// The Secret: existingSecret, or one the chart makes with a key the
	// services accept.
	secrets := set.all("Secret")
	if name := c.value("existingSecret"); name != "" {
		if len(secrets) != 0 {
			t.Errorf("%s: existingSecret is set, yet the chart renders %d Secrets", what, len(secrets))
		}
		set.objects = append(set.objects, documentedSecret(t, name))
	} else {
		if len(secrets) != 1 {
			t.Fatalf("%s: %d Secrets, want 1 (no existingSecret)", what, len(secrets))
		}
		checkGeneratedSecret(t, what, c, secrets[0])
	}
	secretName := asStr(dig(set.all("Secret")[0].doc, "metadata", "name"))

	image := imageName + ":" + appVersion
	if tag := c.value("image.tag"); tag != "" {
		image = imageName + ":" + tag
	}
	f := checkWorkloads(t, what, set, image)
	checkServices(t, set, f)
	keda := c.has("keda.enabled=true")
	checkScaledObject(t, what, set, f, keda)

	wantNS := "gw"
	if ns := c.value("gateway.namespace"); ns != "" {
		wantNS = ns
	}
	if f.ns != wantNS {
		t.Errorf("%s: GW_NAMESPACE %q, want %q", what, f.ns, wantNS)
	}
	if q := c.value("gateway.queues"); q != "" && strconv.Itoa(f.queues) != q {
		t.Errorf("%s: GW_QUEUES %d, want %s", what, f.queues, q)
	}

	// Replicas: the values, and none for the workers under KEDA.
	wantReplicas := map[string]string{"apiserver": "2", "msgworker": "2", "pushserver": "3"}
	for bin := range wantReplicas {
		if v := c.value(bin + ".replicas"); v != "" {
			wantReplicas[bin] = v
		}
	}
	if keda {
		wantReplicas["msgworker"] = ""
	}
	for _, w := range f.workloads {
		bin := asStr(asArr(dig(asArr(dig(w.doc, "spec", "template", "spec", "containers"))[0], "command"))[0])
		if got := asStr(dig(w.doc, "spec", "replicas")); got != wantReplicas[bin] {
			t.Errorf("%s: %s %s has replicas %q, want %q", what, w.kind, w.name, got, wantReplicas[bin])
		}
		// Every secret reference names the one Secret.
		for _, e := range asArr(dig(asArr(dig(w.doc, "spec", "template", "spec", "containers"))[0], "env")) {
			if ref := asObj(dig(e, "valueFrom", "secretKeyRef")); ref != nil && asStr(ref["name"]) != secretName {
				t.Errorf("%s: %s reads %s from Secret %v, want %s", what, w.name, dig(e, "name"), ref["name"], secretName)
			}
		}
	}

	checkHelmMetrics(t, what, c, set, f)
}

// checkGeneratedSecret checks the Secret the chart makes: GW_AUTH_SECRET
// is secrets.authSecret or 48 random letters and digits, either one the
// services accept, and the URLs name hosts in the release's namespace
// (<service>.<namespace>.svc, which KEDA resolves from its own).
func checkGeneratedSecret(t *testing.T, what string, c helmCase, sec k8sObject) {
	t.Helper()
	data := asObj(sec.doc["data"])
	decoded := map[string]string{}
	for k, v := range data {
		b, err := base64.StdEncoding.DecodeString(asStr(v))
		if err != nil {
			t.Errorf("%s: Secret %s: %s is not base64: %v", what, sec.name, k, err)
		}
		decoded[k] = string(b)
	}
	for _, k := range []string{"GW_AUTH_SECRET", "GW_AMQP_URL", "GW_AMQP_MGMT_URL", "GW_REDIS_URL"} {
		if _, ok := decoded[k]; !ok {
			t.Errorf("%s: Secret %s has no %s", what, sec.name, k)
		}
	}
	key := decoded["GW_AUTH_SECRET"]
	if err := auth.CheckSecret(key); err != nil {
		t.Errorf("%s: Secret %s: the services refuse its GW_AUTH_SECRET: %v", what, sec.name, err)
	}
	if given := c.value("secrets.authSecret"); given != "" {
		if key != given {
			t.Errorf("%s: GW_AUTH_SECRET %q, want secrets.authSecret %q", what, key, given)
		}
	} else if !regexp.MustCompile(`^[A-Za-z0-9]{48}$`).MatchString(key) {
		t.Errorf("%s: generated GW_AUTH_SECRET %q, want 48 random letters and digits", what, key)
	}
	for k, v := range decoded {
		if !strings.HasSuffix(k, "_URL") {
			continue
		}
		u, err := url.Parse(v)
		if err != nil || !strings.HasSuffix(u.Hostname(), "."+helmNamespace+".svc") {
			t.Errorf("%s: Secret %s: %s=%q, want a host <service>.%s.svc", what, sec.name, k, v, helmNamespace)
		}
	}
}

// checkHelmMetrics checks that the metrics port of msgworker and
// pushserver is private: no Service publishes it unless a ServiceMonitor
// scrapes that Service, and then each service's ServiceMonitor scrapes
// /metrics on the port where its binary serves it, under its job name.
func checkHelmMetrics(t *testing.T, what string, c helmCase, set *k8sSet, f workloadFacts) {
	t.Helper()
	monitors := set.all("ServiceMonitor")
	enabled := c.has("serviceMonitor.enabled=true")
	if !enabled && len(monitors) != 0 {
		t.Errorf("%s: %d ServiceMonitors, want none (serviceMonitor.enabled is false)", what, len(monitors))
	}
	// workloadOf returns the workload a Service selects and its binary.
	workloadOf := func(svc k8sObject) (k8sObject, string) {
		for _, w := range f.workloads {
			if matches(asObj(dig(svc.doc, "spec", "selector")), asObj(dig(w.doc, "spec", "template", "metadata", "labels"))) {
				c := asArr(dig(w.doc, "spec", "template", "spec", "containers"))
				return w, asStr(asArr(dig(c[0], "command"))[0])
			}
		}
		return k8sObject{}, ""
	}
	scraped := map[string]bool{} // Services a ServiceMonitor selects
	jobs := map[string]bool{}
	for _, m := range monitors {
		sel := asObj(dig(m.doc, "spec", "selector", "matchLabels"))
		var svcs []k8sObject
		for _, svc := range set.all("Service") {
			if matches(sel, asObj(dig(svc.doc, "metadata", "labels"))) {
				svcs = append(svcs, svc)
			}
		}
		if len(svcs) != 1 {
			t.Errorf("%s: ServiceMonitor %s selects %d Services, want 1", what, m.name, len(svcs))
			continue
		}
		svc := svcs[0]
		scraped[svc.name] = true
		w, bin := workloadOf(svc)
		job := asStr(asObj(dig(svc.doc, "metadata", "labels"))[asStr(dig(m.doc, "spec", "jobLabel"))])
		if job != bin || !slices.Contains(gatewayJobs, job) {
			t.Errorf("%s: ServiceMonitor %s gives job %q to %s, want %q (the alerts and the dashboard select on it)", what, m.name, job, bin, bin)
		}
		jobs[job] = true
		for k, v := range map[string]string{"release": c.value("serviceMonitor.labels.release")} {
			if v != "" && asStr(dig(m.doc, "metadata", "labels", k)) != v {
				t.Errorf("%s: ServiceMonitor %s lacks the label %s=%s from serviceMonitor.labels", what, m.name, k, v)
			}
		}
		if nss := asArr(dig(m.doc, "spec", "namespaceSelector", "matchNames")); fmt.Sprint(nss) != "["+helmNamespace+"]" {
			t.Errorf("%s: ServiceMonitor %s: namespaceSelector %v, want the release's namespace", what, m.name, nss)
		}
		role := "metrics"
		if bin == "apiserver" {
			role = "http" // the apiserver serves /metrics on its API port
		}
		for _, ep := range asArr(dig(m.doc, "spec", "endpoints")) {
			checkHTTPPath(t, what+" ServiceMonitor "+m.name, bin, asStr(dig(ep, "path")))
			var target any
			for _, p := range asArr(dig(svc.doc, "spec", "ports")) {
				if asStr(dig(p, "name")) == asStr(dig(ep, "port")) {
					target = dig(p, "targetPort")
				}
			}
			port, ok := resolvePort(target, f.podPorts[w.name])
			if !ok || port != f.podPorts[w.name][role] {
				t.Errorf("%s: ServiceMonitor %s: port %v of Service %s is not %s's %s port %d", what, m.name, dig(ep, "port"), svc.name, bin, role, f.podPorts[w.name][role])
			}
		}
	}
	if enabled {
		for _, bin := range []string{"apiserver", "msgworker", "pushserver"} {
			if !jobs[bin] {
				t.Errorf("%s: no ServiceMonitor scrapes %s", what, bin)
			}
		}
	}
	// The metrics port is published only to the ServiceMonitors.
	for _, svc := range set.all("Service") {
		w, bin := workloadOf(svc)
		if bin == "apiserver" {
			continue
		}
		for _, p := range asArr(dig(svc.doc, "spec", "ports")) {
			port, _ := resolvePort(dig(p, "targetPort"), f.podPorts[w.name])
			if port == f.podPorts[w.name]["metrics"] && !scraped[svc.name] {
				t.Errorf("%s: Service %s publishes the metrics port of %s, and no ServiceMonitor scrapes it (the port is private)", what, svc.name, bin)
			}
		}
	}
	// The NetworkPolicies let only metricsFrom reach the metrics port, and
	// leave MQTT open.
	if c.has("networkPolicy.enabled=true") {
		covered := map[string]bool{}
		for _, np := range set.all("NetworkPolicy") {
			for _, w := range f.workloads {
				if !matches(asObj(dig(np.doc, "spec", "podSelector", "matchLabels")), asObj(dig(w.doc, "spec", "template", "metadata", "labels"))) {
					continue
				}
				covered[w.name] = true
				for _, rule := range asArr(dig(np.doc, "spec", "ingress")) {
					for _, p := range asArr(dig(rule, "ports")) {
						if _, ok := resolvePort(dig(p, "port"), f.podPorts[w.name]); !ok {
							t.Errorf("%s: NetworkPolicy %s: port %v is not a port of %s", what, np.name, dig(p, "port"), w.name)
						}
						if asStr(dig(p, "port")) == "metrics" && len(asArr(dig(rule, "from"))) == 0 {
							t.Errorf("%s: NetworkPolicy %s lets anyone reach the metrics port", what, np.name)
						}
						if asStr(dig(p, "port")) == "mqtt" && len(asArr(dig(rule, "from"))) != 0 {
							t.Errorf("%s: NetworkPolicy %s restricts MQTT, which devices need", what, np.name)
						}
					}
				}
			}
		}
		for _, w := range f.workloads {
			if _, ok := f.podPorts[w.name]["metrics"]; ok && !covered[w.name] {
				t.Errorf("%s: no NetworkPolicy guards the metrics port of %s", what, w.name)
			}
		}
	} else if n := len(set.all("NetworkPolicy")); n != 0 {
		t.Errorf("%s: %d NetworkPolicies, want none (networkPolicy.enabled is false)", what, n)
	}
}

// TestHelmRefuses checks that the chart refuses what the services would:
// a short or placeholder GW_AUTH_SECRET, and env values that are not
// GW_* variables or that the chart sets itself.
func TestHelmRefuses(t *testing.T) {
	helm := findHelm(t)
	for _, c := range []struct {
		set, want string
	}{
		{"secrets.authSecret=too-short", "at least 32"},
		{"secrets.authSecret=CHANGE-ME-to-a-long-random-string-0123456789", "placeholder"},
		{"apiserver.env.RATE=5", "not a GW_* variable"},
		{"msgworker.env.GW_NAMESPACE=other", "set by the chart"},
	} {
		_, err := tool(t, ".", helm, helmArgs("template", helmCase{release: "iotgw", set: []string{c.set}})...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("helm template --set %s: error %v, want one saying %q", c.set, err, c.want)
		}
	}
	// A generated key survives upgrades: the template reads the Secret
	// back (lookup; helm template has no cluster to show it).
	tmpl := string(readFile(t, helmChartDir+"/templates/secret.yaml"))
	if !strings.Contains(tmpl, `lookup "v1" "Secret"`) || !strings.Contains(tmpl, "randAlphaNum 48") {
		t.Errorf("%s/templates/secret.yaml: want GW_AUTH_SECRET from lookup of the existing Secret, else randAlphaNum 48", helmChartDir)
	}
}
