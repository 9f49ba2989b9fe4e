package pgsecrets

import (
	"context"
	"database/sql/driver"
	"errors"
	"os"
	"time"

	"github.com/sony/gobreaker/v2"
)

// The adapter API: what an engine that manages its own connections (the
// pgx pool of github.com/pgsecrets/pgsecrets/pgxsecrets) needs from a
// Connector so that its logins follow the same policy as Connect: the same
// cache, the same recovery after a rejected login (refetch, AWSPENDING,
// backoff, one round for credentials that never logged in), the same
// breaker and fail-fast errors, the same lease bookkeeping. The policy
// itself lives in cache.go, recovery.go and lease.go, once.

// Credentials returns the credentials a new connection should log in with
// now, as Connect would: from the shared cache, failing fast while the
// breaker is open, and waiting for a recovery already running for the
// credentials the cache holds instead of trying them again.
func (c *Connector) Credentials(ctx context.Context) (*Credentials, error) {
	if c.closed.Load() {
		return nil, c.closedError()
	}
	if c.guard.cb.State() == gobreaker.StateOpen {
		c.stats.breakerRejects.Add(1)
		return nil, c.guard.openError(c.cfg.SecretID)
	}
	creds, err := c.entry.get(ctx, c.pol)
	if err != nil {
		return nil, err
	}
	c.warnAtConnect(creds)
	if r := c.guard.rejected.Load(); r.covers(creds) && c.guard.cb.State() != gobreaker.StateHalfOpen {
		return nil, r.err
	}
	if f := c.guard.failing.Load(); f != nil && f.creds.same(creds) {
		if err := c.Recover(ctx, creds, f.err); err != nil {
			return nil, err
		}
		return c.entry.get(ctx, c.pol)
	}
	return creds, nil
}

// Gate waits for one of the few login slots that credentials which have not
// logged in yet share (as Connect does: a wrong secret then costs a bounded
// number of rejected logins, whatever the concurrency); call release once
// the login is over. Credentials that have logged in need no slot. If a
// login with creds failed meanwhile, Gate returns that login's error, so
// that the caller recovers (Recover) instead of trying them again.
func (c *Connector) Gate(ctx context.Context, creds *Credentials) (release func(), err error) {
	release, known, err := c.loginSlot(ctx, creds, c.guard.cb.State() == gobreaker.StateHalfOpen)
	if known != nil {
		return release, known.err
	}
	return release, err
}

// Rejected records at once that the database rejected creds, before the
// caller lets go of its login slot (Gate): callers waiting for a slot for
// the same credentials then join the recovery instead of trying them.
func (c *Connector) Rejected(creds *Credentials, loginErr error) {
	if state, ok := authFailure(loginErr); ok && creds != nil {
		c.guard.failing.Store(&failure{creds: creds, sqlstate: state, err: loginErr})
	}
}

// LoggedIn records that creds logged in to the database: a later rejection
// of them is then a rotation in progress (recovery gets the whole
// secret_retry_window), not a configuration problem (one round).
func (c *Connector) LoggedIn(creds *Credentials) {
	if creds != nil {
		c.guard.verified.Store(creds)
	}
}

// IsAuthFailure reports whether err is the database rejecting a login
// (SQLSTATE 28P01 or 28000), whatever the driver.
func IsAuthFailure(err error) bool {
	_, ok := authFailure(err)
	return ok
}

// LoginError is the error Connect returns for a login with creds (nil if
// unknown) that failed other than by a rejection (see IsAuthFailure):
// ErrConnect wrapping the engine's error, or, if ctx ended meanwhile, what
// a caller who gives up gets.
func (c *Connector) LoginError(ctx context.Context, creds *Credentials, err error) error {
	return c.loginError(ctx, creds, err)
}

// Recover is what Connect does after the database rejected creds with
// loginErr: one recovery for every caller at once, through the breaker. It
// returns nil once working credentials are cached (log in again with
// Credentials), or the error Connect would have returned: ErrAuthFailed,
// ErrCircuitOpen, a store error, or a *SecretError saying what ctx's end
// interrupted. loginErr must be a rejected login (see IsAuthFailure).
func (c *Connector) Recover(ctx context.Context, creds *Credentials, loginErr error) error {
	state, ok := authFailure(loginErr)
	if !ok {
		return loginErr
	}
	if c.closed.Load() {
		return c.closedError()
	}
	c.stats.authFailures.Add(1)
	_, err := c.guard.cb.Execute(func() (driver.Conn, error) {
		_, conn, err := c.recover(ctx, failure{creds: creds, sqlstate: state, err: loginErr})
		if conn != nil {
			// Recovery proved the credentials with a login of its own
			// engine; the caller's engine logs in again.
			_ = conn.Close()
		}
		return nil, err
	})
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		c.stats.breakerRejects.Add(1)
		return c.guard.openError(c.cfg.SecretID)
	}
	if err == nil {
		c.stats.recovered.Add(1)
	}
	return err
}

// EngineConfig returns the configuration engines are built from.
func (c *Connector) EngineConfig() EngineConfig {
	return EngineConfig{DSN: c.cfg.pqDSN(os.Getenv), HostSet: c.hostSet, PortSet: c.portSet, DBNameSet: c.dbSet}
}

// Hold registers a connection an adapter opened with expiring credentials:
// the lease is renewed while it is held and not revoked before release is
// called. retireAt tells when the connection must stop being used (the
// lease's end less the expiry margin; renewals move it). For credentials
// that do not expire, release does nothing and retireAt is zero.
func (c *Connector) Hold(creds *Credentials) (release func(), retireAt func() time.Time) {
	if !creds.expiring() {
		return func() {}, func() time.Time { return time.Time{} }
	}
	b := c.entry.leases
	l := b.open(creds, c.pol)
	lc := b.opened(l, nopConn{}, &c.stats)
	// In use until released: the adapter's pool retires its connections
	// itself, and the keeper must not end the lease's hold on its own.
	lc.busy.Store(true)
	return func() { _ = lc.Close() }, func() time.Time { return time.Unix(0, l.retireAt.Load()) }
}

// nopConn stands in for a connection the lease book tracks but does not
// own (an adapter's).
type nopConn struct{}

func (nopConn) Prepare(string) (driver.Stmt, error) { return nil, driver.ErrSkip }
func (nopConn) Close() error                        { return nil }
func (nopConn) Begin() (driver.Tx, error)           { return nil, driver.ErrSkip }
