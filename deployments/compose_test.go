package deployments_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestCompose(t *testing.T) {
	t.Parallel()
	vars := relayVars(t)
	services := obj(documents(t, "docker-compose.yml")[0]["services"])
	for _, want := range []string{"postgres", "rabbitmq", "migrate", "relay", "quickstart-setup", "service", "consumer"} {
		if services[want] == nil {
			t.Errorf("no %s service", want)
		}
	}
	stages := dockerStages(t)
	relays := 0
	for name, v := range services {
		svc := obj(v)
		where := "service " + name

		if b := obj(svc["build"]); b != nil {
			dockerfile := filepath.Join(str(b["context"]), str(b["dockerfile"]))
			if _, err := os.Stat(dockerfile); err != nil {
				t.Errorf("%s: build file: %v", where, err)
			}
			if target := str(b["target"]); target != "" && !slices.Contains(stages, target) {
				t.Errorf("%s: build target %q is not a stage of the Dockerfile %q", where, target, stages)
			}
		}

		for dep, c := range obj(svc["depends_on"]) {
			target := obj(services[dep])
			switch cond := str(obj(c)["condition"]); cond {
			case "service_started":
			case "service_healthy":
				if target["healthcheck"] == nil {
					t.Errorf("%s waits for %s to be healthy, but it has no healthcheck", where, dep)
				}
			case "service_completed_successfully":
				if r := str(target["restart"]); r != "" && r != "no" {
					t.Errorf("%s waits for %s to complete, but it restarts (%s)", where, dep, r)
				}
			default:
				t.Errorf("%s: depends_on %s: condition %q", where, dep, cond)
			}
			if target == nil {
				t.Errorf("%s depends on unknown service %s", where, dep)
			}
		}

		b := obj(svc["build"])
		if str(b["target"]) != "relay" && !strings.Contains(str(svc["image"]), "outbox-relay") {
			continue
		}
		relays++
		env := composeEnv(svc["environment"])
		cmd := relayCommand(strs(svc["command"]))
		checkRequired(t, where, cmd, envSet(env))
		if cmd != "run" {
			continue
		}
		grace, err := time.ParseDuration(str(svc["stop_grace_period"]))
		if err != nil {
			grace = 10 * time.Second // compose's default
		}
		checkGrace(t, where, grace, env["RELAY_SHUTDOWN_TIMEOUT"], vars)
		if test := strs(obj(svc["healthcheck"])["test"]); len(test) < 3 || test[0] != "CMD" || test[len(test)-1] != "health" {
			t.Errorf("%s: healthcheck %q, want [CMD, <relay>, health]", where, test)
		}
		port := strconv.Itoa(portOf(t, env["RELAY_HTTP_ADDR"]))
		published := false
		for _, p := range strs(svc["ports"]) {
			published = published || strings.HasSuffix(p, ":"+port)
		}
		if !published {
			t.Errorf("%s: the relay's HTTP port %s is not published", where, port)
		}
	}
	if relays < 2 {
		t.Errorf("found %d relay services, want migrate and relay", relays)
	}
	checkAcyclic(t, services)
}

// TestComposeConfig asks Compose itself (the docker plugin or the older
// docker-compose), where this machine has it; it needs no Docker engine.
func TestComposeConfig(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var compose []string
	for _, c := range [][]string{{"docker", "compose"}, {"docker-compose"}} {
		if exec.CommandContext(ctx, c[0], append(c[1:], "version")...).Run() == nil {
			compose = c
			break
		}
	}
	if compose == nil {
		t.Skip("neither docker compose nor docker-compose is installed")
	}
	args := append(compose[1:], "-f", "docker-compose.yml", "config", "-q")
	if out, err := exec.CommandContext(ctx, compose[0], args...).CombinedOutput(); err != nil {
		t.Fatalf("%s config: %v\n%s", strings.Join(compose, " "), err, out)
	}
}

// composeEnv reads a service's environment, in map or list form.
func composeEnv(v any) map[string]string {
	env := map[string]string{}
	for k, x := range obj(v) {
		env[k] = str(x)
	}
	for _, kv := range strs(v) {
		k, x, _ := strings.Cut(kv, "=")
		env[k] = x
	}
	return env
}

func envSet(env map[string]string) map[string]bool {
	set := map[string]bool{}
	for k := range env {
		set[k] = true
	}
	return set
}

var stageRE = regexp.MustCompile(`(?i)^FROM\s+\S+\s+AS\s+(\S+)`)

// dockerStages lists the Dockerfile's named stages.
func dockerStages(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, in := range dockerfile(t) {
		if m := stageRE.FindStringSubmatch(in.cmd + " " + in.args); m != nil {
			names = append(names, m[1])
		}
	}
	return names
}

// checkAcyclic fails on a depends_on cycle, which compose refuses.
func checkAcyclic(t *testing.T, services map[string]any) {
	t.Helper()
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(string, []string)
	visit = func(name string, path []string) {
		switch state[name] {
		case 1:
			t.Errorf("depends_on cycle: %s", strings.Join(append(path, name), " -> "))
			return
		case 2:
			return
		}
		state[name] = 1
		for dep := range obj(obj(services[name])["depends_on"]) {
			visit(dep, append(path, name))
		}
		state[name] = 2
	}
	for name := range services {
		visit(name, nil)
	}
}
