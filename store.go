package pgsecrets

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Store call pacing, per secret, for the whole process.
const (
	// minCallInterval spaces two store calls for the same secret and
	// stage. Recovery reads two stages (the configured one and the pending
	// one), so a secret sees at most four calls per second, whatever the
	// concurrency, while one recovery round can read both at once.
	minCallInterval = 500 * time.Millisecond
	// Failure backoff: the first retry after a failed call waits about
	// backoffBase, doubling per consecutive failure up to backoffMax,
	// jittered by ±20%, so a store that is down sees under 3 calls/s, and
	// the first call after it heals comes at most 1.92 s later (0.8 s on
	// average).
	backoffBase = 500 * time.Millisecond
	backoffMax  = 1600 * time.Millisecond
	// throttleBase and throttleMax replace them after a throttled call:
	// longer, but with spread at most 12 s, well within the default
	// secret_retry_window (30 s), so that a recovery waiting for a
	// throttled store still gets the new version inside its window
	// rather than giving up on a rotation (a fleet of 20 measured that
	// with a 30 s cap: one process failed queries for 18 s).
	throttleBase = 2 * time.Second
	throttleMax  = 8 * time.Second
	// storeTimeout bounds one store call, hedges included (fetches run
	// detached from callers, so the callers' deadlines do not).
	storeTimeout = 10 * time.Second
	// Hedging: a request that has not answered after the hedge delay (four
	// times the usual duration of a successful call, within hedgeMin and
	// hedgeMax) gets a second one beside it; with maxInFlight requests
	// out, the oldest is abandoned for a new one. A request the store lost
	// or holds therefore delays callers by at most the hedge delay once
	// the store answers again, not by storeTimeout.
	maxInFlight = 2
	hedgeMin    = 200 * time.Millisecond
	hedgeMax    = 800 * time.Millisecond
)

// store is the store-call side of one secret: pacing, failure backoff,
// hedging and single flight. It knows nothing of what the cache does with
// an answer: a successful call of the configured stage goes to fetched,
// and a lease fetched by a request that lost the race goes to discard.
type store struct {
	secretID string
	stage    string // the configured stage
	provider Provider
	// pendingStage is where the store keeps a rotation's credentials
	// before the database has them (see Staged); "" when it has none.
	pendingStage string

	life *lifetime
	sink sink
	sf   singleflight.Group
	// interval spaces two calls of one stage: minCallInterval, or less
	// for a provider that mints credentials itself (see callSpacer).
	interval time.Duration

	mu         sync.Mutex           // never held across I/O or while calling another part
	lastCall   map[string]time.Time // per stage
	calling    map[string]time.Time // per stage: when the call in progress started
	nextCall   time.Time            // earliest next call after failures
	failures   int
	outage     bool  // the store is failing; warned once
	lastErr    error // the last failed call's error (stage's, or any unavailable one) until a success
	refreshing bool
	inflight   int           // requests out, every stage together
	typical    time.Duration // smoothed duration of successful requests
}

// sink is what the store tells of its answers (the entry).
type sink interface {
	// fetched takes a successful call of the configured stage.
	fetched(*Credentials, policy)
	// discard ends credentials fetched by a request that lost the race.
	discard(*Credentials)
	// cached names the version the cache holds, for the outage warning.
	cached() (version string, ok bool)
}

func newStore(secretID, stage string, p Provider, life *lifetime, sink sink) *store {
	s := &store{secretID: secretID, stage: stage, provider: p, life: life, sink: sink,
		lastCall: map[string]time.Time{}, calling: map[string]time.Time{}}
	if st, ok := p.(Staged); ok && st.PendingStage() != stage {
		s.pendingStage = st.PendingStage()
	}
	s.interval = minCallInterval
	if sp, ok := p.(callSpacer); ok {
		s.interval = min(max(sp.callInterval(), 10*time.Millisecond), minCallInterval)
	}
	return s
}

// callSpacer is a core provider whose calls cost no store request (a token
// signed in the process), so that they need not be spaced as far apart:
// after a rejected token, recovery signs the next one at once.
type callSpacer interface{ callInterval() time.Duration }

