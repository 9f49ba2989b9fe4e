package main

import (
	"bytes"
	"encoding/json"
	"math"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// The fleet's processes run this program (os.Executable); under go test
// that is the test binary, which runs the hidden command here, before
// TestMain, when the parent marked its environment.
func init() {
	if os.Getenv(fleetWorkerEnv) == "1" && len(os.Args) > 1 && os.Args[1] == fleetWorkerCmd {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
}

func TestDemoFleetUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		in   string
	}{
		{[]string{"--processes", "0"}, "--processes must be between 1 and"},
		{[]string{"--processes", "101"}, "--processes must be between 1 and"},
		{[]string{"--store-tps", "-1"}, "--store-tps must not be negative"},
		{[]string{"--processes", "2", "--provider", "rds-iam"}, "--provider awssm or vault only"},
		{[]string{"--processes", "2", "--provider", "vault", "--store-tps", "5"}, "--store-tps works with --provider awssm only"},
		{[]string{"--store-tps", "5", "--provider", "entra"}, "--store-tps works with --provider awssm only"},
		{[]string{"--processes", "100", "--workers", "3"}, "at most 250"},
	} {
		r := runCmd(append([]string{"demo"}, tc.args...)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.in) {
			t.Errorf("%q: want exit %d and %q, got %s", tc.args, exitUsage, tc.in, r)
		}
	}
	if r := runCmd("demo", "--help"); !strings.Contains(r.stdout, "--store-tps R") {
		t.Errorf("the help does not show --store-tps:\n%s", r.stdout)
	}
}

// Four processes on one secret against a store whose quota (2 requests a
// second, a burst of 2) is smaller than what a rotation makes them ask at
// once (2 each): the quota bites, yet no query fails, every process ends
// up on the last version, no process is left behind, and what each asked
// of the store stays within the bound below.
func TestDemoFleet(t *testing.T) {
	testdb.Shared(t)
	var f *fleet
	fleetTestHook = func(x *fleet) { f = x }
	t.Cleanup(func() { fleetTestHook = nil })
	r, d := captureDemo(t, "--processes", "4", "--workers", "1", "--store-tps", "2",
		"--duration", "9s", "--rotate-every", "2.5s")
	t.Logf("demo stdout:\n%s", r.stdout)
	if d == nil || f == nil {
		t.Fatalf("the fleet did not run: %s", r)
	}
	if r.code != exitOK || !strings.Contains(r.stdout, "\nPASS: ") {
		t.Errorf("exit %d, want 0 and PASS", r.code)
	}
	assertNoSecret(t, r, d.Passwords()...)

	assertFleetEnded(t, f)
	if n := d.sm.Throttled(); n == 0 {
		t.Error("the quota never bit: no request throttled")
	}

	// Every process served the last version.
	current, _, _ := d.sm.Version(demoSecret, smtest.StageCurrent)
	for _, p := range f.procs {
		if _, used := p.firstUse[current]; !used {
			t.Errorf("process %d never used the last version %s", p.id, shortVersion(current))
		}
	}
	kinds := map[string]int{}
	for _, ev := range f.events {
		kinds[ev.Kind]++
	}
	if kinds["four-step"] != 1 || kinds["wrong-order"] != 1 || kinds["outage"] != 1 {
		t.Fatalf("events %v, want one four-step, one wrong-order, one outage", kinds)
	}

	// The bound, per process. At start-up: one request, plus one repeat
	// per request the quota refused. During the load:
	//   2 per four-step rotation (AWSCURRENT, then AWSPENDING, once);
	//   2 per 500ms (the driver's spacing of calls per stage) while a
	//     wrong-order rotation leaves the database ahead of the store,
	//     plus 2;
	//   1 per 4s of refresh ahead (secret_ttl 5s, refreshed a fifth early),
	//     plus 1;
	//   1 per 400ms of outage (the shortest failure backoff), plus 1;
	//   1 repeat per request the quota refused.
	gap := d.phase()
	var outage time.Duration
	for _, ev := range f.events {
		if ev.Kind == "outage" {
			outage += ev.Done.Sub(ev.Start)
		}
	}
	run := f.end.At.Sub(d.start)
	ceil := func(a, b time.Duration) int { return int(math.Ceil(float64(a) / float64(b))) }
	base := 2*kinds["four-step"] +
		kinds["wrong-order"]*(2*ceil(gap, 500*time.Millisecond)+2) +
		ceil(run, fleetTTL*4/5) + 1 +
		ceil(outage, 400*time.Millisecond) + 1
	for _, p := range f.procs {
		startCalls, startThrottled := f.startup.Calls[p.key], f.startup.ThrottledBy[p.key]
		if startCalls < 1 || startCalls > 1+startThrottled {
			t.Errorf("process %d: %d requests at start-up, %d throttled; want 1 plus one per throttled", p.id, startCalls, startThrottled)
		}
		calls := f.end.Calls[p.key] - startCalls
		throttled := f.end.ThrottledBy[p.key] - startThrottled
		if calls > base+throttled {
			t.Errorf("process %d: %d requests during the %s load, %d throttled; want at most %d + %d",
				p.id, calls, run.Round(time.Millisecond), throttled, base, throttled)
		}
		t.Logf("process %d: %d requests at start-up (%d throttled), %d during the load (%d throttled); bound %d + %d",
			p.id, startCalls, startThrottled, calls, throttled, base, throttled)
	}

	// The summary shows the figures the issue asks for.
	summary := r.stdout[strings.Index(r.stdout, "\nSummary\n"):]
	for _, re := range []string{
		`queries +ok [\d,]+  failed 0\n`,
		`store requests +\d+ GetSecretValue`,
		`per process during the load: min \d+, median \d+, max \d+`,
		`at most \d+ in one second; [1-9]\d* throttled`,
		`DB logins .* [1-9]\d* rejected by the database, [1-9]\d* recovered`,
		// The first rotation's version may be skipped by a process the
		// throttled store held back until the second.
		`rotation 1 four-step +\d+ +\d+/\d+/\d+ +\d+ +\d+ +\d+ +\d+ +0  (after [\d.]+s|\d of 4; the others went straight to the next version)`,
		`rotation 2 wrong-order +\d+ +\d+/\d+/\d+ +\d+ +\d+ +\d+ +\d+ +0  after [\d.]+s`,
		`outage 1 +\d+`,
		`4 of 4 processes on [0-9a-f]+, the store's AWSCURRENT`,
	} {
		if !regexp.MustCompile(re).MatchString(summary) {
			t.Errorf("summary lacks %s", re)
		}
	}
}

