package pgsecrets

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"golang.org/x/sync/singleflight"
)

// target is one database reached with one secret, shared by every
// connector of the process with that secret and database, and the whole
// recovery policy for logins to it: the breaker, the login slots for
// credentials not yet proven, the memory of rejected credentials, and the
// recovery itself (recovery.go). Its callers give it a client (how to log
// in, where to count); Connect (connector.go) and the pgx pool (through
// adapter.go) are thin callers of run.
type target struct {
	e       *entry
	cb      *gobreaker.TwoStepCircuitBreaker[struct{}]
	openFor time.Duration
	sf      singleflight.Group // one recovery at a time

	lastState  atomic.Value                // string: the last SQLSTATE that failed a recovery
	lastReason atomic.Value                // string: the server's message that failed it
	openedAt   atomic.Int64                // unix nanoseconds: when the breaker last opened
	opens      atomic.Int64                // how often it opened
	failing    atomic.Pointer[failure]     // credentials known rejected, until their recovery ends
	rejected   atomic.Pointer[rejection]   // what the last failed recovery tried, until a login succeeds
	progress   atomic.Pointer[progress]    // how the running recovery is going, for callers giving up
	verified   atomic.Pointer[Credentials] // the last credentials that logged in
	unverified chan struct{}               // slots for logins with credentials not yet verified
	pace       *pacer                      // for a LoginPacer provider; nil otherwise
}

// client is one connector as a target sees it: its freshness policy (with
// its logger and counters), its retry window, its configuration checks and
// its login.
type client struct {
	policy
	window time.Duration
	warn   func(*Credentials)
	// dial logs in with creds: the engine's error as it is for a rejected
	// login, a *SecretError for anything else.
	dial func(ctx context.Context, creds *Credentials) (driver.Conn, error)
	// host and port name the database server in connect events.
	host, port string
}

// maxUnverifiedLogins bounds the concurrent logins with credentials that
// have not logged in yet (a cold start, a new version): if they are wrong,
// a burst of callers costs this many rejected logins, not one per caller.
const maxUnverifiedLogins = 4

// maxRecoveries bounds how often one call recovers when the credentials
// recovery found are rejected again at once (two rotations in a row).
const maxRecoveries = 3

func (e *entry) target(key string, openFor time.Duration) *target {
	if t, ok := e.targets.Load(key); ok {
		return t.(*target)
	}
	t := &target{e: e, openFor: openFor, unverified: make(chan struct{}, maxUnverifiedLogins)}
	if lp, ok := e.store.provider.(LoginPacer); ok {
		t.pace = newPacer(lp.LoginRate())
	}
	t.lastState.Store("")
	t.lastReason.Store("")
	secretID := e.store.secretID
	t.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        secretID,
		MaxRequests: 1,
		Timeout:     openFor,
		// A failure here is a whole recovery that found no credentials the
		// database accepts: already many attempts, so one is enough.
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= 1 },
		// Only fresh credentials being rejected counts. A caller giving up,
		// a store outage or an unreachable server says nothing about them.
		IsExcluded: func(err error) bool {
			return !errors.Is(err, ErrAuthFailed) || errors.Is(err, ErrStoreUnavailable) || isContextErr(err)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			switch to {
			case gobreaker.StateOpen:
				t.openedAt.Store(time.Now().UnixNano())
				if from == gobreaker.StateClosed {
					t.opens.Add(1)
				}
				e.leases.tell(Event{Kind: KindBreakerOpen, SQLState: t.lastState.Load().(string), Duration: openFor})
			case gobreaker.StateClosed:
				e.leases.tell(Event{Kind: KindBreakerClosed})
			}
		},
	})
	actual, _ := e.targets.LoadOrStore(key, t)
	return actual.(*target)
}

func (t *target) secretID() string { return t.e.store.secretID }

