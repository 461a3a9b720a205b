package deployments_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"

	"gopkg.in/yaml.v3"
)

// relayMetrics is every metric the relay exports, by type.
var relayMetrics = map[string]string{
	"outbox_relay_rows_published_total":                 "counter",
	"outbox_relay_publish_failures_total":               "counter",
	"outbox_relay_dead_rows":                            "gauge",
	"outbox_relay_parked_rows":                          "gauge",
	"outbox_relay_pending_rows":                         "gauge",
	"outbox_relay_oldest_pending_age_seconds":           "gauge",
	"outbox_relay_confirm_latency_seconds":              "histogram",
	"outbox_relay_batch_size":                           "histogram",
	"outbox_relay_leader":                               "gauge",
	"outbox_relay_broker_blocked":                       "gauge",
	"outbox_relay_database_up":                          "gauge",
	"outbox_relay_broker_up":                            "gauge",
	"outbox_relay_holdup_age_seconds":                   "gauge",
	"outbox_relay_slot_retained_wal_bytes":              "gauge",
	"outbox_relay_retention_deleted_rows_total":         "counter",
	"outbox_relay_unlocked_rows_total":                  "counter",
	"outbox_relay_skipped_rows_total":                   "counter",
	"outbox_relay_partition_held":                       "gauge",
	"outbox_relay_partition_pending_rows":               "gauge",
	"outbox_relay_partition_oldest_pending_age_seconds": "gauge",
	"outbox_relay_partitions_held":                      "gauge",
	"outbox_relay_partition_takes_total":                "counter",
}

// sharedGauges have the same value on every replica: alerts take their max,
// never one alert per replica.
var sharedGauges = []string{
	"outbox_relay_dead_rows", "outbox_relay_parked_rows", "outbox_relay_pending_rows",
	"outbox_relay_oldest_pending_age_seconds", "outbox_relay_holdup_age_seconds", "outbox_relay_slot_retained_wal_bytes",
	"outbox_relay_partition_held", "outbox_relay_partition_pending_rows", "outbox_relay_partition_oldest_pending_age_seconds",
}

// knownSeries reports whether a series name in a query exists: a relay
// metric (a histogram's _bucket, _sum and _count), a Go or process
// collector metric, or Prometheus' own up.
func knownSeries(name string) bool {
	if relayMetrics[name] == "counter" || relayMetrics[name] == "gauge" {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if relayMetrics[strings.TrimSuffix(name, suffix)] == "histogram" && strings.HasSuffix(name, suffix) {
			return true
		}
	}
	return name == "up" || strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_")
}