// health is what a caller deciding whether to wait for the store needs to
// know about it.
type health struct {
	failures int       // consecutive failed calls
	nextCall time.Time // not before, after failures
	lastCall time.Time // of the configured stage
	interval time.Duration
	probing  bool // a call of the configured stage is out
	lastErr  error
	hedge    time.Duration // how long a healthy store takes, at most
}

func (s *store) health() health {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, probing := s.calling[s.stage]
	return health{failures: s.failures, nextCall: s.nextCall, lastCall: s.lastCall[s.stage], interval: s.interval, probing: probing,
		lastErr: s.lastErr, hedge: s.hedgeDelayLocked()}
}

// failingError is the error for a caller that finds the store failing and
// nothing usable cached: the store's last error, saying so.
func (s *store) failingError(h health, now time.Time) error {
	var se *SecretError
	if !errors.As(h.lastErr, &se) {
		return &SecretError{Kind: ErrStoreUnavailable, SecretID: s.secretID, Stage: s.stage}
	}
	cp := *se
	next := "is in progress"
	if !h.probing {
		next = "in " + h.nextCall.Sub(now).Round(time.Millisecond).String()
	}
	calls := "call"
	if h.failures > 1 {
		calls = fmt.Sprintf("%d calls in a row", h.failures)
	}
	detail := fmt.Sprintf("the last store %s failed and no usable credentials are cached; the next attempt %s", calls, next)
	if cp.Detail != "" {
		detail += "; " + cp.Detail
	}
	cp.Detail = detail
	return &cp
}

// hedgeDelayLocked is how long a store request may take before a second
// one is sent.
func (s *store) hedgeDelayLocked() time.Duration {
	if s.typical == 0 {
		return hedgeMax
	}
	return min(max(4*s.typical, hedgeMin), hedgeMax)
}

// anyGen makes fetch call the store whatever the cache holds.
var anyGen func() *Credentials

// refresh starts a background call of the configured stage unless one is
// running or the store is in backoff.
func (s *store) refresh(now time.Time, pol policy) {
	s.mu.Lock()
	if s.refreshing || now.Before(s.nextCall) {
		s.mu.Unlock()
		return
	}
	s.refreshing = true
	s.mu.Unlock()
	started := s.life.spawn(func() {
		_, _, _ = s.sf.Do(s.stage, func() (any, error) { return s.call(context.Background(), s.stage, pol, anyGen) })
		s.mu.Lock()
		s.refreshing = false
		s.mu.Unlock()
	})
	if !started {
		s.mu.Lock()
		s.refreshing = false
		s.mu.Unlock()
	}
}

type fetchResult struct {
	creds *Credentials
	err   error
}

// fetch makes one store call for stage, shared by every concurrent caller.
// The call runs detached from ctx (a caller giving up must not fail the
// others), bounded by storeTimeout and the entry's lifetime; a caller whose
// ctx ends returns at once, with an error that says what it waited for.
//
// A caller that found the cache empty or expired passes cached, which
// returns what another call stored meanwhile (then no call is made); anyGen
// (nil) always calls.
func (s *store) fetch(ctx context.Context, stage string, pol policy, cached func() *Credentials) (*Credentials, error) {
	start := time.Now()
	if ctx.Err() != nil {
		return nil, s.waitError(ctx, stage, start) // nobody would wait for the call
	}
	ch := make(chan fetchResult, 1)
	started := s.life.spawn(func() {
		v, err, _ := s.sf.Do(stage, func() (any, error) { return s.call(ctx, stage, pol, cached) })
		c, _ := v.(*Credentials)
		ch <- fetchResult{c, err}
	})
	if !started {
		return nil, &SecretError{Kind: ErrClosed, SecretID: s.secretID, Stage: stage}
	}
	select {
	case r := <-ch:
		return r.creds, r.err
	case <-ctx.Done():
		return nil, s.waitError(ctx, stage, start)
	}
}

