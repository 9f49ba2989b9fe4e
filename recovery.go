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
	ectx := context.WithoutCancel(ctx) // for the recovery's events only
	started := t.e.life.spawn(func() {
		ran := false
		v, err, _ := t.sf.Do("recover", func() (any, error) {
			ran = true
			t.failing.Store(&f)
			t.progress.Store(&progress{f: f, started: time.Now()})
			defer t.progress.Store(nil)
			defer t.failing.Store(nil)
			r, err := t.rounds(ectx, cl, f, oneRound)
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

func (t *target) rounds(caller context.Context, cl client, f failure, oneRound bool) (r recovered, err error) {
	caller = cl.obs.emit(caller, Event{Kind: KindRecoveryStart, SecretID: t.secretID(), Stage: f.creds.Stage,
		VersionID: f.creds.VersionID, User: f.creds.Username, SQLState: f.sqlstate})
	// The recovery belongs to the entry (it ends with it, or at its
	// window), but its events belong to the caller that started it.
	ctx, cancel := context.WithTimeout(t.e.life.ctx, cl.window)
	defer cancel()
	ctx = withValues{ctx, caller}
	s := &search{t: t, cl: cl, ctx: ctx, start: time.Now(), failed: f.creds, tried: []*Credentials{f.creds},
		state: f.sqlstate, loginErr: f.err}
	defer func() {
		e := Event{Kind: KindRecoveryEnd, SecretID: t.secretID(), Stage: f.creds.Stage, VersionID: f.creds.VersionID,
			User: f.creds.Username, SQLState: s.state, Outcome: OutcomeOK, Err: err, Duration: time.Since(s.start),
			Count: len(s.tried)}
		if err != nil {
			e.Outcome = OutcomeFailed
		} else {
			e.Stage, e.VersionID, e.User, e.SQLState = r.creds.Stage, r.creds.VersionID, r.creds.Username, ""
		}
		cl.obs.emit(caller, e)
	}()
	for round := 1; ; round++ {
		cr, done, err := s.round()
		if done {
			if err != nil {
				return recovered{}, err
			}
			return recovered{creds: cr, conn: s.probe}, nil
		}
		if oneRound || !pause(ctx, backoff(recoveryStepBase, recoveryStepMax, round)) {
			break
		}
	}
	return recovered{tried: s.tried}, s.giveUp(oneRound)
}

// withValues is a context that ends with its own parent and carries the
// values of another: work that belongs to the entry, reported as part of
// the call that started it.
type withValues struct {
	context.Context
	vals context.Context
}

func (w withValues) Value(key any) any {
	if v := w.vals.Value(key); v != nil {
		return v
	}
	return w.Context.Value(key)
}

// pause waits d unless ctx ends first, or would end before d has passed;
// it reports whether another round fits.
func pause(ctx context.Context, d time.Duration) bool {
	if dl, ok := ctx.Deadline(); ok && time.Now().Add(d).After(dl) {
		return false
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// search is one recovery's state: the credentials it tried, the last
// rejection, the store's last failure, and the login that succeeded.
type search struct {
	t      *target
	cl     client
	ctx    context.Context
	start  time.Time
	failed *Credentials // what the recovery started from
	tried  []*Credentials
	state  string // the last rejection's SQLSTATE
	// loginErr is the last rejection; storeErr the store's last failure,
	// if it kept the recovery from fresh credentials.
	loginErr, storeErr error
	probe              driver.Conn // the login that proved the credentials
	// noPending: the pending stage did not exist when this recovery
	// asked. A rotation that uses it (AWS's four steps) writes it before
	// it changes the database, so it will not appear later in this
	// recovery: the database was changed first, and only the configured
	// stage is worth asking again (one request a round, not two, for
	// every process of a fleet while the store lags behind).
	noPending bool
}

func (s *search) seen(cr *Credentials) bool {
	for _, t := range s.tried {
		if t.same(cr) {
			return true
		}
	}
	return false
}

func (s *search) report() {
	s.t.progress.Store(&progress{f: failure{creds: s.tried[len(s.tried)-1], sqlstate: s.state, err: s.loginErr},
		storeErr: s.storeErr, started: s.start})
}

// try logs in with cr; done reports whether the recovery is over (with
// success, or an error other than a rejection).
func (s *search) try(cr *Credentials) (done bool, err error) {
	lctx := s.cl.obs.emit(s.ctx, Event{Kind: KindLoginStart, SecretID: s.t.secretID(), Stage: cr.Stage, VersionID: cr.VersionID})
	start := time.Now()
	conn, err := s.cl.dial(s.ctx, cr)
	st, rejected := authFailure(err)
	e := loginEnd(s.t.secretID(), cr, err, rejected, st, time.Since(start))
	e.Recovery = true
	s.cl.obs.emit(lctx, e)
	if err == nil {
		s.probe = conn
		s.t.verified.Store(cr)
		return true, nil
	}
	if rejected {
		s.tried = append(s.tried, cr)
		s.state, s.loginErr = st, err
		s.report()
		return false, nil
	}
	return true, err
}

// round tries what is new: (1) the cached credentials, if another caller
// moved on already; (2) the configured stage again, unless it was read
// moments ago (the answer would be the same): the database may have been
// changed first and the store updated since; (3) the pending stage, which
// AWS's rotation writes before changing the database and makes current
// only at the end. It returns the credentials that logged in, or done with
// an error that ends the recovery.
func (s *search) round() (found *Credentials, done bool, err error) {
	e := s.t.e
	if cached := e.cache.active(); cached != nil && !s.seen(cached) {
		if done, err := s.try(cached); done {
			return cached, true, err
		}
	}
	if h := e.store.health(); time.Since(h.lastCall) >= h.interval {
		cur, err := e.store.fetch(s.ctx, e.store.stage, s.cl.policy, anyGen)
		if errors.Is(err, ErrStoreUnavailable) {
			s.storeErr = err
			s.report()
		}
		switch {
		case err == nil && !s.seen(cur):
			if done, err := s.try(cur); done {
				return cur, true, err
			}
		case err != nil && !errors.Is(err, ErrStoreUnavailable) && !isContextErr(err):
			return nil, true, err // not found, denied, malformed: no use waiting
		}
	}
	if e.store.pendingStage != "" && !s.noPending {
		pend, err := e.store.fetch(s.ctx, e.store.pendingStage, s.cl.policy, anyGen)
		s.noPending = errors.Is(err, ErrSecretNotFound)
		if err == nil && !s.seen(pend) {
			done, err := s.try(pend)
			if done && err == nil {
				e.cache.setPending(pend)
				s.cl.obs.emit(s.ctx, Event{Kind: KindPendingInUse, SecretID: s.t.secretID(), Stage: pend.Stage,
					VersionID: pend.VersionID, User: pend.Username})
			}
			if done {
				return pend, true, err
			}
		}
	}
	return nil, false, nil
}

// giveUp records and returns the outcome of a recovery that found nothing
// the database accepts.
func (s *search) giveUp(oneRound bool) error {
	t, failed, store := s.t, s.failed, s.t.e.store
	t.lastState.Store(s.state)
	if s.loginErr != nil {
		t.lastReason.Store(s.loginErr.Error())
	}
	cause := s.loginErr
	if len(s.tried) == 1 && s.storeErr != nil {
		// No fresh credentials were rejected: the store kept recovery from
		// finding any. Say so, and keep the breaker out of it.
		cause = errors.Join(s.loginErr, s.storeErr)
	}
	read := "fetching the secret again"
	if store.pendingStage != "" {
		read = fmt.Sprintf("fetching the secret again (%s and %s)", store.stage, store.pendingStage)
	}
	detail := fmt.Sprintf("the database rejected user %q, and %s for %s found no credentials it accepts",
		failed.Username, read, s.cl.window)
	if oneRound {
		detail = fmt.Sprintf("the database rejected user %q, and %s found no other credentials it accepts",
			failed.Username, read)
		if t.verified.Load() == nil {
			detail += "; nothing from this secret has logged in to this database yet, so this is not a rotation in progress and pgsecrets does not wait for one"
		}
	}
	return &SecretError{Kind: ErrAuthFailed, SecretID: t.secretID(), Stage: failed.Stage, VersionID: failed.VersionID,
		SQLState: s.state, Err: cause, Detail: detail, Hint: t.authHint(s.state)}
}
