// Package deployments_test checks the deployment files against the relay
// they deploy: every file parses, every RELAY_ variable is one the relay
// reads, relay containers get the variables they need from Secrets, probes
// ask paths the relay serves, grace periods outlast the shutdown timeout,
// and the image is multi-stage, non-root and health-checked. None of it
// needs a Docker engine or a cluster.
package deployments_test

import (
	"bytes"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// relayCmd is the relay's command package, whose source says which
// variables it reads and which paths it serves.
const relayCmd = "../cmd/outbox-relay"

// relayVar is one field of the relay's env struct.
type relayVar struct {
	name string // RELAY_...
	def  string // its default tag
}

// relayVars reads the RELAY_ variables from the env struct in the relay's
// source. Parsing the source rather than running `outbox-relay help` needs
// no build, so this test does not depend on the rest of the tree compiling,
// and it reads the very struct that help prints and envconfig fills.
func relayVars(t *testing.T) map[string]relayVar {
	t.Helper()
	vars := map[string]relayVar{}
	for _, f := range relaySource(t) {
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok || ts.Name.Name != "env" {
				return true
			}
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				return false
			}
			for _, field := range st.Fields.List {
				if field.Tag == nil {
					continue
				}
				tag, err := strconv.Unquote(field.Tag.Value)
				if err != nil {
					t.Fatal(err)
				}
				st := reflect.StructTag(tag)
				if name := st.Get("envconfig"); name != "" {
					vars["RELAY_"+name] = relayVar{name: "RELAY_" + name, def: st.Get("default")}
				}
			}
			return false
		})
	}
	for _, v := range []string{"RELAY_DATABASE_URL", "RELAY_AMQP_URL", "RELAY_HTTP_ADDR", "RELAY_SHUTDOWN_TIMEOUT"} {
		if _, ok := vars[v]; !ok {
			t.Fatalf("env struct in %s has no %s (found %d variables): has it moved?", relayCmd, v, len(vars))
		}
	}
	return vars
}

// servedPaths returns the paths the relay's HTTP server registers, from the
// string patterns passed to Handle and HandleFunc in its source ("GET
// /healthz" gives /healthz).
func servedPaths(t *testing.T) []string {
	t.Helper()
	var paths []string
	for _, f := range relaySource(t) {
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) < 2 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || (sel.Sel.Name != "Handle" && sel.Sel.Name != "HandleFunc") {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			pattern, _ := strconv.Unquote(lit.Value)
			fields := strings.Fields(pattern)
			if p := fields[len(fields)-1]; strings.HasPrefix(p, "/") {
				paths = append(paths, p)
			}
			return true
		})
	}
	if !slices.Contains(paths, "/healthz") {
		t.Fatalf("found no /healthz handler in %s (found %q)", relayCmd, paths)
	}
	return paths
}

func relaySource(t *testing.T) []*ast.File {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(relayCmd, "*.go"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no Go files in %s: %v", relayCmd, err)
	}
	fset := token.NewFileSet()
	var files []*ast.File
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	return files
}

// yamlFiles is every YAML file under deployments/.
func yamlFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(path, ".yml") || strings.HasSuffix(path, ".yaml")) {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// documents decodes every YAML document of a file.
func documents(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
	if len(docs) == 0 {
		t.Fatalf("%s: no YAML documents", path)
	}
	return docs
}

func TestYAMLParses(t *testing.T) {
	t.Parallel()
	files := yamlFiles(t)
	for _, want := range []string{"docker-compose.yml", "kubernetes/sidecar.yaml", "kubernetes/standalone.yaml", "prometheus/alerts.yml"} {
		if !slices.Contains(files, filepath.FromSlash(want)) {
			t.Errorf("missing %s", want)
		}
	}
	for _, f := range files {
		documents(t, f)
	}
}

var relayVarRE = regexp.MustCompile(`\bRELAY_[A-Z0-9_]+\b`)

// TestOnlyKnownVariables: a misspelt variable in a deployment file would be
// silently ignored by the relay, which would run on its default.
func TestOnlyKnownVariables(t *testing.T) {
	t.Parallel()
	known := relayVars(t)
	files := append(yamlFiles(t), "Dockerfile")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range relayVarRE.FindAllString(string(data), -1) {
			if _, ok := known[v]; !ok {
				t.Errorf("%s names %s, which the relay does not read", f, v)
			}
		}
	}
}

// portOf is the port of a listen address such as ":9090".
func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, ok := strings.Cut(addr, ":")
	port, err := strconv.Atoi(p)
	if !ok || err != nil {
		t.Fatalf("RELAY_HTTP_ADDR %q has no port", addr)
	}
	return port
}

// relayCommand is the relay subcommand a container runs ("run" when it
// names none).
func relayCommand(args []string) string {
	if len(args) == 0 {
		return "run"
	}
	return args[0]
}

// checkRequired checks that a relay container sets what its command needs.
func checkRequired(t *testing.T, where, command string, env map[string]bool) {
	t.Helper()
	need := []string{"RELAY_DATABASE_URL"}
	if command == "run" {
		need = append(need, "RELAY_AMQP_URL")
	}
	for _, v := range need {
		if !env[v] {
			t.Errorf("%s (%s) does not set %s", where, command, v)
		}
	}
}

// checkGrace checks that a stop grace outlasts the relay's shutdown timeout
// by at least 10 s: the relay records confirms, releases its lease and
// closes after the timeout, and a SIGKILL in between causes duplicates.
func checkGrace(t *testing.T, where string, grace time.Duration, shutdown string, vars map[string]relayVar) {
	t.Helper()
	if shutdown == "" {
		shutdown = vars["RELAY_SHUTDOWN_TIMEOUT"].def
	}
	d, err := time.ParseDuration(shutdown)
	if err != nil {
		t.Fatalf("%s: RELAY_SHUTDOWN_TIMEOUT %q: %v", where, shutdown, err)
	}
	if grace < d+10*time.Second {
		t.Errorf("%s: grace period %s, want at least RELAY_SHUTDOWN_TIMEOUT (%s) + 10s", where, grace, d)
	}
}

// str, slice and obj read a decoded YAML value without panicking.
func str(v any) string {
	s, _ := v.(string)
	return s
}

func slice(v any) []any {
	s, _ := v.([]any)
	return s
}

func obj(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func strs(v any) []string {
	var out []string
	for _, x := range slice(v) {
		out = append(out, str(x))
	}
	return out
}
