package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/smtest"
)

func TestMain(m *testing.M) {
	// The SDK's default chain finds static test credentials and never looks
	// at this machine's AWS files or the metadata service.
	restore := smtest.IsolateEnv()
	code := testdb.RunMain(m, testdb.Options{})
	restore()
	os.Exit(code)
}

// result is one in-process run of the command.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout\n%s--- stderr\n%s", r.code, r.stdout, r.stderr)
}

// lastLine is the last non-empty line of stdout.
func (r result) lastLine() string {
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	return lines[len(lines)-1]
}

func runCmd(args ...string) result {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return result{code, out.String(), errb.String()}
}

// assertNoSecret fails the test if any of the secrets appears in the run's
// output.
func assertNoSecret(t *testing.T, r result, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s == "" {
			continue
		}
		if strings.Contains(r.stdout, s) || strings.Contains(r.stderr, s) {
			t.Errorf("a password appears in the output:\n%s", r)
		}
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		in   string // expected in stdout+stderr
	}{
		{nil, exitUsage, "Usage:"},
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"help"}, exitOK, "pgsecrets check"},
		{[]string{"--help"}, exitOK, "pgsecrets demo"},
		{[]string{"help", "check"}, exitOK, "DescribeSecret"},
		{[]string{"check", "--help"}, exitOK, "Exit status"},
		{[]string{"check"}, exitUsage, "a DSN is required"},
		{[]string{"check", "secret_id=a", "secret_id=b"}, exitUsage, "expects one DSN argument, got 2"},
		{[]string{"check", "--nope", "secret_id=a"}, exitUsage, "flag provided but not defined"},
		{[]string{"check", "--timeout", "0s", "secret_id=a"}, exitUsage, "--timeout must be positive"},
		{[]string{"demo", "--help"}, exitOK, "four-step"},
		{[]string{"help", "demo"}, exitOK, "wrong-order"},
		{[]string{"demo", "--workers", "0"}, exitUsage, "--workers"},
		{[]string{"demo", "--duration", "-1s"}, exitUsage, "--duration"},
		{[]string{"demo", "extra"}, exitUsage, "takes no arguments"},
	} {
		r := runCmd(tc.args...)
		if r.code != tc.code || !strings.Contains(r.stdout+r.stderr, tc.in) {
			t.Errorf("%q: want exit %d and %q in the output, got %s", tc.args, tc.code, tc.in, r)
		}
	}
}

func TestHistogram(t *testing.T) {
	var h histogram
	if h.quantile(0.5) != 0 {
		t.Error("empty histogram has a median")
	}
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Millisecond)
	}
	within := func(got, want time.Duration) bool {
		return got >= want && float64(got) <= float64(want)*histGrowth*1.001
	}
	if p := h.quantile(0.5); !within(p, 500*time.Millisecond) {
		t.Errorf("p50 = %v, want about 500ms", p)
	}
	if p := h.quantile(0.99); !within(p, 990*time.Millisecond) {
		t.Errorf("p99 = %v, want about 990ms", p)
	}
	if p, m := h.quantile(1), h.maximum(); p != time.Second || m != time.Second {
		t.Errorf("p100 = %v, max = %v, want 1s", p, m)
	}
	h.record(time.Nanosecond)
	h.record(time.Hour)
	if h.maximum() != time.Hour {
		t.Errorf("max = %v", h.maximum())
	}
}

func TestFormatting(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{thousands(0), "0"},
		{thousands(999), "999"},
		{thousands(1000), "1,000"},
		{thousands(1234567), "1,234,567"},
		{thousands(-1234), "-1,234"},
		{goDuration(10 * time.Minute), "10 * time.Minute"},
		{goDuration(time.Hour), "time.Hour"},
		{goDuration(90 * time.Second), "90 * time.Second"},
		{goDuration(1500 * time.Millisecond), "1500 * time.Millisecond"},
		{ms(420 * time.Microsecond), "0.42ms"},
		{ms(12340 * time.Microsecond), "12.3ms"},
		{ms(1520 * time.Millisecond), "1520ms"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