// run is the policy for one call that may log in once (Connect's login, or
// a pool call that makes a new connection): call takes its credentials
// from credentials(ctx, a); when the database rejects them, run recovers
// (one recovery for every caller) and calls again, at most maxRecoveries
// times. The first login of a run asks the breaker, which hears the run's
// outcome. call's other errors come back as they are.
func (t *target) run(ctx context.Context, cl client, call func(ctx context.Context, a *attempt) error) (err error) {
	start := time.Now()
	ctx = cl.obs.emit(ctx, Event{Kind: KindConnectStart, SecretID: t.secretID(), Host: cl.host, Port: cl.port})
	r := &runState{}
	recoveries := 0
	defer func() {
		if r.done != nil {
			r.done(err)
		}
		cl.obs.emit(ctx, Event{Kind: KindConnectEnd, SecretID: t.secretID(), Host: cl.host, Port: cl.port, Err: err,
			Outcome: ErrorClass(err), Duration: time.Since(start), Count: recoveries})
	}()
	for i, outlived := 0, 0; ; i++ {
		a := &attempt{runState: r}
		err := call(context.WithValue(ctx, attemptKey{}, a), a)
		if r.handoff != nil { // a recovered connection this caller cannot use
			_ = r.handoff.Close()
			r.handoff = nil
		}
		creds, release, known := a.seal()
		state, rejected := authFailure(err)
		if creds != nil && !known {
			a.ended(cl, t.secretID(), err, rejected, state)
		}
		var se *SecretError
		rejected = rejected && (creds != nil || !errors.As(err, &se))
		if release != nil {
			if rejected && !known {
				// Published before the slot is released, so that callers
				// waiting for it join the recovery instead of trying the
				// same credentials; the recovery clears it when it ends.
				t.failing.Store(&failure{creds: creds, sqlstate: state, err: err})
			}
			release()
		}
		if err == nil {
			if creds != nil {
				t.verified.Store(creds)
				t.rejected.Store(nil)
			}
			return nil
		}
		if errors.Is(err, errLeaseEndedInLogin) && outlived < maxRecoveries {
			// The connection was made, but its lease reached its end
			// meanwhile: log in again, with the lease that replaces it.
			outlived++
			i--
			continue
		}
		if !rejected {
			return err
		}
		if creds == nil {
			// A connection another call started failed for this one (a pool
			// hands out what it made for whoever waits).
			var gerr error
			if creds, gerr = t.e.get(ctx, cl.policy); gerr != nil {
				return gerr
			}
		}
		if i == maxRecoveries {
			return &SecretError{Kind: ErrAuthFailed, SecretID: t.secretID(), Stage: creds.Stage, VersionID: creds.VersionID,
				SQLState: state, Err: err,
				Detail: fmt.Sprintf("credentials were rejected right after recovery found them working, %d times in a row", i)}
		}
		if t.cb.State() == gobreaker.StateOpen {
			// A recovery for the same target failed while this caller was
			// logging in: its answer stands for the breaker's interval.
			return t.rejectOpen(ctx, cl)
		}
		recoveries++
		conn, err := t.recover(ctx, cl, failure{creds: creds, sqlstate: state, err: err})
		if err != nil {
			return err
		}
		r.handoff = conn
	}
}

// runState is what the attempts of one run share.
type runState struct {
	done    func(error) // the breaker's verdict, once a login was needed
	probe   bool        // this run is the half-open breaker's probe
	handoff driver.Conn // the login of the recovery this caller ran, for its next attempt
}

// attempt is one call under run: the credentials its login used (none if
// it needed no new connection), its login slot, and whether the
// credentials were known rejected before it logged in.
//
// A pool may log in for an attempt from a goroutine of its own, which goes
// on after the call has returned (pgxpool does when the caller's ctx ends
// during a login), so the attempt is locked, and sealed when its call
// returns: a login that asks for credentials after that counts as one made
// outside run, and one that got them just before gives its slot back.
type attempt struct {
	*runState
	mu      sync.Mutex
	sealed  bool
	creds   *Credentials
	release func()
	known   bool
	// The login's events: its context (the observers' for the start) and
	// when it started.
	loginCtx   context.Context
	loginStart time.Time
}

// started emits the start of the attempt's login with creds.
func (a *attempt) started(ctx context.Context, cl client, secretID string, creds *Credentials) {
	lctx := cl.obs.emit(ctx, Event{Kind: KindLoginStart, SecretID: secretID, Stage: creds.Stage, VersionID: creds.VersionID})
	a.mu.Lock()
	a.loginCtx, a.loginStart = lctx, time.Now()
	a.mu.Unlock()
}

