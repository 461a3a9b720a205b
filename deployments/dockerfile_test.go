package deployments_test

import (
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// dockerfile is deployments/Dockerfile as a list of instructions, line
// continuations joined and comments dropped.
type instruction struct{ cmd, args string }

func dockerfile(t *testing.T) []instruction {
	t.Helper()
	data, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var out []instruction
	var cur string
	for _, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur == "") {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur += strings.TrimSuffix(trimmed, `\`) + " "
			continue
		}
		cur += trimmed
		cmd, args, _ := strings.Cut(cur, " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur = ""
	}
	return out
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	var stages [][]instruction
	for _, in := range dockerfile(t) {
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			t.Fatalf("%s before FROM", in.cmd)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a multi-stage build", len(stages))
	}
	all := slices.Concat(stages...)
	var build string
	for _, in := range all {
		if in.cmd == "RUN" && strings.Contains(in.args, "./cmd/outbox-relay") {
			build = in.args
		}
	}
	envs := strings.Join(collect(all, "ENV"), " ")
	for _, want := range []string{"-trimpath", "-s -w"} {
		if !strings.Contains(build, want) {
			t.Errorf("relay build %q lacks %s", build, want)
		}
	}
	if !strings.Contains(build+" "+envs, "CGO_ENABLED=0") {
		t.Errorf("relay build is not CGO_ENABLED=0")
	}

	// The last stage is the default image: the relay.
	final := stages[len(stages)-1]
	from := final[0].args
	if !strings.Contains(from, "distroless") && !strings.HasPrefix(from, "scratch") {
		t.Errorf("final stage FROM %s: want a small base (distroless or scratch)", from)
	}
	users := collect(final, "USER")
	if len(users) == 0 {
		t.Fatal("final stage has no USER")
	}
	user, _, _ := strings.Cut(users[len(users)-1], ":")
	if uid, err := strconv.Atoi(user); err != nil || uid == 0 {
		t.Errorf("final USER %q: want a numeric non-root user (Kubernetes' runAsNonRoot can only check numbers)", users[len(users)-1])
	}
	var entry []string
	if e := collect(final, "ENTRYPOINT"); len(e) == 1 {
		entry = execForm(t, e[0])
	}
	if len(entry) != 1 || !strings.HasSuffix(entry[0], "/outbox-relay") {
		t.Errorf("ENTRYPOINT %q: want the relay binary alone, in exec form", entry)
	}
	hc := collect(final, "HEALTHCHECK")
	if len(hc) != 1 {
		t.Fatalf("final stage has %d HEALTHCHECKs, want 1", len(hc))
	}
	_, cmd, ok := strings.Cut(hc[0], "CMD ")
	// Exec form: the image has no shell to run a shell-form command.
	if args := execForm(t, cmd); !ok || len(args) != 2 || len(entry) != 1 || args[0] != entry[0] || args[1] != "health" {
		t.Errorf("HEALTHCHECK %q: want CMD [<entrypoint>, \"health\"] in exec form", hc[0])
	}

	// No configuration baked in, except the address HEALTHCHECK needs.
	var addr string
	for _, e := range collect(final, "ENV") {
		for _, kv := range strings.Fields(e) {
			k, v, _ := strings.Cut(kv, "=")
			if k != "RELAY_HTTP_ADDR" {
				t.Errorf("final stage sets %s: configuration belongs to the deployment", k)
			}
			addr = v
		}
	}
	if port := portOf(t, addr); !slices.Contains(collect(final, "EXPOSE"), strconv.Itoa(port)) {
		t.Errorf("EXPOSE %q does not include the RELAY_HTTP_ADDR port %d", collect(final, "EXPOSE"), port)
	}
}

func collect(ins []instruction, cmd string) []string {
	var out []string
	for _, in := range ins {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return out
}

// execForm decodes a JSON-array instruction argument, or returns nil.
func execForm(t *testing.T, s string) []string {
	t.Helper()
	var args []string
	if err := json.Unmarshal([]byte(s), &args); err != nil {
		return nil
	}
	return args
}
