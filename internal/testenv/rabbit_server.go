package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// rabbitReadyTimeout bounds how long NewRabbitServer waits for the node to
// accept AMQP connections.
const rabbitReadyTimeout = 60 * time.Second

// rabbitCtlTimeout bounds each rabbitmqctl command.
const rabbitCtlTimeout = 60 * time.Second

// RabbitServer is a RabbitMQ node of one test's own, for tests that put the
// broker into states that would disturb other tests (resource alarms,
// stop_app/start_app). It is stopped and removed when the test ends.
type RabbitServer struct {
	URL  string // amqp://guest:guest@127.0.0.1:PORT/ (default vhost)
	Node string // node name, for rabbitmqctl -n
	// TLSURL, for a node started with RabbitOptions.TLS, is its TLS
	// listener: amqps://guest:guest@localhost:PORT/ with the CA and the
	// client certificate.
	TLSURL string

	bindir  string   // directory holding rabbitmq-server and rabbitmqctl
	dir     string   // temporary directory holding everything below
	pidfile string   // RABBITMQ_PID_FILE: the pid of the node's beam.smp
	outfile string   // the server's stdout and stderr
	logdir  string   // RABBITMQ_LOG_BASE
	env     []string // RABBITMQ_* settings, for the server and rabbitmqctl
	asUser  []string // command prefix running as the rabbitmq user, if root

	mu      sync.Mutex
	running *rabbitProcess // nil while killed
}

// NewRabbitServer starts a throwaway RabbitMQ node, without plugins, in a
// temporary directory, listening for AMQP on a free 127.0.0.1 port, and waits
// until it accepts an AMQP connection as guest.
//
// The scripts are taken from /usr/lib/rabbitmq/bin (Debian's real scripts,
// not the /usr/sbin wrappers, which switch users through su and redirect the
// output), else from rabbitmq-server on PATH. When the test runs as root, the
// node and rabbitmqctl run as the "rabbitmq" user with its home, so that they
// share its Erlang cookie. The node runs in a process group of its own, which
// is killed (a graceful stop takes seconds) and its directory removed when
// the test ends.
//
// A test binary killed before its cleanups run leaves the node running; its
// name and directory start with "relaytest-".
func NewRabbitServer(t testing.TB) *RabbitServer {
	t.Helper()
	return NewRabbitServerWith(t, RabbitOptions{})
}

// RabbitOptions shape a node of NewRabbitServerWith.
type RabbitOptions struct {
	// TLS, when set, adds a TLS listener (TLSURL) with the server
	// certificate (for localhost), which requires a client certificate of
	// the CA; the plain listener (URL) stays.
	TLS *TLSFiles
	// Cookie, when set, is the node's Erlang cookie, in a home directory
	// of its own; otherwise the node shares its user's (~/.erlang.cookie).
	Cookie string
}