// waitError is the error of a caller whose ctx ended before the store
// answered: what it waited for, and the store's last failure if any.
func (s *store) waitError(ctx context.Context, stage string, since time.Time) error {
	s.mu.Lock()
	cause := s.lastErr
	began, inCall := s.calling[stage]
	s.mu.Unlock()
	var detail string
	switch {
	case inCall:
		detail = fmt.Sprintf("gave up waiting for the secret store, which had not answered for %s", time.Since(began).Round(time.Millisecond))
	case time.Since(since) < time.Millisecond:
		detail = "the caller's context had ended before the secret store was called"
	default:
		detail = fmt.Sprintf("gave up waiting %s for a turn to call the secret store", time.Since(since).Round(time.Millisecond))
	}
	if cause != nil {
		detail += "; its last call failed"
	}
	se := waitError(ctx, s.secretID, nil, "", detail, cause)
	se.Stage = stage
	return se
}

// call paces and performs one store call and records its outcome. ctx is
// the caller's that started it, for its events only: the call itself
// belongs to the entry, and serves every caller that joins it.
func (s *store) call(ctx context.Context, stage string, pol policy, cached func() *Credentials) (*Credentials, error) {
	if cached != nil && stage == s.stage {
		if c := cached(); c != nil {
			return c, nil
		}
	}
	s.mu.Lock()
	wait := time.Until(later(s.nextCall, s.lastCall[stage].Add(s.interval)))
	s.mu.Unlock()
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-s.life.ctx.Done():
			t.Stop()
			return nil, &SecretError{Kind: ErrClosed, SecretID: s.secretID, Stage: stage}
		}
	}
	start := time.Now()
	s.mu.Lock()
	s.lastCall[stage] = start
	s.calling[stage] = start
	s.mu.Unlock()

	ectx := pol.obs.emit(context.WithoutCancel(ctx), Event{Kind: KindStoreCallStart, SecretID: s.secretID, Stage: stage})
	creds, took, sent, err := s.hedged(stage)
	end := Event{Kind: KindStoreCallEnd, SecretID: s.secretID, Stage: stage, Duration: took, Count: sent}

	if err != nil && s.life.ctx.Err() != nil {
		// Cut short by the last Close, whichever way the request ended:
		// this says nothing about the store.
		s.mu.Lock()
		delete(s.calling, stage)
		s.mu.Unlock()
		err = &SecretError{Kind: ErrClosed, SecretID: s.secretID, Stage: stage}
		end.Err, end.Outcome = err, ErrorClass(err)
		pol.obs.emit(ectx, end)
		return nil, err
	}
	if err != nil {
		return nil, s.failed(ectx, end, err, pol)
	}
	if creds.Stage == "" {
		creds.Stage = stage
	}
	end.Outcome, end.VersionID = OutcomeOK, creds.VersionID
	pol.obs.emit(ectx, end)

	s.mu.Lock()
	delete(s.calling, stage)
	outage, failures := s.outage, s.failures
	s.failures, s.nextCall, s.outage, s.lastErr = 0, time.Time{}, false, nil
	s.mu.Unlock()
	if outage {
		pol.obs.emit(ectx, Event{Kind: KindStoreRecovered, SecretID: s.secretID, Stage: stage, Count: failures})
	}
	if stage == s.stage {
		s.sink.fetched(creds, pol)
	}
	return creds, nil
}

// failed records a failed call and returns its error, a *SecretError.
func (s *store) failed(ctx context.Context, end Event, err error, pol policy) error {
	stage := end.Stage
	var se *SecretError
	if !errors.As(err, &se) {
		err = &SecretError{Kind: ErrStoreUnavailable, SecretID: s.secretID, Stage: stage, Err: err}
	}
	unavailable := errors.Is(err, ErrStoreUnavailable)
	s.mu.Lock()
	delete(s.calling, stage)
	if stage == s.stage || unavailable {
		s.lastErr = err
	}
	warn := false
	if unavailable {
		s.failures++
		if errors.Is(err, ErrThrottled) {
			// A quota shared by a fleet: back off longer, and spread
			// widely, so that processes throttled together do not come
			// back together.
			s.nextCall = time.Now().Add(spread(backoff(throttleBase, throttleMax, s.failures)))
		} else {
			s.nextCall = time.Now().Add(backoff(backoffBase, backoffMax, s.failures))
		}
		// One event per outage; each failed call is only a call.
		warn, s.outage = !s.outage, true
	}
	s.mu.Unlock()
	if warn {
		version, _ := s.sink.cached()
		pol.obs.emit(ctx, Event{Kind: KindStoreUnavailable, SecretID: s.secretID, Stage: stage, VersionID: version,
			Outcome: ErrorClass(err)})
	}
	end.Err, end.Outcome = err, ErrorClass(err)
	pol.obs.emit(ctx, end)
	return err
}