// ended emits the end of the attempt's login; err is the call's.
func (a *attempt) ended(cl client, secretID string, err error, rejected bool, state string) {
	a.mu.Lock()
	ctx, start, creds := a.loginCtx, a.loginStart, a.creds
	a.mu.Unlock()
	if ctx == nil {
		return // the attempt's login never started (sealed before)
	}
	cl.obs.emit(ctx, loginEnd(secretID, creds, err, rejected, state, time.Since(start)))
}

// loginEnd is the event of a login with creds that ended with err.
func loginEnd(secretID string, creds *Credentials, err error, rejected bool, state string, took time.Duration) Event {
	e := Event{Kind: KindLoginEnd, SecretID: secretID, Stage: creds.Stage, VersionID: creds.VersionID, User: creds.Username,
		Outcome: OutcomeOK, SQLState: state, Duration: took}
	switch {
	case rejected:
		e.Outcome, e.Err = OutcomeRejected, err
	case err != nil:
		e.Outcome, e.Err = OutcomeFailed, err
		if e.SQLState == "" {
			e.SQLState = sqlState(err)
		}
	}
	return e
}

// seal ends the attempt and returns what its login used.
func (a *attempt) seal() (creds *Credentials, release func(), known bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sealed = true
	return a.creds, a.release, a.known
}

// loginCreds returns the credentials the attempt's login used, if any.
func (a *attempt) loginCreds() *Credentials {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.creds
}

// begin prepares a login of the attempt: the first login of a run asks
// the breaker. ok is false for a sealed attempt.
func (a *attempt) begin(ctx context.Context, t *target, cl client) (probe, ok bool, err error) {
	a.mu.Lock()
	if a.sealed {
		a.mu.Unlock()
		return false, false, nil
	}
	if a.done == nil {
		// In the half-open state only the breaker's probe gets past Allow;
		// it must try the credentials a failed recovery gave up on.
		probe := t.cb.State() == gobreaker.StateHalfOpen
		done, err := t.cb.Allow()
		if err != nil {
			a.mu.Unlock()
			return false, true, t.rejectOpen(ctx, cl) // observers run without the attempt's lock
		}
		a.done, a.probe = done, probe
	}
	probe = a.probe
	a.mu.Unlock()
	return probe, true, nil
}

// got records what the attempt's login uses; for a sealed attempt it gives
// the slot back at once.
func (a *attempt) got(creds *Credentials, release func(), known bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sealed {
		if release != nil {
			release()
		}
		return
	}
	if a.release != nil {
		// A second login of the same call (a pool that discarded the
		// connection the first one made, a lease about to end, and made
		// another): the first login is over, and its slot would otherwise
		// never be given back. Four such leaks starve every login of
		// unverified credentials for good.
		a.release()
	}
	a.creds, a.release, a.known = creds, release, known
}

// attemptKey carries the attempt in the ctx run gives call, for a login
// that happens inside an engine's own code (a pgx pool's BeforeConnect).
type attemptKey struct{}

func attemptOf(ctx context.Context) *attempt {
	a, _ := ctx.Value(attemptKey{}).(*attempt)
	return a
}

// take returns the connection the recovery this caller ran logged in
// with, if any; the caller owns it from then on.
func (a *attempt) take() driver.Conn {
	c := a.handoff
	a.handoff = nil
	return c
}

// credentials returns the credentials a login of attempt a (nil for a
// connection made outside run) uses now: from the cache, failing fast
// while the breaker is open; for credentials not yet proven, once one of
// the few login slots is free; and for credentials a running recovery
// knows rejected, their rejection (marked known), so that run joins that
// recovery instead of logging in again.
func (t *target) credentials(ctx context.Context, cl client, a *attempt) (*Credentials, error) {
	probe := false
	if a != nil {
		var ok bool
		var err error
		if probe, ok, err = a.begin(ctx, t, cl); err != nil {
			return nil, err
		} else if !ok {
			a = nil
		}
	}
	if a == nil && t.cb.State() == gobreaker.StateOpen {
		return nil, t.rejectOpen(ctx, cl)
	}
	creds, err := t.e.get(ctx, cl.policy)
	if err != nil {
		return nil, err
	}
	cl.warn(creds)
	if err := t.pace.wait(ctx, t.secretID()); err != nil {
		return nil, err
	}
	if a == nil {
		return creds, nil
	}
	release, known, err := t.loginSlot(ctx, creds, probe)
	if known != nil {
		a.got(known.creds, nil, true)
		return nil, known.err
	}
	if err != nil {
		return nil, err // ctx ended, or a failed recovery's answer (the breaker opens on it)
	}
	a.got(creds, release, false)
	a.started(ctx, cl, t.secretID(), creds)
	return creds, nil
}

