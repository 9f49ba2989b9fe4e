// Package testkit holds what the test suites of every module share: the
// standard query load, a log buffer safe for concurrent writers, random
// passwords, and polling helpers for state that has no event.
package testkit

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Load runs a query in a loop from several goroutines and counts what the
// application would see: successes and failed queries.
type Load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string // the first few failures
	stop       chan struct{}
	wg         sync.WaitGroup
}

// Start runs query from n goroutines until Halt (registered as a cleanup).
func Start(tb testing.TB, n int, query func(context.Context) error) *Load {
	l := &Load{stop: make(chan struct{})}
	for i := 0; i < n; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				if err := query(context.Background()); err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.errs) < 5 {
						l.errs = append(l.errs, err.Error())
					}
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
			}
		}()
	}
	tb.Cleanup(l.Halt)
	return l
}

// OK is the number of queries that succeeded so far.
func (l *Load) OK() int64 { return l.ok.Load() }

// WaitQueries blocks until n more queries have succeeded, failing the test
// after a minute without them.
func (l *Load) WaitQueries(tb testing.TB, n int64) {
	tb.Helper()
	target := l.ok.Load() + n
	deadline := time.Now().Add(time.Minute)
	for l.ok.Load() < target {
		if time.Now().After(deadline) {
			tb.Fatalf("the load made no progress; errors:\n%s", l.firstErrors())
		}
		time.Sleep(5 * time.Millisecond) // polling a counter; no event to wait on
	}
}

// Halt stops the load and waits for its goroutines.
func (l *Load) Halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// AssertNoFailures halts the load and fails the test if any query failed,
// or none succeeded.
func (l *Load) AssertNoFailures(tb testing.TB) {
	tb.Helper()
	l.Halt()
	if f := l.failed.Load(); f != 0 {
		tb.Errorf("%d failed queries (of %d); first errors:\n%s", f, f+l.ok.Load(), l.firstErrors())
	}
	if l.ok.Load() == 0 {
		tb.Error("no query succeeded")
	}
}

func (l *Load) firstErrors() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.errs, "\n")
}

// During calls fn every step for d: for sampling while something runs.
func During(d, step time.Duration, fn func()) {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		fn()
		time.Sleep(step) // sampling at an interval is the point
	}
}

// Eventually polls cond until it holds, failing the test after a minute.
func Eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling state that has no event
	}
}

// RandomPassword is a password no test shares.
func RandomPassword() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "pw-" + hex.EncodeToString(b)
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers (loggers).
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
