package pgsecrets

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/sony/gobreaker/v2"
)

// Recovery pacing: the first pause after a round that found nothing new,
// doubling up to recoveryStepMax, jittered. Store calls are also spaced by
// minCallInterval, so a round costs at most two store calls and two logins.
const (
	recoveryStepBase = 100 * time.Millisecond
	recoveryStepMax  = 2 * time.Second
)

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

// recover finds credentials the database accepts after f was rejected,
// within the caller's retry window, logging in with cl.dial. One recovery
// runs at a time per target and every concurrent caller shares its
// outcome; the caller that ran it also gets the connection that proved the
// credentials. A caller whose ctx ends returns at once, with an error that
// says what it waited for.
//
// Each round: (1) the cached credentials, if another caller already moved
// on from failed; (2) the configured stage fetched again (skipped if it was
// read less than minCallInterval ago); (3) the provider's pending stage, if
// it is Staged (AWSPENDING, which AWS's rotation writes before changing the
// database). Credentials that already failed are never tried twice, so a
// wrong secret costs no extra logins, only store calls.
func (t *target) recover(ctx context.Context, cl client, f failure) (driver.Conn, error) {
	// Credentials that never logged in to this target are a configuration
	// problem, not a rotation in progress: one round, then the error. So is
	// the breaker's probe.
	oneRound := t.cb.State() == gobreaker.StateHalfOpen || t.verified.Load() == nil
	// Unbuffered: the result, with the connection recovery logged in with,
	// is handed over only to a caller still waiting; otherwise the
	// connection is closed here.
	ch := make(chan recovered)
	gone := make(chan struct{})
	started := t.e.life.spawn(func() {
		ran := false
		v, err, _ := t.sf.Do("recover", func() (any, error) {
			ran = true
			t.failing.Store(&f)
			t.progress.Store(&progress{f: f, started: time.Now()})
			defer t.progress.Store(nil)
			defer t.failing.Store(nil)
			r, err := t.rounds(cl, f, oneRound)
			// Before failing is cleared: no caller may slip between the two.
			switch {
			case errors.Is(err, ErrAuthFailed):
				t.rejected.Store(&rejection{tried: r.tried, err: err})
			case err == nil:
				t.rejected.Store(nil)
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
		return nil, &SecretError{Kind: ErrClosed, SecretID: t.secretID()}
	}
	select {
	case r := <-ch:
		return r.conn, r.err
	case <-ctx.Done():
		close(gone)
		return nil, t.waitError(ctx, f)
	}
}

// recoveryWaitError is the error of a caller that gave up waiting for a
// recovery: what had been rejected, and what the recovery had met so far.
func (t *target) waitError(ctx context.Context, f failure) error {
	p := &progress{f: f, started: time.Now()}
	if cur := t.progress.Load(); cur != nil {
		p = cur
	}
	detail := fmt.Sprintf("gave up waiting for the recovery (running for %s) after the database rejected user %q",
		time.Since(p.started).Round(time.Millisecond), p.f.creds.Username)
	cause := p.f.err
	if p.storeErr != nil {
		detail += "; the secret store is failing too"
		cause = errors.Join(cause, p.storeErr)
	}
	return waitError(ctx, t.secretID(), p.f.creds, p.f.sqlstate, detail, cause)
}

// recovered is the outcome of a recovery: the credentials found, and the
// connection they logged in with (for the caller that started it).
type recovered struct {
	creds *Credentials
	conn  driver.Conn
	err   error
	tried []*Credentials // on failure: every credential the database rejected
}

func (t *target) rounds(cl client, f failure, oneRound bool) (recovered, error) {
	e, secretID := t.e, t.secretID()
	started := time.Now()
	report := func(f failure, storeErr error) {
		t.progress.Store(&progress{f: f, storeErr: storeErr, started: started})
	}
	failed, state, loginErr := f.creds, f.sqlstate, f.err
	cl.log.Info(EventAuthFailed, "secret_id", secretID, "stage", failed.Stage, "version_id", failed.VersionID,
		"user", failed.Username, "sqlstate", state)
	window := cl.window
	ctx, cancel := context.WithTimeout(e.life.ctx, window)
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
		conn, err := cl.dial(ctx, cr)
		if err == nil {
			probe = conn
			t.verified.Store(cr)
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
		cl.log.Info(EventRecovered, "secret_id", secretID, "stage", cr.Stage, "version_id", cr.VersionID,
			"user", cr.Username, "took", time.Since(start).Round(time.Millisecond))
		return recovered{creds: cr, conn: probe}
	}

	for round := 1; ; round++ {
		// Another caller may have refreshed the cache already.
		if cached := e.cache.active(); cached != nil && !seen(cached) {
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
		if justRead := time.Since(e.store.health().lastCall) < minCallInterval; !justRead {
			cur, err := e.store.fetch(ctx, e.store.stage, cl.policy, anyGen)
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
		if e.store.pendingStage != "" {
			pend, err := e.store.fetch(ctx, e.store.pendingStage, cl.policy, anyGen)
			if err == nil && !seen(pend) {
				done, derr := try(pend)
				if done && derr == nil {
					e.cache.setPending(pend)
					cl.log.Info(EventUsingPending, "secret_id", secretID, "version_id", pend.VersionID,
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

	t.lastState.Store(state)
	if loginErr != nil {
		t.lastReason.Store(loginErr.Error())
	}
	cause := loginErr
	if len(tried) == 1 && storeErr != nil {
		// No fresh credentials were rejected: the store kept recovery from
		// finding any. Say so, and keep the breaker out of it.
		cause = errors.Join(loginErr, storeErr)
	}
	cl.log.Warn(EventRecoveryFailed, "secret_id", secretID, "stage", failed.Stage, "version_id", failed.VersionID,
		"user", failed.Username, "sqlstate", state, "took", time.Since(start).Round(time.Millisecond),
		"credentials_tried", len(tried))
	read := "fetching the secret again"
	if e.store.pendingStage != "" {
		read = fmt.Sprintf("fetching the secret again (%s and %s)", e.store.stage, e.store.pendingStage)
	}
	detail := fmt.Sprintf("the database rejected user %q, and %s for %s found no credentials it accepts",
		failed.Username, read, window)
	if oneRound {
		detail = fmt.Sprintf("the database rejected user %q, and %s found no other credentials it accepts",
			failed.Username, read)
		if t.verified.Load() == nil {
			detail += "; nothing from this secret has logged in to this database yet, so this is not a rotation in progress and pgsecrets does not wait for one"
		}
	}
	return recovered{tried: tried}, &SecretError{Kind: ErrAuthFailed, SecretID: secretID, Stage: failed.Stage,
		VersionID: failed.VersionID, SQLState: state, Err: cause, Detail: detail, Hint: authHint(state)}
}