// rejectOpen is the breaker's fast failure of a call, counted.
func (t *target) rejectOpen(ctx context.Context, cl client) error {
	err := t.openError()
	cl.obs.emit(ctx, Event{Kind: KindBreakerRejected, SecretID: t.secretID(), Err: err, Outcome: ErrorClass(err)})
	return err
}

// loginSlot waits, for credentials that have not logged in yet, for one of
// the maxUnverifiedLogins slots such logins share; release gives it back
// (once; it does nothing when no slot was needed). Instead of a slot it
// returns the failure a login with creds met meanwhile (known: join its
// recovery), or, unless probe, the error a failed recovery ended with for
// them, so that credentials known to be rejected are not tried again.
func (t *target) loginSlot(ctx context.Context, creds *Credentials, probe bool) (release func(), known *failure, err error) {
	slot := false
	release = func() {
		if slot {
			slot = false
			<-t.unverified
		}
	}
	none := func() {}
	for {
		if f := t.failing.Load(); f != nil && f.creds.same(creds) {
			release()
			return none, f, nil
		}
		if r := t.rejected.Load(); !probe && r.covers(creds) {
			release()
			return none, nil, r.err
		}
		if slot || t.verified.Load().same(creds) {
			return release, nil, nil
		}
		select {
		case t.unverified <- struct{}{}:
			slot = true // check again: the outcome may be known now
		case <-ctx.Done():
			return none, nil, waitError(ctx, t.secretID(), creds, "",
				fmt.Sprintf("gave up waiting for a login slot: %d callers were already trying these credentials, which have not logged in yet",
					maxUnverifiedLogins), nil)
		}
	}
}

// state names the breaker's state for Stats.
func (t *target) state() string {
	switch t.cb.State() {
	case gobreaker.StateOpen:
		return "open"
	case gobreaker.StateHalfOpen:
		return "half-open"
	}
	return "closed"
}

func (t *target) openError() error {
	state, _ := t.lastState.Load().(string)
	reason, _ := t.lastReason.Load().(string)
	next := t.openFor
	if at := t.openedAt.Load(); at != 0 {
		next = max(0, t.openFor-time.Since(time.Unix(0, at)))
	}
	detail := "the database rejected this secret's credentials"
	if reason != "" {
		detail += " (" + reason + ")"
	}
	detail += "; the next attempt is in " + next.Round(time.Millisecond).String()
	return &SecretError{Kind: ErrCircuitOpen, SecretID: t.secretID(), SQLState: state, Detail: detail,
		Hint: t.authHint(state) + "; pgsecrets retries by itself once the breaker's interval has passed"}
}

// AuthHinter is implemented by providers that know better than a
// password's checklist what to look at after the database refused their
// credentials (a token's permissions, the role's grant). AuthHint returns
// the hint of the error, given the server's SQLSTATE (28P01 or 28000); it
// must not contain a secret.
type AuthHinter interface{ AuthHint(sqlstate string) string }

// authHint says what to check after a rejected login with sqlstate.
func (t *target) authHint(sqlstate string) string {
	if h, ok := t.e.store.provider.(AuthHinter); ok {
		return h.AuthHint(sqlstate)
	}
	return authHint(sqlstate)
}

// authHint says what to check after a rejected login with sqlstate.
func authHint(sqlstate string) string {
	if sqlstate == sqlStateInvalidAuthSpec {
		return "the server refused the login before checking any password: check pg_hba.conf (user, database, client address, hostssl vs sslmode) and that the role exists and may log in"
	}
	return "check that the secret's password matches the database role's, and that the secret's username is the role's name"
}
