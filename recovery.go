package pgsecrets

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"golang.org/x/sync/singleflight"
)

// Recovery pacing: the first pause after a round that found nothing new,
// doubling up to recoveryStepMax, jittered. Store calls are also spaced by
// minCallInterval, so a round costs at most two store calls and two logins.
const (
	recoveryStepBase = 100 * time.Millisecond
	recoveryStepMax  = 2 * time.Second
)

// guard protects one database target reached with one secret: a circuit
// breaker around Connect and a single recovery at a time, both shared by
// every connector of the process with that secret and target.
type guard struct {
	cb         *gobreaker.CircuitBreaker[driver.Conn]
	sf         singleflight.Group
	lastState  atomic.Value                // string: the last SQLSTATE that failed a recovery
	lastReason atomic.Value                // string: the server's message that failed it
	openedAt   atomic.Int64                // unix nanoseconds: when the breaker last opened
	failing    atomic.Pointer[failure]     // credentials known rejected, until their recovery ends
	rejected   atomic.Pointer[rejection]   // what the last failed recovery tried, until a login succeeds
	progress   atomic.Pointer[progress]    // how the running recovery is going, for callers giving up
	verified   atomic.Pointer[Credentials] // the last credentials that logged in
	unverified chan struct{}               // slots for logins with credentials not yet verified
	opens      atomic.Int64
	openFor    time.Duration
}

func (e *entry) guardFor(target string, openFor time.Duration, log *slog.Logger) *guard {
	if g, ok := e.breakers.Load(target); ok {
		return g.(*guard)
	}
	g := &guard{openFor: openFor, unverified: make(chan struct{}, maxUnverifiedLogins)}
	g.lastState.Store("")
	g.lastReason.Store("")
	secretID := e.secretID
	g.cb = gobreaker.NewCircuitBreaker[driver.Conn](gobreaker.Settings{
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
				g.openedAt.Store(time.Now().UnixNano())
				if from == gobreaker.StateClosed {
					g.opens.Add(1)
				}
				log.Warn(EventBreakerOpen, "secret_id", secretID, "sqlstate", g.lastState.Load(),
					"open_for", openFor)
			case gobreaker.StateClosed:
				log.Info(EventBreakerClosed, "secret_id", secretID)
			}
		},
	})
	actual, _ := e.breakers.LoadOrStore(target, g)
	return actual.(*guard)
}

func (g *guard) openError(secretID string) error {
	state, _ := g.lastState.Load().(string)
	reason, _ := g.lastReason.Load().(string)
	next := g.openFor
	if at := g.openedAt.Load(); at != 0 {
		next = max(0, g.openFor-time.Since(time.Unix(0, at)))
	}
	detail := "the database rejected this secret's credentials"
	if reason != "" {
		detail += " (" + reason + ")"
	}
	detail += "; the next attempt is in " + next.Round(time.Millisecond).String()
	return &SecretError{Kind: ErrCircuitOpen, SecretID: secretID, SQLState: state, Detail: detail,
		Hint: authHint(state) + "; pgsecrets retries by itself once the breaker's interval has passed"}
}

// authHint says what to check after a rejected login with sqlstate.
func authHint(sqlstate string) string {
	if sqlstate == sqlStateInvalidAuthSpec {
		return "the server refused the login before checking any password: check pg_hba.conf (user, database, client address, hostssl vs sslmode) and that the role exists and may log in"
	}
	return "check that the secret's password matches the database role's, and that the secret's username is the role's name"
}

// progress is how a running recovery is going: the last credentials it saw
// rejected and the store's last failure.
type progress struct {
	f        failure
	storeErr error
	started  time.Time
}

// rejection is the outcome of a recovery that found nothing the database
// accepts: callers arriving between its end and the breaker opening get its
// error instead of trying the same credentials again.
type rejection struct {
	tried []*Credentials
	err   error
}

func (r *rejection) covers(c *Credentials) bool {
	if r == nil {
		return false
	}
	for _, t := range r.tried {
		if t.same(c) {
			return true
		}
	}
	return false
}

// failure is a login the database rejected.
type failure struct {
	creds    *Credentials
	sqlstate string
	err      error
}

