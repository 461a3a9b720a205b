package main

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// TestFailoverToAPromotedStandby runs the relay against a PostgreSQL primary
// with a synchronous streaming standby, through a multi-host
// RELAY_DATABASE_URL with target_session_attrs=read-write. The primary dies
// (an immediate stop) while writers and the relay run; the standby is
// promoted. The relay follows it by itself and resumes from the position
// the standby has: nothing lost or reordered, duplicates within one window.
func TestFailoverToAPromotedStandby(t *testing.T) {
	t.Parallel()
	primary := testenv.NewPostgresServer(t)
	db := primary.Database(t)
	standby := primary.NewStandby(t, true)
	u, err := url.Parse(db)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	multi := fmt.Sprintf("postgres://postgres@%s,%s/%s?target_session_attrs=read-write",
		hostPort(t, primary.URL), hostPort(t, standby.URL), name)

	r := newRigOn(t, multi)
	r.writeThrough(t, 4, true)
	r.contend(t, 4, true, true)
	p := start(t, r.env)
	r.wrote(t, 500)
	eventually(t, "the relay publishes", func() bool { return r.ledger.Distinct() > 100 })

	crashed := time.Now()
	primary.Crash(t)
	standby.Promote(t)
	promoted := time.Since(crashed)
	before := r.ledger.Distinct()
	eventually(t, "the relay publishes from the promoted standby", func() bool { return r.ledger.Distinct() > before+50 })
	t.Logf("primary crashed; standby promoted %s later; the relay published from it %s after the crash",
		promoted.Round(time.Millisecond), time.Since(crashed).Round(time.Millisecond))
	r.wrote(t, 300)
	r.stopWrites()
	r.drained(t)
	stopClean(t, p)
	r.check(t, window)
	// A relay started now on the promoted standby starts from its
	// position: no "ahead of the transaction counter" refusal, since the
	// position and the rows failed over together.
	p = start(t, r.env)
	p.waitLog("leading", 30*time.Second)
	stopClean(t, p)
	if code, out := runCmd(t, []string{"RELAY_DATABASE_URL=" + multi}, "status"); code != 0 || !strings.Contains(out, "pending               0") {
		t.Errorf("status on the promoted standby: exit %d: %s", code, out)
	}
}
