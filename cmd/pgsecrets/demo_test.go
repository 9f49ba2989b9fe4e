package main

import (
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/pgsecrets/pgsecrets/internal/testdb"
)

// captureDemo runs the demo in-process and returns its result and state.
func captureDemo(t *testing.T, args ...string) (result, *demo) {
	t.Helper()
	var d *demo
	demoTestHook = func(x *demo) { d = x }
	t.Cleanup(func() { demoTestHook = nil })
	r := runCmd(append([]string{"demo"}, args...)...)
	return r, d
}

func TestDemo(t *testing.T) {
	testdb.Shared(t) // skips without PostgreSQL binaries, like the other tests
	r, d := captureDemo(t, "--duration", "6s", "--rotate-every", "1.5s", "--workers", "4", "--verbose")
	t.Logf("demo stdout:\n%s", r.stdout)
	if d == nil {
		t.Fatalf("the demo did not run: %s", r)
	}
	if r.code != 0 {
		t.Errorf("exit %d, want 0:\n%s", r.code, r)
	}
	pws := d.Passwords()
	if len(pws) < 3 {
		t.Errorf("%d passwords used, want the initial one and at least two rotations", len(pws))
	}
	assertNoSecret(t, r, pws...)

	summary := r.stdout[strings.Index(r.stdout, "\nSummary\n"):]
	num := func(re string) int {
		t.Helper()
		m := regexp.MustCompile(re).FindStringSubmatch(summary)
		if m == nil {
			t.Fatalf("summary lacks %s:\n%s", re, summary)
		}
		n, _ := strconv.Atoi(strings.ReplaceAll(m[1], ",", ""))
		return n
	}
	if ok := num(`queries +ok ([\d,]+)  failed 0\n`); ok == 0 {
		t.Error("no query succeeded")
	}
	if n := num(`rotations +\d+ \(four-step (\d+),`); n < 1 {
		t.Errorf("%d four-step rotations", n)
	}
	if n := num(`wrong-order (\d+)\)`); n < 1 {
		t.Errorf("%d wrong-order rotations", n)
	}
	if n := num(`store outages +(\d+) `); n < 1 {
		t.Errorf("%d store outages", n)
	}
	if !strings.Contains(r.stdout, "\nPASS: ") {
		t.Errorf("no PASS verdict")
	}
	// Each kind's start and end were announced.
	for _, re := range []string{
		`rotation \d+: four-step \(AWSPENDING written`, `rotation \d+: four-step done`,
		`rotation \d+: wrong-order \(database changed first`, `rotation \d+: wrong-order done`,
		`outage 1: Secrets Manager fails every GetSecretValue`, `outage 1: over`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("output lacks %s", re)
		}
	}
	// --verbose: the driver's log reached stderr and showed the recoveries.
	if !strings.Contains(r.stderr, `msg="pgsecrets: recovered after authentication failure"`) {
		t.Errorf("no recovery in the driver's log:\n%s", r.stderr)
	}
}

func TestDemoNoBinaries(t *testing.T) {
	t.Setenv("PG_BINDIR", t.TempDir())
	r, _ := captureDemo(t, "--duration", "1s")
	if r.code != 1 || !strings.Contains(r.stderr, "apt-get install -y postgresql") {
		t.Errorf("want exit 1 with install instructions, got %s", r)
	}
}

// The demo on cloud IAM tokens (RDS, Entra ID, Google): no query fails
// through refused logins and tokens refused early, the driver gets new
// tokens, and no token, key or AWS secret key reaches the output.
func TestDemoTokens(t *testing.T) {
	testdb.Shared(t)
	for provider, planted := range map[string][]string{
		"rds-iam": {demoAWSSecret, "X-Amz-Signature"},
		"entra":   {"eyJ"},
		"gcp-iam": {"ya29.", "PRIVATE KEY"},
	} {
		t.Run(provider, func(t *testing.T) {
			r, d := captureDemo(t, "--provider", provider, "--duration", "5s", "--rotate-every", "1.5s", "--workers", "4", "--verbose")
			t.Logf("demo stdout:\n%s", r.stdout)
			if d == nil || r.code != 0 {
				t.Fatalf("exit %d, want 0:\n%s", r.code, r)
			}
			assertNoSecret(t, r, append(d.Passwords(), planted...)...)
			summary := r.stdout[strings.Index(r.stdout, "\nSummary\n"):]
			for _, re := range []string{`queries +ok [\d,]+  failed 0\n`, `tokens +([2-9]|\d\d+) `, `refused: [1-9]\d* injected, [1-9]\d* too old`} {
				if !regexp.MustCompile(re).MatchString(summary) {
					t.Errorf("summary lacks %s:\n%s", re, summary)
				}
			}
			if !strings.Contains(r.stdout, "\nPASS: ") {
				t.Error("no PASS verdict")
			}
		})
	}
}