// recover finds credentials the database accepts after failed was
// rejected, within the connector's retry window. One recovery runs at a
// time per target and every concurrent caller shares its result; a caller
// whose ctx ends returns ctx.Err() at once.
//
// Each round: (1) the cached credentials, if another caller already moved
// on from failed; (2) the configured stage fetched again (skipped if it was
// read less than minCallInterval ago); (3) AWSPENDING, which AWS's rotation
// writes before changing the database. Credentials that already failed are
// never tried twice, so a wrong secret costs no extra logins, only store
// calls.
func (c *Connector) recover(ctx context.Context, f failure) (*Credentials, driver.Conn, error) {
	// Credentials that never logged in to this target are a configuration
	// problem, not a rotation in progress: one round, then the error. So is
	// the breaker's probe.
	oneRound := c.guard.cb.State() == gobreaker.StateHalfOpen || c.guard.verified.Load() == nil
	// Unbuffered: the result, with the connection recovery logged in with,
	// is handed over only to a caller still waiting; otherwise the
	// connection is closed here.
	ch := make(chan recovered)
	gone := make(chan struct{})
	started := c.entry.spawn(func() {
		ran := false
		v, err, _ := c.guard.sf.Do("recover", func() (any, error) {
			ran = true
			c.guard.failing.Store(&f)
			c.guard.progress.Store(&progress{f: f, started: time.Now()})
			defer c.guard.progress.Store(nil)
			defer c.guard.failing.Store(nil)
			r, err := c.recoverRounds(f, oneRound)
			// Before failing is cleared: no caller may slip between the two.
			switch {
			case errors.Is(err, ErrAuthFailed):
				c.guard.rejected.Store(&rejection{tried: r.tried, err: err})
			case err == nil:
				c.guard.rejected.Store(nil)
			}
			return r, err
		})
		r, _ := v.(recovered)
		r.err = err
		if !ran {
			r.conn = nil // it belongs to the caller whose recovery made it
		}
		select {
		case ch <- r:
		case <-gone:
			if r.conn != nil {
				_ = r.conn.Close()
			}
		}
	})
	if !started {
		return nil, nil, c.closedError()
	}
	select {
	case r := <-ch:
		return r.creds, r.conn, r.err
	case <-ctx.Done():
		close(gone)
		return nil, nil, c.recoveryWaitError(ctx, f)
	}
}

// recoveryWaitError is the error of a caller that gave up waiting for a
// recovery: what had been rejected, and what the recovery had met so far.
func (c *Connector) recoveryWaitError(ctx context.Context, f failure) error {
	p := &progress{f: f, started: time.Now()}
	if cur := c.guard.progress.Load(); cur != nil {
		p = cur
	}
	detail := fmt.Sprintf("gave up waiting for the recovery (running for %s) after the database rejected user %q",
		time.Since(p.started).Round(time.Millisecond), p.f.creds.Username)
	cause := p.f.err
	if p.storeErr != nil {
		detail += "; the secret store is failing too"
		cause = errors.Join(cause, p.storeErr)
	}
	return waitError(ctx, c.cfg.SecretID, p.f.creds, p.f.sqlstate, detail, cause)
}

// recovered is the outcome of a recovery: the credentials found, and the
// connection they logged in with (for the caller that started it).
type recovered struct {
	creds *Credentials
	conn  driver.Conn
	err   error
	tried []*Credentials // on failure: every credential the database rejected
}