// hedged sends the call's requests (a second one beside a slow first)
// and returns the first answer, how long it took and how many requests
// were sent.
func (s *store) hedged(stage string) (*Credentials, time.Duration, int, error) {
	ctx, cancel := context.WithTimeout(s.life.ctx, storeTimeout)
	defer cancel()
	type request struct {
		cancel    context.CancelFunc
		abandoned bool
	}
	type answer struct {
		creds *Credentials
		err   error
		took  time.Duration
		req   *request
	}
	answers := make(chan answer)
	finished := make(chan struct{})
	var live []*request
	var wg sync.WaitGroup
	defer func() {
		close(finished)
		for _, r := range live {
			r.cancel()
		}
		wg.Wait()
	}()
	sent := 0
	send := func() bool {
		s.mu.Lock()
		if s.inflight >= maxInFlight {
			s.mu.Unlock()
			return false
		}
		s.inflight++
		s.mu.Unlock()
		rctx, rcancel := context.WithCancel(ctx)
		r := &request{cancel: rcancel}
		live = append(live, r)
		sent++
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			c, err := s.provider.Fetch(rctx, stage)
			took := time.Since(start)
			rcancel()
			s.mu.Lock()
			s.inflight--
			s.mu.Unlock()
			select {
			case answers <- answer{c, err, took, r}:
			case <-finished:
				if err == nil && c.expiring() {
					s.sink.discard(c) // a lease nobody will use
				}
			}
		}()
		return true
	}
	s.mu.Lock()
	delay := s.hedgeDelayLocked()
	s.mu.Unlock()
	want := !send() // another stage's requests hold every slot
	timer := time.NewTimer(delay)
	if want {
		timer.Reset(hedgeMin)
	}
	defer timer.Stop()
	for {
		select {
		case a := <-answers:
			for i, r := range live {
				if r == a.req {
					live = append(live[:i], live[i+1:]...)
					break
				}
			}
			if !a.req.abandoned || a.err == nil { // an abandoned request may still win
				if a.err == nil {
					s.mu.Lock()
					if s.typical == 0 {
						s.typical = a.took
					} else {
						s.typical = (3*s.typical + a.took) / 4
					}
					s.mu.Unlock()
				}
				return a.creds, a.took, sent, a.err
			}
			if want {
				if want = !send(); !want {
					timer.Reset(delay)
				}
			}
		case <-timer.C:
			if len(live) >= maxInFlight {
				// Abandon the oldest; its slot frees when it returns.
				live[0].abandoned = true
				live[0].cancel()
				live = live[1:]
			}
			want = !send()
			if want {
				timer.Reset(hedgeMin) // look for a free slot again soon
			} else {
				timer.Reset(delay)
			}
		case <-ctx.Done():
			if s.life.ctx.Err() != nil {
				return nil, 0, sent, &SecretError{Kind: ErrClosed, SecretID: s.secretID, Stage: stage}
			}
			return nil, storeTimeout, sent, &SecretError{Kind: ErrStoreUnavailable, SecretID: s.secretID, Stage: stage,
				Detail: fmt.Sprintf("the store did not answer within %s (%d requests)", storeTimeout, sent),
				Hint:   "check network access to the store's endpoint; cached credentials are used meanwhile where available"}
		}
	}
}

// spread jitters d over [d/2, 3d/2): wider than backoff's own ±20%, for
// retries that a whole fleet makes after the same event.
func spread(d time.Duration) time.Duration {
	return d/2 + time.Duration(rand.Int64N(int64(d)+1))
}

// backoff returns base·2^(n-1), capped at max, jittered by ±20%.
func backoff(base, max time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// kindName names the sentinel an error wraps, for logs.
func kindName(err error) string {
	for _, k := range []error{ErrSecretNotFound, ErrAccessDenied, ErrMalformedSecret, ErrThrottled, ErrStoreUnavailable,
		ErrAuthFailed, ErrCircuitOpen, ErrConnect, ErrClosed, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, k) {
			return k.Error()
		}
	}
	return "other"
}
