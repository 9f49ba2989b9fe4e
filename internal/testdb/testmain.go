package testdb

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"
)

// The cluster RunMain started, for Shared. Both are written before m.Run
// starts any test and not changed while tests run.
var (
	shared    *Cluster
	sharedErr error
)

// RunMain is for TestMain: it starts a cluster for the whole test binary,
// runs the tests, stops the cluster and returns the exit code for os.Exit:
//
//	func TestMain(m *testing.M) { os.Exit(testdb.RunMain(m, testdb.Options{})) }
//
// When no PostgreSQL binaries are found, it prints how to install them and
// returns 1 if the environment variable CI is set (tests must not pass
// vacuously in CI); otherwise it still runs the tests, and those that call
// Shared are skipped. Any other start-up failure is printed, with the end of
// the server log, and gives 1.
func RunMain(m *testing.M, opts Options) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c, err := Start(ctx, opts)
	cancel()
	if err != nil {
		if errors.Is(err, ErrNoBinaries) {
			fmt.Fprintln(os.Stderr, err)
			if os.Getenv("CI") != "" {
				fmt.Fprintln(os.Stderr, "testdb: CI is set, so the missing PostgreSQL server fails the run")
				return 1
			}
			sharedErr = err
			return m.Run()
		}
		fmt.Fprintf(os.Stderr, "testdb: could not start PostgreSQL: %v\n", err)
		return 1
	}
	shared = c
	code := m.Run()
	if err := c.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "testdb: stopping PostgreSQL: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Shared returns the cluster RunMain started. Without PostgreSQL binaries
// (and CI unset) it skips the test; if RunMain was not used it fails it.
func Shared(tb testing.TB) *Cluster {
	tb.Helper()
	if shared != nil {
		return shared
	}
	if errors.Is(sharedErr, ErrNoBinaries) && os.Getenv("CI") == "" {
		tb.Skip(sharedErr.Error())
	}
	if sharedErr != nil {
		tb.Fatalf("testdb: no PostgreSQL cluster: %v", sharedErr)
	}
	tb.Fatal("testdb: no PostgreSQL cluster: call testdb.RunMain from TestMain")
	return nil
}

// Current returns the cluster RunMain started, or nil: for code that has
// no testing.TB, such as runnable examples.
func Current() *Cluster { return shared }