func (c *Connector) recoverRounds(f failure, oneRound bool) (recovered, error) {
	e := c.entry
	started := time.Now()
	report := func(f failure, storeErr error) {
		c.guard.progress.Store(&progress{f: f, storeErr: storeErr, started: started})
	}
	failed, state, loginErr := f.creds, f.sqlstate, f.err
	c.log.Info(EventAuthFailed, "secret_id", c.cfg.SecretID, "stage", failed.Stage, "version_id", failed.VersionID,
		"user", failed.Username, "sqlstate", state)
	window := c.cfg.RetryWindow
	ctx, cancel := context.WithTimeout(e.ctx, window)
	defer cancel()
	start := time.Now()
	tried := []*Credentials{failed}
	var storeErr error // the store's last failure, if it kept recovery from fresh credentials
	seen := func(cr *Credentials) bool {
		for _, t := range tried {
			if t.same(cr) {
				return true
			}
		}
		return false
	}
	// try logs in with cr; done reports whether recovery is over (with
	// success or a non-authentication error).
	var probe driver.Conn // the login that proved the credentials
	try := func(cr *Credentials) (done bool, err error) {
		conn, err := c.dial(ctx, cr)
		if err == nil {
			probe = conn
			c.guard.verified.Store(cr)
			return true, nil
		}
		if st, ok := authFailure(err); ok {
			tried = append(tried, cr)
			state, loginErr = st, err
			report(failure{creds: cr, sqlstate: st, err: err}, storeErr)
			return false, nil
		}
		return true, err
	}
	found := func(cr *Credentials) recovered {
		c.log.Info(EventRecovered, "secret_id", c.cfg.SecretID, "stage", cr.Stage, "version_id", cr.VersionID,
			"user", cr.Username, "took", time.Since(start).Round(time.Millisecond))
		return recovered{creds: cr, conn: probe}
	}

	for round := 1; ; round++ {
		// Another caller may have refreshed the cache already.
		e.mu.Lock()
		cached := e.activeLocked()
		e.mu.Unlock()
		if cached != nil && !seen(cached) {
			if done, err := try(cached); done {
				if err != nil {
					return recovered{}, err
				}
				return found(cached), nil
			}
		}

		// The configured stage again, unless it was read moments ago (the
		// answer would be the same): the database may have been changed
		// first and the store updated since.
		e.mu.Lock()
		justRead := time.Since(e.lastCall[e.stage]) < minCallInterval
		e.mu.Unlock()
		if !justRead {
			cur, err := e.fetch(ctx, e.stage, c.pol, anyGen)
			if errors.Is(err, ErrStoreUnavailable) {
				storeErr = err
				report(failure{creds: tried[len(tried)-1], sqlstate: state, err: loginErr}, storeErr)
			}
			switch {
			case err == nil && !seen(cur):
				if done, err := try(cur); done {
					if err != nil {
						return recovered{}, err
					}
					return found(cur), nil
				}
			case err != nil && !errors.Is(err, ErrStoreUnavailable) && !isContextErr(err):
				return recovered{}, err // not found, denied, malformed: no use waiting
			}
		}

		// AWSPENDING: AWS's rotation writes it before changing the
		// database, and moves the configured stage to it only at the end.
		if e.pendingStage != "" {
			pend, err := e.fetch(ctx, e.pendingStage, c.pol, anyGen)
			if err == nil && !seen(pend) {
				done, derr := try(pend)
				if done && derr == nil {
					e.setPending(pend)
					c.log.Info(EventUsingPending, "secret_id", c.cfg.SecretID, "version_id", pend.VersionID,
						"user", pend.Username)
					return found(pend), nil
				}
				if done {
					return recovered{}, derr
				}
			}
		}

		if oneRound || ctx.Err() != nil {
			break
		}
		pause := backoff(recoveryStepBase, recoveryStepMax, round)
		if dl, ok := ctx.Deadline(); ok && time.Now().Add(pause).After(dl) {
			break
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		if ctx.Err() != nil {
			break
		}
	}

	c.guard.lastState.Store(state)
	if loginErr != nil {
		c.guard.lastReason.Store(loginErr.Error())
	}
	cause := loginErr
	if len(tried) == 1 && storeErr != nil {
		// No fresh credentials were rejected: the store kept recovery from
		// finding any. Say so, and keep the breaker out of it.
		cause = errors.Join(loginErr, storeErr)
	}
	c.log.Warn(EventRecoveryFailed, "secret_id", c.cfg.SecretID, "stage", failed.Stage, "version_id", failed.VersionID,
		"user", failed.Username, "sqlstate", state, "took", time.Since(start).Round(time.Millisecond),
		"credentials_tried", len(tried))
	read := "fetching the secret again"
	if e.pendingStage != "" {
		read = fmt.Sprintf("fetching the secret again (%s and %s)", e.stage, e.pendingStage)
	}
	detail := fmt.Sprintf("the database rejected user %q, and %s for %s found no credentials it accepts",
		failed.Username, read, window)
	if oneRound {
		detail = fmt.Sprintf("the database rejected user %q, and %s found no other credentials it accepts",
			failed.Username, read)
		if c.guard.verified.Load() == nil {
			detail += "; nothing from this secret has logged in to this database yet, so this is not a rotation in progress and pgsecrets does not wait for one"
		}
	}
	return recovered{tried: tried}, &SecretError{Kind: ErrAuthFailed, SecretID: c.cfg.SecretID, Stage: failed.Stage,
		VersionID: failed.VersionID, SQLState: state, Err: cause, Detail: detail, Hint: authHint(state)}
}
