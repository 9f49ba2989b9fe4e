package pgsecrets

import (
	"context"
	"database/sql/driver"
	"time"

	"github.com/pgsecrets/pgsecrets/internal/engine"
)

// The pgx pool of github.com/pgsecrets/pgsecrets/pgxsecrets logs in inside
// pgxpool (its BeforeConnect hook), not through Connect. It reaches the
// connector through internal/engine's Target, implemented here on the
// same target as Connect: the pool runs each call through run, takes its
// credentials from credentials and reports the logins it saw. No rule of
// the policy is written here.

func init() {
	engine.TargetOf = func(dc driver.Connector) engine.Target {
		if c, ok := dc.(*Connector); ok {
			return adapter{c}
		}
		return nil
	}
}

type adapter struct{ c *Connector }

func (a adapter) DSN() string { return a.c.dsn }

func (a adapter) Run(ctx context.Context, call func(ctx context.Context) error) error {
	if a.c.closed.Load() {
		return a.c.closedError()
	}
	return a.c.target.run(ctx, a.c.cl, func(ctx context.Context, _ *attempt) error { return call(ctx) })
}

func (a adapter) Login(ctx context.Context) (*engine.Login, error) {
	if a.c.closed.Load() {
		return nil, a.c.closedError()
	}
	creds, err := a.c.target.credentials(ctx, a.c.cl, attemptOf(ctx))
	if err != nil {
		return nil, err
	}
	return a.c.srv.login(creds), nil
}

func (a adapter) Connected(l *engine.Login) (release func(), retireAt func() time.Time) {
	creds, _ := l.Core.(*Credentials)
	if creds == nil {
		return func() {}, func() time.Time { return time.Time{} }
	}
	// A connection made outside Run proves its credentials too: a later
	// rejection of them is then a rotation in progress.
	a.c.target.verified.Store(creds)
	if !creds.expiring() {
		return func() {}, func() time.Time { return time.Time{} }
	}
	b := a.c.entry.leases
	lease := b.open(creds, a.c.cl.policy)
	lc := b.opened(lease, nopConn{}, a.c.cl.obs)
	// In use until released: the pool retires its connections itself, and
	// the keeper must not end the lease's hold on its own.
	lc.busy.Store(true)
	return func() { _ = lc.Close() }, func() time.Time { return time.Unix(0, lease.retireAt.Load()) }
}

func (a adapter) LoginError(ctx context.Context, err error) error {
	var creds *Credentials
	if at := attemptOf(ctx); at != nil {
		creds = at.loginCreds()
	}
	return a.c.loginError(ctx, creds, err)
}

func (a adapter) Rejected(err error) bool {
	_, ok := authFailure(err)
	return ok
}

// nopConn stands in for a connection the lease book tracks but does not
// own (the pool's).
type nopConn struct{}

func (nopConn) Prepare(string) (driver.Stmt, error) { return nil, driver.ErrSkip }
func (nopConn) Close() error                        { return nil }
func (nopConn) Begin() (driver.Tx, error)           { return nil, driver.ErrSkip }