var (
	grafanaVarRE = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`)
	quotedRE     = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	bracesRE     = regexp.MustCompile(`\{[^}]*\}|\[[^\]]*\]`)
	groupingRE   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promKeywords = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
		"group_left", "group_right", "inf", "nan", "Inf", "NaN", "atan2", "start", "end"}
)

// seriesNames returns the series a PromQL expression selects. It is a small
// lexer, not a parser: it drops strings, label matchers, ranges and
// grouping labels, then takes every identifier that is neither a keyword
// nor a function call. Grafana's $variables are dropped first.
func seriesNames(expr string) []string {
	s := grafanaVarRE.ReplaceAllString(expr, "")
	s = quotedRE.ReplaceAllString(s, " ")
	s = bracesRE.ReplaceAllString(s, " ")
	s = groupingRE.ReplaceAllString(s, " ")
	var names []string
	r := []rune(s)
	for i := 0; i < len(r); {
		c := r[i]
		switch {
		case unicode.IsDigit(c) || c == '.':
			// A number or a duration: 0.99, 1e3, 5m.
			for i < len(r) && (unicode.IsLetter(r[i]) || unicode.IsDigit(r[i]) || r[i] == '.' || r[i] == '_') {
				i++
			}
		case unicode.IsLetter(c) || c == '_' || c == ':':
			j := i
			for j < len(r) && (unicode.IsLetter(r[j]) || unicode.IsDigit(r[j]) || r[j] == '_' || r[j] == ':') {
				j++
			}
			word := string(r[i:j])
			k := j
			for k < len(r) && unicode.IsSpace(r[k]) {
				k++
			}
			if (k == len(r) || r[k] != '(') && !slices.Contains(promKeywords, word) {
				names = append(names, word)
			}
			i = j
		default:
			i++
		}
	}
	return names
}

func TestSeriesNames(t *testing.T) {
	t.Parallel()
	cases := []struct {
		expr string
		want []string
	}{
		{`up`, []string{"up"}},
		{`max without (instance, pod) (outbox_relay_dead_rows) > 0`, []string{"outbox_relay_dead_rows"}},
		{`histogram_quantile(0.99, sum by (le) (rate(outbox_relay_batch_size_bucket{job=~"$job", x="a(b)"}[$__rate_interval])))`,
			[]string{"outbox_relay_batch_size_bucket"}},
		{`a unless b offset 5m and on (instance, job) c == bool 1e3`, []string{"a", "b", "c"}},
		{`sum(rate(outbox_relay_rows_publishd_total[5m]))`, []string{"outbox_relay_rows_publishd_total"}},
	}
	for _, c := range cases {
		if got := seriesNames(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("seriesNames(%q) = %q, want %q", c.expr, got, c.want)
		}
	}
	if knownSeries("outbox_relay_rows_publishd_total") || knownSeries("outbox_relay_leader_bucket") || !knownSeries("outbox_relay_confirm_latency_seconds_count") {
		t.Error("knownSeries accepts a misspelt name or a histogram suffix on a gauge, or refuses a histogram series")
	}
}

// checkExpr fails on an expression that selects no series or one the relay
// does not export.
func checkExpr(t *testing.T, where, expr string) []string {
	t.Helper()
	names := seriesNames(expr)
	if len(names) == 0 {
		t.Errorf("%s: %q selects no series", where, expr)
	}
	for _, n := range names {
		if !knownSeries(n) {
			t.Errorf("%s: %q uses %s, which the relay does not export", where, expr, n)
		}
	}
	return names
}

type alertRule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func alertRules(t *testing.T) []alertRule {
	t.Helper()
	data, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Name  string      `yaml:"name"`
			Rules []alertRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &file); err != nil {
		t.Fatal(err)
	}
	var rules []alertRule
	for _, g := range file.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules
}

func TestAlerts(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	covered := map[string]bool{}
	for _, r := range alertRules(t) {
		where := "alert " + r.Alert
		if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
			t.Errorf("%s: want alert, expr, labels.severity and annotations.summary", where)
		}
		if _, err := time.ParseDuration(r.For); err != nil {
			t.Errorf("%s: for %q: %v", where, r.For, err)
		}
		for _, n := range checkExpr(t, where, r.Expr) {
			covered[n] = true
			if slices.Contains(sharedGauges, n) && !strings.Contains(r.Expr, "max") {
				t.Errorf("%s: %s is the same on every replica; take its max", where, n)
			}
		}
		u, err := url.Parse(r.Annotations["runbook_url"])
		if err != nil || u.Fragment == "" {
			t.Errorf("%s: runbook_url %q has no README anchor", where, r.Annotations["runbook_url"])
		} else if !strings.HasSuffix(u.Path, "/README.md") || !strings.Contains(string(readme), `id="`+u.Fragment+`"`) {
			t.Errorf("%s: runbook_url %q: README.md has no anchor %q", where, u, u.Fragment)
		}
	}
	// Lag, dead rows, stalled, no leader, broker blocked, servers and relays
	// down, long holdups.
	for _, m := range []string{"outbox_relay_oldest_pending_age_seconds", "outbox_relay_dead_rows", "outbox_relay_pending_rows",
		"outbox_relay_rows_published_total", "outbox_relay_leader", "outbox_relay_broker_blocked", "outbox_relay_broker_up",
		"outbox_relay_database_up", "up", "outbox_relay_holdup_age_seconds", "outbox_relay_slot_retained_wal_bytes"} {
		if !covered[m] {
			t.Errorf("no alert on %s", m)
		}
	}
}

// dashboardExprs returns every query of the Grafana dashboard, by panel
// title, after checking that panels use the datasource variable.
func dashboardExprs(t *testing.T) map[string][]string {
	t.Helper()
	data, err := os.ReadFile("grafana/outbox-relay.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Templating struct {
			List []struct {
				Name, Type string
				Query      any
			}
		}
		Panels []struct {
			ID         int
			Type       string
			Title      string
			Datasource *struct{ Type, UID string }
			Targets    []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Error("dashboard has no uid or title")
	}
	hasDatasource := false
	exprs := map[string][]string{}
	for _, v := range dash.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			hasDatasource = v.Name == "datasource"
		}
		if q, ok := v.Query.(map[string]any); ok {
			// label_values(metric, label) names a metric as well.
			if m := regexp.MustCompile(`label_values\((\w+)`).FindStringSubmatch(fmt.Sprint(q["query"])); m != nil {
				exprs["variable "+v.Name] = append(exprs["variable "+v.Name], m[1])
			}
		}
	}
	if !hasDatasource {
		t.Error(`dashboard has no Prometheus datasource variable named "datasource"`)
	}
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the datasource variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			exprs["panel "+p.Title] = append(exprs["panel "+p.Title], q.Expr)
		}
	}
	return exprs
}

func TestDashboard(t *testing.T) {
	t.Parallel()
	shown := map[string]bool{}
	for where, list := range dashboardExprs(t) {
		for _, e := range list {
			for _, n := range checkExpr(t, where, e) {
				shown[strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum")] = true
			}
		}
	}
	for m := range relayMetrics {
		if !shown[m] {
			t.Errorf("the dashboard does not show %s", m)
		}
	}
}

// TestPromtool checks the rules, their unit tests and the dashboard's
// queries with Prometheus' own parser, where promtool is installed.
func TestPromtool(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.CommandContext(ctx, promtool, args...).CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("check", "rules", "prometheus/alerts.yml")
	run("test", "rules", "prometheus/alerts_test.yml")

	// The dashboard's queries as recording rules, Grafana's variables
	// replaced by what Grafana would put there.
	vars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "$job", ".*")
	var rules []map[string]string
	for where, list := range dashboardExprs(t) {
		for i, e := range list {
			if strings.HasPrefix(where, "panel ") {
				rules = append(rules, map[string]string{"record": fmt.Sprintf("dashboard:query:%d_%d", len(rules), i), "expr": vars.Replace(e)})
			}
		}
	}
	data, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dashboard.yml")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	run("check", "rules", file)
}
