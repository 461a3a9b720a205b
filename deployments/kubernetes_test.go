package deployments_test

import (
	"fmt"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// manifest is one Kubernetes manifest file, decoded.
type manifest struct {
	path    string
	docs    []map[string]any
	secrets map[string]map[string]string // Secret name -> key -> value
}

func manifests(t *testing.T) []manifest {
	t.Helper()
	paths, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(paths) < 2 {
		t.Fatalf("kubernetes manifests: %q, %v", paths, err)
	}
	var out []manifest
	for _, p := range paths {
		m := manifest{path: p, docs: documents(t, p), secrets: map[string]map[string]string{}}
		for _, d := range m.docs {
			if d["apiVersion"] == nil || d["kind"] == nil || str(obj(d["metadata"])["name"]) == "" {
				t.Errorf("%s: a document lacks apiVersion, kind or metadata.name", p)
			}
			if d["kind"] == "Secret" {
				values := map[string]string{}
				for k, v := range obj(d["stringData"]) {
					values[k] = str(v)
				}
				for k, v := range obj(d["data"]) {
					values[k] = str(v)
				}
				m.secrets[str(obj(d["metadata"])["name"])] = values
			}
		}
		out = append(out, m)
	}
	return out
}

// podTemplate returns a workload's pod template, or nil.
func podTemplate(d map[string]any) map[string]any {
	spec := obj(d["spec"])
	if jt := obj(spec["jobTemplate"]); jt != nil {
		spec = obj(jt["spec"])
	}
	return obj(spec["template"])
}

func isRelay(c map[string]any) bool { return strings.Contains(str(c["image"]), "outbox-relay") }

func TestKubernetes(t *testing.T) {
	t.Parallel()
	vars := relayVars(t)
	served := servedPaths(t)
	seen := map[string]bool{} // "sidecar", "standalone"
	for _, m := range manifests(t) {
		for _, d := range m.docs {
			tmpl := podTemplate(d)
			if tmpl == nil {
				continue
			}
			where := fmt.Sprintf("%s: %s %s", m.path, d["kind"], str(obj(d["metadata"])["name"]))
			pod := obj(tmpl["spec"])
			containers := slice(pod["containers"])
			all := append(slices.Clone(slice(pod["initContainers"])), containers...)
			for _, c := range all {
				checkSecretRefs(t, m, where, obj(c))
			}
			for i, v := range all {
				c, init := obj(v), i < len(all)-len(containers)
				if !isRelay(c) {
					continue
				}
				cwhere := where + " container " + str(c["name"])
				env, values := containerEnv(c)
				cmd := relayCommand(strs(c["args"]))
				checkRequired(t, cwhere, cmd, env)
				checkResources(t, cwhere, c)
				if cmd != "run" {
					continue
				}
				if init {
					t.Errorf("%s runs the relay as an init container", cwhere)
				}
				grace := 30 * time.Second // Kubernetes' default
				if g, ok := pod["terminationGracePeriodSeconds"].(int); ok {
					grace = time.Duration(g) * time.Second
				}
				checkGrace(t, cwhere, grace, values["RELAY_SHUTDOWN_TIMEOUT"], vars)
				if fieldRef(c, "RELAY_REPLICA_NAME") != "metadata.name" {
					t.Errorf("%s: RELAY_REPLICA_NAME should come from the pod name (downward API)", cwhere)
				}

				port := portOf(t, values["RELAY_HTTP_ADDR"])
				names := map[string]int{}
				for _, p := range slice(c["ports"]) {
					n, _ := obj(p)["containerPort"].(int)
					names[str(obj(p)["name"])] = n
				}
				if !slices.Contains(slices.Collect(maps.Values(names)), port) {
					t.Errorf("%s: no containerPort %d (RELAY_HTTP_ADDR)", cwhere, port)
				}
				probes := map[string]string{}
				for _, kind := range []string{"startupProbe", "livenessProbe", "readinessProbe"} {
					get := obj(obj(c[kind])["httpGet"])
					if get == nil {
						continue
					}
					path := str(get["path"])
					probes[kind] = path
					if !slices.Contains(served, path) {
						t.Errorf("%s: %s asks %s, which the relay does not serve (%q)", cwhere, kind, path, served)
					}
					if p := probePort(get["port"], names); p != port {
						t.Errorf("%s: %s asks port %v, the relay listens on %d", cwhere, kind, get["port"], port)
					}
				}
				if probes["livenessProbe"] != "/healthz" || probes["startupProbe"] != "/healthz" {
					t.Errorf("%s: liveness and startup probes %q, want /healthz", cwhere, probes)
				}
				// The readiness decision: a sidecar must not make the
				// service's pod unready when the broker is down.
				kind := "standalone"
				if len(containers) > 1 {
					kind = "sidecar"
				}
				seen[kind] = true
				if want := map[string]string{"sidecar": "", "standalone": "/readyz"}[kind]; probes["readinessProbe"] != want {
					t.Errorf("%s (%s): readinessProbe %q, want %q", cwhere, kind, probes["readinessProbe"], want)
				}
				checkScrape(t, cwhere, obj(obj(tmpl["metadata"])["annotations"]), port, served)
			}
		}
		checkSelectors(t, m)
		checkNoInlineSecrets(t, m)
	}
	if !seen["sidecar"] || !seen["standalone"] {
		t.Errorf("want a sidecar and a standalone relay, found %v", seen)
	}
}

// containerEnv returns which variables a container sets, and the literal
// values of those given inline.
func containerEnv(c map[string]any) (map[string]bool, map[string]string) {
	set, values := map[string]bool{}, map[string]string{}
	for _, e := range slice(c["env"]) {
		name := str(obj(e)["name"])
		set[name] = true
		if v, ok := obj(e)["value"]; ok {
			values[name] = str(v)
		}
	}
	return set, values
}

// fieldRef is the downward-API field a container's variable comes from.
func fieldRef(c map[string]any, name string) string {
	for _, e := range slice(c["env"]) {
		if str(obj(e)["name"]) == name {
			return str(obj(obj(obj(e)["valueFrom"])["fieldRef"])["fieldPath"])
		}
	}
	return ""
}

func probePort(p any, names map[string]int) int {
	switch p := p.(type) {
	case int:
		return p
	case string:
		if n, err := strconv.Atoi(p); err == nil {
			return n
		}
		return names[p]
	}
	return 0
}

func checkResources(t *testing.T, where string, c map[string]any) {
	t.Helper()
	r := obj(c["resources"])
	for _, k := range []string{"requests", "limits"} {
		if obj(r[k])["memory"] == nil {
			t.Errorf("%s: no resources.%s.memory", where, k)
		}
	}
}

// checkScrape: annotation-based scraping asks the relay's port and a path
// it serves.
func checkScrape(t *testing.T, where string, ann map[string]any, port int, served []string) {
	t.Helper()
	if ann["prometheus.io/scrape"] != "true" {
		t.Errorf("%s: pod not annotated for scraping", where)
		return
	}
	if p := str(ann["prometheus.io/port"]); p != strconv.Itoa(port) {
		t.Errorf("%s: prometheus.io/port %q, the relay listens on %d", where, p, port)
	}
	if p := str(ann["prometheus.io/path"]); !slices.Contains(served, p) {
		t.Errorf("%s: prometheus.io/path %q is not served by the relay (%q)", where, p, served)
	}
}

// checkSecretRefs: every secretKeyRef names a key of a Secret in the same
// file, and every credential comes from one.
func checkSecretRefs(t *testing.T, m manifest, where string, c map[string]any) {
	t.Helper()
	for _, e := range slice(c["env"]) {
		e := obj(e)
		name := str(e["name"])
		ref := obj(obj(e["valueFrom"])["secretKeyRef"])
		if ref != nil {
			keys, ok := m.secrets[str(ref["name"])]
			if _, has := keys[str(ref["key"])]; !ok || !has {
				t.Errorf("%s: %s refers to Secret %s key %s, not in %s", where, name, ref["name"], ref["key"], m.path)
			}
		}
		if credentialRE.MatchString(name) && ref == nil {
			t.Errorf("%s: %s is not taken from a Secret", where, name)
		}
	}
}

var (
	credentialRE = regexp.MustCompile(`URL|PASSWORD|SECRET|TOKEN|CREDENTIAL`)
	// userinfoRE matches a URL with a password in it.
	userinfoRE = regexp.MustCompile(`[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@`)
)

// checkNoInlineSecrets: outside Secrets no string holds a URL with a
// password, and the Secrets hold placeholders only.
func checkNoInlineSecrets(t *testing.T, m manifest) {
	t.Helper()
	for name, values := range m.secrets {
		for k, v := range values {
			if !strings.Contains(v, "CHANGE-ME") {
				t.Errorf("%s: Secret %s key %s is not a CHANGE-ME placeholder", m.path, name, k)
			}
		}
	}
	for _, d := range m.docs {
		if d["kind"] == "Secret" {
			continue
		}
		walkStrings(d, func(s string) {
			if userinfoRE.MatchString(s) {
				t.Errorf("%s: %s %s holds a password inline: %q", m.path, d["kind"], obj(d["metadata"])["name"], s)
			}
		})
	}
}

func walkStrings(v any, f func(string)) {
	switch v := v.(type) {
	case string:
		f(v)
	case map[string]any:
		for _, x := range v {
			walkStrings(x, f)
		}
	case []any:
		for _, x := range v {
			walkStrings(x, f)
		}
	}
}

// checkSelectors: Services and PodDisruptionBudgets select pods of a
// workload in the same file, and a Service's named targetPort exists.
func checkSelectors(t *testing.T, m manifest) {
	t.Helper()
	for _, d := range m.docs {
		var sel map[string]any
		switch d["kind"] {
		case "Service":
			sel = obj(obj(d["spec"])["selector"])
		case "PodDisruptionBudget":
			sel = obj(obj(obj(d["spec"])["selector"])["matchLabels"])
		default:
			continue
		}
		where := fmt.Sprintf("%s: %s %s", m.path, d["kind"], obj(d["metadata"])["name"])
		var pods []map[string]any
		for _, w := range m.docs {
			tmpl := podTemplate(w)
			labels := obj(obj(tmpl["metadata"])["labels"])
			if tmpl != nil && len(sel) > 0 && subset(sel, labels) {
				pods = append(pods, obj(tmpl["spec"]))
			}
		}
		if len(pods) == 0 {
			t.Errorf("%s selects no pods of %s", where, m.path)
			continue
		}
		for _, p := range slice(obj(d["spec"])["ports"]) {
			target, ok := obj(p)["targetPort"].(string)
			if !ok {
				continue
			}
			for _, pod := range pods {
				if !slices.Contains(portNames(pod), target) {
					t.Errorf("%s: targetPort %q names no container port", where, target)
				}
			}
		}
	}
}

func portNames(pod map[string]any) []string {
	var names []string
	for _, c := range slice(pod["containers"]) {
		for _, p := range slice(obj(c)["ports"]) {
			names = append(names, str(obj(p)["name"]))
		}
	}
	return names
}

func subset(sel, labels map[string]any) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}
