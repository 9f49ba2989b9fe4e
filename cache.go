package pgsecrets

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Store call pacing, per secret, for the whole process.
const (
	// minCallInterval spaces two store calls for the same secret and
	// stage. Recovery reads two stages (the configured one and
	// AWSPENDING), so a secret sees at most four calls per second, whatever
	// the concurrency, while one recovery round can read both at once.
	minCallInterval = 500 * time.Millisecond
	// Failure backoff: the first retry after a failed call waits about
	// backoffBase, doubling per consecutive failure up to backoffMax,
	// jittered by ±20%, so a store that is down sees under 3 calls/s, and
	// the first call after it heals comes at most 1.92 s later (0.8 s on
	// average).
	backoffBase = 500 * time.Millisecond
	backoffMax  = 1600 * time.Millisecond
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

// anyGen makes fetch call the store whatever the cache holds.
const anyGen = -1

// pendingRecheck is how often, while a validated AWSPENDING version is in
// use, the configured stage is read again (in the background, on use) to
// notice that the rotation finished.
const pendingRecheck = 5 * time.Second

// rotateGraceMin is the least delay after a store's announced rotation
// time (Credentials.RotatesAt) before the credentials are fetched again; the
// delay is jittered up to twice that.
const rotateGraceMin = 100 * time.Millisecond

// registry holds the cache entries shared by every connector of the
// process, keyed by secret, stage, region, endpoint and provider.
var registry = struct {
	sync.Mutex
	m map[string]*entry
}{m: map[string]*entry{}}

// entry caches the credentials of one secret and paces its store calls.
// Its goroutines (fetches, background refreshes, recoveries) run on ctx,
// which is cancelled when the last connector using the entry closes.
type entry struct {
	key      string
	secretID string
	stage    string
	provider Provider

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	refs   int // guarded by registry
	sf     singleflight.Group

	// mu comes before leaseBook.mu and the breakers' locks (see doc.go);
	// it is never held across I/O.
	mu          sync.Mutex
	closed      bool
	cur         *Credentials // last version fetched at stage
	fetchedAt   time.Time
	pending     *Credentials         // a validated AWSPENDING version, used until stage catches up
	lastCall    map[string]time.Time // per stage
	nextCall    time.Time            // earliest next call after failures
	failures    int
	refreshing  bool
	outage      bool                 // the store is failing; warned once
	lastErr     error                // the last failed call's error (stage's, or any unavailable one) until a success
	calling     map[string]time.Time // per stage: when the call in progress started
	inflight    int                  // store requests out, every stage together
	typical     time.Duration        // smoothed duration of successful requests
	gen         int64                // successful fetches of stage, for callers that saw a miss
	rotateGrace time.Duration        // how long after RotatesAt the next fetch is due

	breakers sync.Map // target → *breaker
	leases   *leaseBook
	// pendingStage is where the store keeps a rotation's credentials
	// before the database has them (see Staged); "" when it has no stages.
	pendingStage string
}

func acquireEntry(key, secretID, stage string, p Provider) *entry {
	registry.Lock()
	defer registry.Unlock()
	if e, ok := registry.m[key]; ok {
		e.refs++
		if c, ok := p.(io.Closer); ok && p != e.provider {
			_ = c.Close() // the entry's own provider serves this connector
		}
		return e
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &entry{key: key, secretID: secretID, stage: stage, provider: p, ctx: ctx, cancel: cancel, refs: 1,
		lastCall: map[string]time.Time{}, calling: map[string]time.Time{}}
	e.leases = newLeaseBook(e, p)
	if s, ok := p.(Staged); ok && s.PendingStage() != stage {
		e.pendingStage = s.PendingStage()
	}
	registry.m[key] = e
	return e
}

// release drops one reference; the last one stops the entry's goroutines
// and waits for them.
func (e *entry) release() {
	registry.Lock()
	e.refs--
	last := e.refs == 0
	if last {
		delete(registry.m, e.key)
	}
	registry.Unlock()
	if !last {
		return
	}
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.cancel()
	e.wg.Wait()
	e.leases.revokeAll()
	if c, ok := e.provider.(io.Closer); ok {
		_ = c.Close()
	}
}

// policy is one connector's view of freshness.
type policy struct {
	ttl      time.Duration
	maxStale time.Duration
	margin   time.Duration // secret_expiry_margin; 0 for the default
	log      *slog.Logger
	stats    *counters
}

// refreshMargin is how long before the TTL ends a background refresh
// starts: a fifth of the TTL, at most a minute.
func refreshMargin(ttl time.Duration) time.Duration {
	return min(ttl/5, time.Minute)
}

// activeLocked returns the credentials new connections should use.
func (e *entry) activeLocked() *Credentials {
	if e.pending != nil {
		return e.pending
	}
	return e.cur
}

// get returns credentials for a new connection: cached ones without I/O
// while fresh (refreshing in the background shortly before the TTL ends),
// stale ones while the store is unavailable or slow, else one shared fetch.
// With nothing usable cached and the store failing, it returns the store's
// last error at once; one caller per backoff interval probes the store.
func (e *entry) get(ctx context.Context, pol policy) (*Credentials, error) {
	now := time.Now()
	e.mu.Lock()
	cred := e.activeLocked()
	gen := e.gen
	var age time.Duration
	if cred.expiring() {
		// A lease is fresh until its end, less the margin; secret_ttl does
		// not apply, and nothing past that is ever served stale.
		ok, refresh := e.leases.usable(cred, now)
		if ok {
			if refresh {
				e.refreshLocked(now, pol)
			}
			e.mu.Unlock()
			pol.stats.cacheHits.Add(1)
			return cred, nil
		}
		cred = nil
	}
	if cred != nil {
		age = now.Sub(e.fetchedAt)
		ttl := pol.ttl
		if !cred.RotatesAt.IsZero() {
			// The store replaces these credentials at RotatesAt: fetch again
			// just after it (jittered), not one TTL later.
			if at := cred.RotatesAt.Add(e.rotateGrace).Sub(e.fetchedAt); at < ttl {
				ttl = max(at, 0)
			}
		}
		if age < ttl {
			// While a pending version is in use, look for the configured
			// stage catching up (AWS's finishSecret) every few seconds.
			if age >= ttl-refreshMargin(pol.ttl) || (e.pending != nil && age >= pendingRecheck) {
				e.refreshLocked(now, pol)
			}
			e.mu.Unlock()
			pol.stats.cacheHits.Add(1)
			return cred, nil
		}
		if ttl < pol.ttl {
			age += pol.ttl - ttl // measure staleness from the rotation time
		}
		if age < pol.ttl+pol.maxStale && e.failures > 0 {
			// The store is known to be failing: serve the cached
			// credential and keep retrying in the background.
			e.refreshLocked(now, pol)
			e.mu.Unlock()
			return e.serveStale(cred, age, pol), nil
		}
	}
	usable := cred != nil && age < pol.ttl+pol.maxStale
	if !usable && e.lastErr != nil {
		// Waiting for the next slot would only delay the same answer.
		_, probing := e.calling[e.stage]
		switch {
		case e.failures > 0 && (probing || now.Before(e.nextCall)):
			err := e.failingErrorLocked(now, probing)
			e.mu.Unlock()
			return nil, err
		case e.failures == 0 && (probing || now.Sub(e.lastCall[e.stage]) < minCallInterval):
			err := e.lastErr // not found, denied, malformed: asked moments ago
			e.mu.Unlock()
			return nil, err
		}
	}
	hedge := e.hedgeDelayLocked()
	e.mu.Unlock()

	pol.stats.storeWaits.Add(1)
	fctx := ctx
	if usable {
		// Past the TTL with a store not known to fail: wait for the fresh
		// version only as long as a healthy store takes.
		var cancel context.CancelFunc
		fctx, cancel = context.WithTimeout(ctx, hedge)
		defer cancel()
	}
	_, err := e.fetch(fctx, e.stage, pol, gen)
	if err == nil {
		e.mu.Lock()
		cred = e.activeLocked()
		e.mu.Unlock()
		return cred, nil
	}
	if usable && (errors.Is(err, ErrStoreUnavailable) || (ctx.Err() == nil && isContextErr(err))) {
		return e.serveStale(cred, age, pol), nil
	}
	return nil, err
}

// failingErrorLocked is the error for a caller that finds the store
// failing and nothing usable cached: the store's last error, saying so.
func (e *entry) failingErrorLocked(now time.Time, probing bool) error {
	var se *SecretError
	if !errors.As(e.lastErr, &se) {
		return &SecretError{Kind: ErrStoreUnavailable, SecretID: e.secretID, Stage: e.stage}
	}
	cp := *se
	next := "is in progress"
	if !probing {
		next = "in " + e.nextCall.Sub(now).Round(time.Millisecond).String()
	}
	calls := "call"
	if e.failures > 1 {
		calls = fmt.Sprintf("%d calls in a row", e.failures)
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
func (e *entry) hedgeDelayLocked() time.Duration {
	if e.typical == 0 {
		return hedgeMax
	}
	return min(max(4*e.typical, hedgeMin), hedgeMax)
}

// serveStale records that cred is used past its TTL.
func (e *entry) serveStale(cred *Credentials, age time.Duration, pol policy) *Credentials {
	pol.log.Debug(EventServingStale, "secret_id", e.secretID, "version_id", cred.VersionID, "stage", cred.Stage,
		"age", age.Round(time.Millisecond))
	pol.stats.staleServes.Add(1)
	return cred
}

// refreshLocked starts a background refresh of the current stage unless
// one is running or the store is in backoff.
func (e *entry) refreshLocked(now time.Time, pol policy) {
	if e.refreshing || e.closed || now.Before(e.nextCall) {
		return
	}
	e.refreshing = e.spawnLocked(func() {
		_, _, _ = e.sf.Do(e.stage, func() (any, error) { return e.call(e.stage, pol, anyGen) })
		e.mu.Lock()
		e.refreshing = false
		e.mu.Unlock()
	})
}

// spawn runs fn in a goroutine that release waits for, unless the entry is
// closed (then it reports false and fn does not run).
func (e *entry) spawn(fn func()) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.spawnLocked(fn)
}

// spawnLocked is spawn with e.mu held: adding to the wait group under the
// lock that release takes to set closed keeps Add from racing with Wait.
func (e *entry) spawnLocked(fn func()) bool {
	if e.closed {
		return false
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		fn()
	}()
	return true
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
// A caller that found the cache empty or expired passes the generation it
// saw: if another fetch completed in between, that result is used and no
// call is made. anyGen always calls.
func (e *entry) fetch(ctx context.Context, stage string, pol policy, gen int64) (*Credentials, error) {
	start := time.Now()
	if ctx.Err() != nil {
		return nil, e.storeWaitError(ctx, stage, start) // nobody would wait for the call
	}
	ch := make(chan fetchResult, 1)
	started := e.spawn(func() {
		v, err, _ := e.sf.Do(stage, func() (any, error) { return e.call(stage, pol, gen) })
		c, _ := v.(*Credentials)
		ch <- fetchResult{c, err}
	})
	if !started {
		return nil, &SecretError{Kind: ErrClosed, SecretID: e.secretID, Stage: stage}
	}
	select {
	case r := <-ch:
		return r.creds, r.err
	case <-ctx.Done():
		return nil, e.storeWaitError(ctx, stage, start)
	}
}

// storeWaitError is the error of a caller whose ctx ended before the store
// answered: what it waited for, and the store's last failure if any.
func (e *entry) storeWaitError(ctx context.Context, stage string, since time.Time) error {
	e.mu.Lock()
	cause := e.lastErr
	began, inCall := e.calling[stage]
	e.mu.Unlock()
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
	se := waitError(ctx, e.secretID, nil, "", detail, cause)
	se.Stage = stage
	return se
}

// call paces and performs one store call and records its outcome.
func (e *entry) call(stage string, pol policy, gen int64) (*Credentials, error) {
	e.mu.Lock()
	if gen != anyGen && stage == e.stage && e.gen != gen {
		cur := e.cur
		e.mu.Unlock()
		return cur, nil
	}
	wait := time.Until(later(e.nextCall, e.lastCall[stage].Add(minCallInterval)))
	e.mu.Unlock()
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-e.ctx.Done():
			t.Stop()
			return nil, &SecretError{Kind: ErrClosed, SecretID: e.secretID, Stage: stage}
		}
	}
	start := time.Now()
	e.mu.Lock()
	e.lastCall[stage] = start
	e.calling[stage] = start
	e.mu.Unlock()

	creds, took, err := e.hedged(stage, pol)

	if err != nil && e.ctx.Err() != nil {
		// Cut short by the last Close, whichever way the request ended:
		// this says nothing about the store.
		e.mu.Lock()
		delete(e.calling, stage)
		e.mu.Unlock()
		return nil, &SecretError{Kind: ErrClosed, SecretID: e.secretID, Stage: stage}
	}
	if err != nil {
		var se *SecretError
		if !errors.As(err, &se) {
			err = &SecretError{Kind: ErrStoreUnavailable, SecretID: e.secretID, Stage: stage, Err: err}
		}
		lvl := slog.LevelWarn
		e.mu.Lock()
		delete(e.calling, stage)
		if stage == e.stage || errors.Is(err, ErrStoreUnavailable) {
			e.lastErr = err
		}
		if errors.Is(err, ErrStoreUnavailable) {
			e.failures++
			e.nextCall = time.Now().Add(backoff(backoffBase, backoffMax, e.failures))
			// One warning per outage; each failed call is a debug line.
			if !e.outage {
				e.outage = true
				var version string
				if e.cur != nil {
					version = e.cur.VersionID
				}
				pol.log.Warn(EventStoreUnavailable, "secret_id", e.secretID, "stage", stage,
					"cached_version_id", version, "serving_cached", e.cur != nil)
			}
			lvl = slog.LevelDebug
		}
		e.mu.Unlock()
		if stage == e.pendingStage && errors.Is(err, ErrSecretNotFound) {
			lvl = slog.LevelDebug // no rotation in progress: the usual case
		}
		pol.log.Log(context.Background(), lvl, EventFetchFailed, "secret_id", e.secretID, "stage", stage,
			"error_kind", kindName(err), "duration", took.Round(time.Microsecond))
		return nil, err
	}
	if creds.Stage == "" {
		creds.Stage = stage
	}
	pol.log.Debug(EventFetched, "secret_id", e.secretID, "stage", stage, "version_id", creds.VersionID,
		"duration", took.Round(time.Microsecond))

	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.calling, stage)
	if e.outage {
		pol.log.Info(EventStoreRecovered, "secret_id", e.secretID, "failed_calls", e.failures)
	}
	e.failures, e.nextCall, e.outage, e.lastErr = 0, time.Time{}, false, nil
	if stage != e.stage {
		return creds, nil
	}
	prev := e.cur
	e.cur, e.fetchedAt = creds, time.Now()
	e.gen++
	e.rotateGrace = rotateGraceMin + rand.N(rotateGraceMin)
	if creds.expiring() {
		e.leases.adopt(creds, pol)
	}
	if prev != nil && prev.VersionID != creds.VersionID {
		pol.log.Info(EventRotationPickedUp, "secret_id", e.secretID, "stage", stage,
			"version_id", creds.VersionID, "previous_version_id", prev.VersionID)
	}
	if e.pending != nil && (creds.VersionID == e.pending.VersionID || creds.CreatedAt.After(e.pending.CreatedAt)) {
		// The stage caught up with the pending version, or moved past it:
		// the pending version is no longer needed. (A stage still behind
		// it, even if it changed, is older than what the database has.)
		e.pending = nil
	}
	return creds, nil
}

// hedged performs one store call for stage as one or more requests (see
// hedgeMin): the first answer, success or error, is the call's. It returns
// how long that answer took.
func (e *entry) hedged(stage string, pol policy) (*Credentials, time.Duration, error) {
	ctx, cancel := context.WithTimeout(e.ctx, storeTimeout)
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
		e.mu.Lock()
		if e.inflight >= maxInFlight {
			e.mu.Unlock()
			return false
		}
		e.inflight++
		e.mu.Unlock()
		rctx, rcancel := context.WithCancel(ctx)
		r := &request{cancel: rcancel}
		live = append(live, r)
		sent++
		pol.stats.storeCalls.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			c, err := e.provider.Fetch(rctx, stage)
			took := time.Since(start)
			rcancel()
			e.mu.Lock()
			e.inflight--
			e.mu.Unlock()
			select {
			case answers <- answer{c, err, took, r}:
			case <-finished:
				if err == nil && c.expiring() {
					e.leases.discard(c) // a lease nobody will use
				}
			}
		}()
		return true
	}
	e.mu.Lock()
	delay := e.hedgeDelayLocked()
	e.mu.Unlock()
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
					e.mu.Lock()
					if e.typical == 0 {
						e.typical = a.took
					} else {
						e.typical = (3*e.typical + a.took) / 4
					}
					e.mu.Unlock()
				}
				return a.creds, a.took, a.err
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
			if e.ctx.Err() != nil {
				return nil, 0, &SecretError{Kind: ErrClosed, SecretID: e.secretID, Stage: stage}
			}
			return nil, storeTimeout, &SecretError{Kind: ErrStoreUnavailable, SecretID: e.secretID, Stage: stage,
				Detail: fmt.Sprintf("the store did not answer within %s (%d requests)", storeTimeout, sent),
				Hint:   "check network access to the store's endpoint; cached credentials are used meanwhile where available"}
		}
	}
}

// setPending makes a validated AWSPENDING version the one new connections
// use until the current stage catches up.
func (e *entry) setPending(c *Credentials) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cur != nil && e.cur.VersionID == c.VersionID {
		return
	}
	e.pending = c
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
	for _, k := range []error{ErrSecretNotFound, ErrAccessDenied, ErrMalformedSecret, ErrStoreUnavailable,
		ErrAuthFailed, ErrCircuitOpen, ErrConnect, ErrClosed, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, k) {
			return k.Error()
		}
	}
	return "other"
}