// NewRabbitServerWith is NewRabbitServer with options.
func NewRabbitServerWith(t testing.TB, o RabbitOptions) *RabbitServer {
	t.Helper()
	s := &RabbitServer{bindir: rabbitBindir(t), Node: randomName("relaytest-") + "@localhost",
		asUser: runAs(t, "RabbitMQ", "rabbitmq")}

	home := os.Getenv("HOME")
	uid, gid := -1, -1
	if s.asUser != nil {
		u, err := user.Lookup("rabbitmq")
		if err != nil {
			t.Fatalf("testenv: running as root, but there is no rabbitmq user to run RabbitMQ as (install rabbitmq-server): %v", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		home = u.HomeDir
	}

	dir := serverDir(t, "RabbitMQ", "relaytest-rabbit-")
	s.dir = dir
	mnesia := filepath.Join(dir, "mnesia")
	s.logdir = filepath.Join(dir, "log")
	s.pidfile = filepath.Join(dir, "rabbit.pid")
	s.outfile = filepath.Join(dir, "server.out")
	conf := filepath.Join(dir, "rabbitmq.conf")
	plugins := filepath.Join(dir, "enabled_plugins")
	envFile := filepath.Join(dir, "rabbitmq-env.conf")
	if o.Cookie != "" {
		// A home of the node's own, whose Erlang cookie only the nodes of
		// its cluster share (Erlang wants it readable by its owner only).
		home = filepath.Join(dir, "home")
		cookie := filepath.Join(home, ".erlang.cookie")
		if err := os.Mkdir(home, 0o700); err != nil {
			t.Fatalf("testenv: create %s: %v", home, err)
		}
		if err := os.WriteFile(cookie, []byte(o.Cookie), 0o400); err != nil {
			t.Fatalf("testenv: write %s: %v", cookie, err)
		}
		for _, p := range []string{home, cookie} {
			if uid >= 0 {
				if err := os.Chown(p, uid, gid); err != nil {
					t.Fatalf("testenv: chown %s to rabbitmq: %v", p, err)
				}
			}
		}
	}

	port, distPort := freePort(t), freePort(t)
	for distPort == port {
		distPort = freePort(t)
	}
	settings := fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\nlog.console = false\nlog.file.level = info\n", port)
	if f := o.TLS; f != nil {
		tlsPort := freePort(t)
		for tlsPort == port || tlsPort == distPort {
			tlsPort = freePort(t)
		}
		p := installFiles(t, dir, uid, gid, f.CA, f.ServerCert, f.ServerKey)
		settings += fmt.Sprintf("listeners.ssl.default = 127.0.0.1:%d\nssl_options.cacertfile = %s\nssl_options.certfile = %s\nssl_options.keyfile = %s\n"+
			"ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n", tlsPort, p[0], p[1], p[2])
		s.TLSURL = fmt.Sprintf("amqps://guest:guest@localhost:%d/?%s", tlsPort, url.Values{"cacertfile": {f.CA},
			"certfile": {f.ClientCert}, "keyfile": {f.ClientKey}}.Encode())
	}
	files := map[string]string{
		conf: settings,
		// No plugins: the management plugin alone doubles the start time.
		plugins: "[].\n",
		// Keeps /etc/rabbitmq/rabbitmq-env.conf, the machine's node's, out.
		envFile: "",
	}
	for p, content := range files {
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatalf("testenv: write %s: %v", p, err)
		}
	}
	for _, p := range []string{mnesia, s.logdir} {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatalf("testenv: create %s: %v", p, err)
		}
	}
	if uid >= 0 {
		// The node writes its pid file and stdout file in dir itself.
		for _, p := range []string{dir, mnesia, s.logdir} {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatalf("testenv: chown %s to rabbitmq: %v", p, err)
			}
		}
	}

	s.env = []string{
		"HOME=" + home,
		"RABBITMQ_NODENAME=" + s.Node,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT=" + strconv.Itoa(port),
		"RABBITMQ_DIST_PORT=" + strconv.Itoa(distPort),
		"RABBITMQ_MNESIA_BASE=" + mnesia,
		"RABBITMQ_LOG_BASE=" + s.logdir,
		"RABBITMQ_PID_FILE=" + s.pidfile,
		"RABBITMQ_CONFIG_FILE=" + conf,
		// Does not exist: keeps /etc/rabbitmq/advanced.config out.
		"RABBITMQ_ADVANCED_CONFIG_FILE=" + filepath.Join(dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE=" + plugins,
		"RABBITMQ_CONF_ENV_FILE=" + envFile,
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
		"ERL_EPMD_ADDRESS=127.0.0.1",
	}
	s.URL = fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", port)
	t.Cleanup(func() { s.Kill(t) })
	s.launch(t)
	return s
}

// Kill kills the node at once (SIGKILL), as a crash would, and waits for
// its processes to exit. Start starts it again, with its data.
func (s *RabbitServer) Kill(t testing.TB) {
	s.mu.Lock()
	running := s.running
	s.running = nil
	s.mu.Unlock()
	if running != nil {
		s.stop(t, running.pgid, running.exited)
	}
}

// Running reports whether the node runs (not killed).
func (s *RabbitServer) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running != nil
}

// Start starts a node that Kill stopped, and waits until it accepts AMQP
// connections.
func (s *RabbitServer) Start(t testing.TB) {
	t.Helper()
	s.launch(t)
}

// launch starts the node's process and waits until it is ready.
func (s *RabbitServer) launch(t testing.TB) {
	t.Helper()
	out, err := os.OpenFile(s.outfile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("testenv: create %s: %v", s.outfile, err)
	}
	defer out.Close()
	cmd := s.command(context.Background(), "rabbitmq-server")
	cmd.Stdout = out
	cmd.Stderr = out
	// A process group of its own: the cleanup kills runuser, the shell script
	// and beam.smp at once. (beam.smp's helper erl_child_setup, and
	// inet_gethost under it, run in sessions of their own; see stop.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("testenv: start RabbitMQ: %v", err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.running = &rabbitProcess{pgid: cmd.Process.Pid, exited: exited}
	s.mu.Unlock()

	if err := s.waitReady(exited); err != nil {
		select {
		case <-exited:
			err = fmt.Errorf("%w (rabbitmq-server exited: %v)", err, waitErr)
		default:
		}
		t.Fatalf("testenv: RabbitMQ node %s not ready at %s: %v\n%s", s.Node, s.URL, err, s.log())
	}
}