// Three processes on one Vault, each with a token and leases of its own,
// through Vault outages: no query fails, the leases are renewed and
// replaced by the processes themselves, their number stays within what the
// max TTL allows, and once every process has closed its pool no lease is
// active and no lease role is left. No password or token is shown.
func TestDemoFleetVault(t *testing.T) {
	testdb.Shared(t)
	var f *fleet
	fleetTestHook = func(x *fleet) { f = x }
	t.Cleanup(func() { fleetTestHook = nil })
	// See the passwords Vault hands out, to look for them in the output.
	var pwMu sync.Mutex
	var passwords []string
	fleetVaultWrap = func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.Contains(r.URL.Path, "/creds/") {
				next.ServeHTTP(w, r)
				return
			}
			tw := &teeWriter{ResponseWriter: w}
			next.ServeHTTP(tw, r)
			var body struct {
				Data struct {
					Password string `json:"password"`
				} `json:"data"`
			}
			if json.Unmarshal(tw.buf.Bytes(), &body) == nil && body.Data.Password != "" {
				pwMu.Lock()
				passwords = append(passwords, body.Data.Password)
				pwMu.Unlock()
			}
		})
	}
	t.Cleanup(func() { fleetVaultWrap = nil })

	r, d := captureDemo(t, "--provider", "vault", "--processes", "3", "--duration", "8s", "--rotate-every", "1s")
	t.Logf("demo stdout:\n%s", r.stdout)
	if d == nil || f == nil || f.vault == nil {
		t.Fatalf("the fleet did not run on Vault: %s", r)
	}
	if r.code != exitOK || !strings.Contains(r.stdout, "\nPASS: ") {
		t.Errorf("exit %d, want 0 and PASS", r.code)
	}
	pwMu.Lock()
	secrets := append(append([]string{d.vs.RootToken()}, f.vault.tokens()...), passwords...)
	pwMu.Unlock()
	if len(f.vault.tokens()) != 3 || len(passwords) == 0 {
		t.Errorf("%d tokens, %d passwords seen; want 3 and some", len(f.vault.tokens()), len(passwords))
	}
	assertNoSecret(t, r, secrets...)

	assertFleetEnded(t, f)
	outages := 0
	for _, ev := range f.events {
		if ev.Kind == "outage" {
			outages++
		}
	}
	if outages == 0 {
		t.Error("no Vault outage")
	}

	// Leases: some, each process its own, renewed, and no more than the
	// max TTL calls for: one per max TTL of each process's life, plus the
	// first, plus one fetched ahead of the end.
	leases := d.vs.Leases()
	maxTTL := 2 * d.vaultTTL()
	life := f.end.At.Sub(f.launched)
	perProc := int(life/maxTTL) + 2
	byKey := map[string]int{}
	renewals := 0
	for _, l := range leases {
		byKey[l.TokenAccessor]++
		renewals += l.Renewals
	}
	if len(leases) == 0 || len(leases) > len(f.procs)*perProc {
		t.Errorf("%d leases issued in %s, want 1 to %d", len(leases), life.Round(time.Millisecond), len(f.procs)*perProc)
	}
	for _, p := range f.procs {
		if n := byKey[p.key]; n < 1 || n > perProc {
			t.Errorf("process %d: %d leases, want 1 to %d", p.id, n, perProc)
		}
	}
	if renewals == 0 {
		t.Error("no lease was renewed")
	}
	// What the demo counted before it stopped PostgreSQL.
	if e := f.vault.end; e.active != 0 || e.left != 0 || d.vs.ActiveLeases() != 0 {
		t.Errorf("after every process closed its pool: %d leases active, %d lease roles left (%v)", e.active, e.left, e.leftErr)
	}

	summary := r.stdout[strings.Index(r.stdout, "\nSummary\n"):]
	for _, re := range []string{
		`queries +ok [\d,]+  failed 0\n`,
		`vault requests +\d+: creds \d+, renew [1-9]\d*, revoke [1-9]\d*, token lookups \d+`,
		`per process, start-up to Close: min \d+, median \d+, max \d+`,
		`at most \d+ in one second`,
		`leases +[1-9]\d* issued fleet-wide, per process min [1-9]\d*, median \d+, max \d+`,
		`after db.Close +0 leases active, 0 lease roles left`,
		`outage 1 \([\d.]+s\) +\d+ +\d+/\d+/\d+( +\d+){9} +0\n`,
		`stop and db.Close +\d+`,
	} {
		if !regexp.MustCompile(re).MatchString(summary) {
			t.Errorf("summary lacks %s", re)
		}
	}
}

// teeWriter keeps a copy of what a handler writes.
type teeWriter struct {
	http.ResponseWriter
	buf bytes.Buffer
}

func (w *teeWriter) Write(b []byte) (int, error) {
	w.buf.Write(b)
	return w.ResponseWriter.Write(b)
}

// assertFleetEnded checks how every fleet run must end: no process
// outlived the demo, each stopped on its own with a final report, and no
// query failed or was cut short.
func assertFleetEnded(t *testing.T, f *fleet) {
	t.Helper()
	for _, p := range f.procs {
		select {
		case <-p.done:
		default:
			t.Errorf("process %d still runs", p.id)
		}
		if p.err != nil || p.final == nil {
			t.Errorf("process %d: exit %v, final report %v", p.id, p.err, p.final != nil)
		}
	}
	var ok, failed, cutShort int64
	for _, m := range f.end.Procs {
		ok += m.OK
		failed += m.Failed
		cutShort += m.CutShort
	}
	if failed != 0 || ok == 0 {
		t.Errorf("%d queries ok, %d failed; want none failed", ok, failed)
	}
	if cutShort != 0 {
		t.Errorf("%d queries still waited %s after the end", cutShort, fleetStopGrace)
	}
}