// rabbitProcess is a running node's launcher: its process group, and a
// channel closed when it exited.
type rabbitProcess struct {
	pgid   int
	exited <-chan struct{}
}

// Ctl runs `rabbitmqctl -n Node args...` and returns its combined output,
// failing the test on error.
func (s *RabbitServer) Ctl(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rabbitCtlTimeout)
	defer cancel()
	out, err := runCombined(s.command(ctx, "rabbitmqctl", append([]string{"-n", s.Node}, args...)...))
	if err != nil {
		t.Fatalf("testenv: rabbitmqctl -n %s %s: %v\n%s", s.Node, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// command returns a command running the RabbitMQ script name from s.bindir
// with s.env, as the rabbitmq user when we are root.
func (s *RabbitServer) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	// The settings go on env's command line, after runuser, which would
	// reset HOME.
	argv := slices.Concat([]string{"env"}, s.env, []string{filepath.Join(s.bindir, name)}, args)
	cmd := userCommand(ctx, s.asUser, s.dir, argv...)
	// Leave out inherited settings that could point the scripts elsewhere.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "RABBITMQ_") || strings.HasPrefix(kv, "ERL_")
	})
	return cmd
}

// waitReady dials the node until it accepts an AMQP connection, the server
// process exits, or rabbitReadyTimeout passes. The listener is started near
// the end of the boot, after the default virtual host and user exist.
func (s *RabbitServer) waitReady(exited <-chan struct{}) error {
	deadline := time.Now().Add(rabbitReadyTimeout)
	for {
		conn, err := amqp.DialConfig(s.URL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
		if err == nil {
			return conn.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no AMQP connection within %v: %w", rabbitReadyTimeout, err)
		}
		select {
		case <-exited:
			return errors.New("server exited during start")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop kills the node's process group, and every descendant of its launcher
// (erl_child_setup and inet_gethost call setsid, leaving the group; they
// would exit by themselves once beam.smp is gone, but not at once), and
// waits for them all to exit. The node deregisters from epmd as it dies.
func (s *RabbitServer) stop(t testing.TB, pgid int, exited <-chan struct{}) {
	pids := descendants(pgid)
	if beam := s.beamPID(); beam != 0 && !slices.Contains(pids, beam) {
		pids = append(pids, beam)
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	timeout := time.After(10 * time.Second)
	select {
	case <-exited:
	case <-timeout:
		t.Errorf("testenv: RabbitMQ launcher %d still running 10 s after SIGKILL", pgid)
		return
	}
	for _, pid := range pids {
		for !processExited(pid) {
			select {
			case <-timeout:
				t.Errorf("testenv: process %d of RabbitMQ node %s still running 10 s after SIGKILL", pid, s.Node)
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
}

// descendants returns the pids of the descendants of process pid, from /proc.
func descendants(pid int) []int {
	children := map[int][]int{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // exited meanwhile
		}
		// "PID (COMM) STATE PPID ..."; COMM may contain ") ".
		i := bytes.LastIndex(b, []byte(") "))
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+2:]))
		if len(f) < 2 {
			continue
		}
		child, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		parent, _ := strconv.Atoi(f[1])
		children[parent] = append(children[parent], child)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// beamPID returns the pid in the node's pid file, or 0.
func (s *RabbitServer) beamPID() int {
	b, _ := os.ReadFile(s.pidfile)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// log returns the end of the server's output and of its log files.
func (s *RabbitServer) log() string {
	var sb strings.Builder
	logs, _ := filepath.Glob(filepath.Join(s.logdir, "*.log"))
	for _, p := range append([]string{s.outfile}, logs...) {
		b, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintf(&sb, "%s: (%v)\n", p, err)
			continue
		}
		fmt.Fprintf(&sb, "%s:\n%s\n", p, logTail(b))
	}
	return sb.String()
}

// rabbitBindir returns the directory of rabbitmq-server and rabbitmqctl:
// /usr/lib/rabbitmq/bin if it has them, else that of rabbitmq-server on PATH.
func rabbitBindir(t testing.TB) string {
	t.Helper()
	const debian = "/usr/lib/rabbitmq/bin"
	if isExecutable(filepath.Join(debian, "rabbitmq-server")) && isExecutable(filepath.Join(debian, "rabbitmqctl")) {
		return debian
	}
	if dir := bindirOnPath("rabbitmq-server", "rabbitmqctl"); dir != "" {
		return dir
	}
	t.Fatalf("testenv: rabbitmq-server and rabbitmqctl not found in /usr/lib/rabbitmq/bin or on PATH; install the rabbitmq-server package (\"make test\" does, as root)")
	return ""
}
