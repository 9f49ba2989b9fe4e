// Package pgxsecrets gives pgx users what pgsecrets gives lib/pq users:
// credentials from a secret store (the same shared cache as a lib/pq
// *sql.DB on the same secret in the same process), recovery inside the call
// that needed a connection, AWSPENDING, the breaker, fail-fast errors, and
// leases that never outlive their connections.
//
// Two ways in:
//
//   - NewPool (or ParseConfig for the *pgxpool.Config): a pgx pool whose
//     every new connection logs in with the secret's credentials.
//   - database/sql over pgx: with this package imported, secret_driver=pgx
//     in a "pgsecrets" DSN makes database/sql, GORM and sqlx log in
//     through pgx's stdlib instead of lib/pq.
//
// Why NewPool returns a *Pool and not a *pgxpool.Pool: pgx's hooks let a
// program set the credentials of a new connection (BeforeConnect), but a
// login the database rejects comes back from the Acquire (or Query, Exec…)
// that needed the connection, with no hook to try again. A plain
// *pgxpool.Pool would therefore fail one call per rejected login during a
// rotation. *Pool has the *pgxpool.Pool methods (it satisfies sqlc's DBTX)
// and, when a call fails because a new connection's login was rejected,
// runs pgsecrets' recovery and makes the call again: nothing had been sent
// to the database yet. Pool() returns the underlying pool.
package pgxsecrets

import (
	"context"
	"database/sql/driver"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/engine"
)

func init() {
	engine.Register("pgx", newStdlibEngine)
}

// stdlibEngine logs in with pgx for database/sql (secret_driver=pgx).
type stdlibEngine struct {
	base    *pgx.ConnConfig
	targets *targets
}

func newStdlibEngine(dsn string) (engine.Engine, error) {
	base, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, &pgsecrets.DSNError{Msg: "pgx rejected the DSN", Err: err}
	}
	base.Password = ""
	return &stdlibEngine{base: base, targets: newTargets(dsn)}, nil
}

func (e *stdlibEngine) Connect(ctx context.Context, l *engine.Login) (driver.Conn, error) {
	cc := e.base.Copy()
	if err := e.targets.setLogin(cc, l); err != nil {
		return nil, err
	}
	return stdlib.GetConnector(*cc).Connect(ctx)
}

// isPoolKey reports pgxpool's own DSN keys, which the connector must not
// see.
func isPoolKey(k string) bool { return strings.HasPrefix(k, "pool_") }

// ParseConfig parses a pgsecrets DSN (both forms, every secret_* key, every
// provider, pgx's pool_* keys) into a pool configuration whose connections
// log in with the secret's credentials. opts are the connector's
// (WithLogger, WithProvider…).
//
// Use it once, with NewPoolWithConfig, to get a *Pool that recovers inside
// the call from a rejected login; hooks you set on the configuration first
// run after pgsecrets' own. Given to pgxpool.NewWithConfig instead, it
// still takes every connection's credentials from the secret and keeps
// lease connections from being handed out past their lease, but a login
// rejected during a rotation fails that call (see the package comment),
// and the connector behind it (Connector) is yours to Close after the pool.
func ParseConfig(dsn string, opts ...pgsecrets.Option) (*pgxpool.Config, error) {
	cfg, err := pgsecrets.ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	var pool []string
	var conn []pgsecrets.Param
	for _, p := range cfg.Params {
		if isPoolKey(p.Key) {
			pool = append(pool, p.Key+"="+engine.Quote(p.Value))
		} else {
			conn = append(conn, p)
		}
	}
	// The connector sees the DSN without pool_* keys; it logs in with pgx
	// too (its recovery probes), so errors look the same.
	cfg.Params = conn
	cfg.Driver = "pgx"
	connector, err := pgsecrets.NewConnector(cfg.FormatDSN(), opts...)
	if err != nil {
		return nil, err
	}
	target := engine.TargetOf(connector)
	pc, err := pgxpool.ParseConfig(strings.Join(append([]string{target.DSN()}, pool...), " "))
	if err != nil {
		connector.Close()
		return nil, &pgsecrets.DSNError{Msg: "pgx rejected the DSN", Err: err}
	}
	pc.ConnConfig.Password = ""
	c := &state{Config: pc, connector: connector, target: target, secretID: cfg.SecretID, targets: newTargets(target.DSN()),
		leases: make(chan struct{})}
	c.install()
	states.Store(pc, c)
	return pc, nil
}

// states maps the configurations ParseConfig made to their state, until
// NewPoolWithConfig takes it.
var states sync.Map // *pgxpool.Config → *state

// Connector returns the pgsecrets connector behind a configuration from
// ParseConfig (Stats, Refresh, Describe, Close), or nil.
func Connector(cfg *pgxpool.Config) *pgsecrets.Connector {
	if v, ok := states.Load(cfg); ok {
		return v.(*state).connector
	}
	return nil
}

// state is what pgsecrets keeps for a pool configuration: its connector
// and hooks.
type state struct {
	*pgxpool.Config
	connector *pgsecrets.Connector
	target    engine.Target
	secretID  string
	targets   *targets
	own       hooks // pgsecrets' hooks, as installed
	userHooks hooks // the user's, run after them
	leases    chan struct{}
	leaseOnce sync.Once // closes leases at the first expiring credentials
}

type hooks struct {
	beforeConnect func(context.Context, *pgx.ConnConfig) error
	afterConnect  func(context.Context, *pgx.Conn) error
	prepareConn   func(context.Context, *pgx.Conn) (bool, error)
	beforeClose   func(*pgx.Conn)
}

// connData keys the pgx connection's custom data: the login it made, and
// its hold on that login's lease.
const (
	keyLogin   = "pgsecrets.login"
	keyRelease = "pgsecrets.release"
	keyRetire  = "pgsecrets.retire"
)

func (c *state) install() {
	c.BeforeConnect = func(ctx context.Context, cc *pgx.ConnConfig) error {
		l, err := c.target.Login(ctx)
		if err != nil {
			return err
		}
		if err := c.targets.setLogin(cc, l); err != nil {
			return &pgsecrets.SecretError{Kind: pgsecrets.ErrConnect, SecretID: c.secretID, Stage: l.Stage,
				VersionID: l.VersionID, Err: err}
		}
		if c.userHooks.beforeConnect != nil {
			if err := c.userHooks.beforeConnect(ctx, cc); err != nil {
				return err
			}
		}
		// The login travels with the connection it makes: by the time
		// AfterConnect runs, the cache may hold other credentials (a
		// rotation), which this login has not proven. Set after the user's
		// hook, so that it cannot be replaced; a pgconn AfterConnect the
		// user set runs after it.
		next := cc.AfterConnect
		cc.AfterConnect = func(ctx context.Context, pc *pgconn.PgConn) error {
			pc.CustomData()[keyLogin] = l
			if next != nil {
				return next(ctx, pc)
			}
			return nil
		}
		return nil
	}
	c.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		d := conn.PgConn().CustomData()
		l, _ := d[keyLogin].(*engine.Login)
		release := func() {}
		if l != nil {
			if l.Expiring {
				c.leaseOnce.Do(func() { close(c.leases) })
			}
			var retire func() time.Time
			release, retire = c.target.Connected(l)
			d[keyRelease], d[keyRetire] = release, retire
		}
		if c.userHooks.afterConnect != nil {
			if err := c.userHooks.afterConnect(ctx, conn); err != nil {
				release() // pgxpool closes the connection without BeforeClose
				return err
			}
		}
		return nil
	}
	c.PrepareConn = func(ctx context.Context, conn *pgx.Conn) (bool, error) {
		if expired(conn) {
			return false, nil // destroyed; the pool makes another
		}
		if c.userHooks.prepareConn != nil {
			return c.userHooks.prepareConn(ctx, conn)
		}
		return true, nil
	}
	// No AfterRelease: pgxpool runs it in a goroutine per release, which
	// would cost every query; PrepareConn checks the lease on the way out
	// of the pool instead.
	c.BeforeClose = func(conn *pgx.Conn) {
		if release, ok := conn.PgConn().CustomData()[keyRelease].(func()); ok {
			release()
		}
		if c.userHooks.beforeClose != nil {
			c.userHooks.beforeClose(conn)
		}
	}
	c.own = hooks{beforeConnect: c.BeforeConnect, afterConnect: c.AfterConnect, prepareConn: c.PrepareConn, beforeClose: c.BeforeClose}
}

// expired reports whether the credentials conn logged in with are within
// the expiry margin of their end.
func expired(conn *pgx.Conn) bool {
	retire, ok := conn.PgConn().CustomData()[keyRetire].(func() time.Time)
	if !ok {
		return false
	}
	at := retire()
	return !at.IsZero() && !time.Now().Before(at)
}

// NewPool is ParseConfig and NewPoolWithConfig.
func NewPool(ctx context.Context, dsn string, opts ...pgsecrets.Option) (*Pool, error) {
	cfg, err := ParseConfig(dsn, opts...)
	if err != nil {
		return nil, err
	}
	return NewPoolWithConfig(ctx, cfg)
}

// NewPoolWithConfig creates a pool from a configuration ParseConfig made
// (once). Hooks set on it after ParseConfig run after pgsecrets' own.
func NewPoolWithConfig(ctx context.Context, pc *pgxpool.Config) (*Pool, error) {
	v, ok := states.LoadAndDelete(pc)
	if !ok {
		return nil, fmt.Errorf("pgxsecrets: NewPoolWithConfig needs a configuration from ParseConfig, used once")
	}
	cfg := v.(*state)
	cfg.adoptUserHooks()
	p, err := pgxpool.NewWithConfig(ctx, cfg.Config)
	if err != nil {
		cfg.connector.Close()
		return nil, err
	}
	pool := &Pool{pool: p, connector: cfg.connector, target: cfg.target, done: make(chan struct{}), swept: make(chan struct{})}
	go pool.sweep(cfg.leases)
	return pool, nil
}

// sweepEvery is how often idle connections are checked against their
// lease, once the pool has seen expiring credentials: less than the least
// expiry margin (250 ms), so an idle connection is closed before its lease
// ends.
const sweepEvery = 100 * time.Millisecond

// sweep closes idle connections whose lease is about to end (pgxpool's own
// health check only knows MaxConnLifetime), until the pool closes.
func (p *Pool) sweep(leases <-chan struct{}) {
	defer close(p.swept)
	select {
	case <-leases:
	case <-p.done:
		return
	}
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
		}
		for _, c := range p.pool.AcquireAllIdle(context.Background()) {
			if expired(c.Conn()) {
				_ = c.Conn().Close(context.Background()) // Release then destroys it
			}
			c.Release()
		}
	}
}

// adoptUserHooks keeps hooks the user set on the configuration after
// ParseConfig (over pgsecrets' own) and chains them after pgsecrets'.
func (c *state) adoptUserHooks() {
	if f := c.BeforeConnect; f != nil && ptr(f) != ptr(c.own.beforeConnect) {
		c.userHooks.beforeConnect = f
	}
	if f := c.AfterConnect; f != nil && ptr(f) != ptr(c.own.afterConnect) {
		c.userHooks.afterConnect = f
	}
	if f := c.PrepareConn; f != nil && ptr(f) != ptr(c.own.prepareConn) {
		c.userHooks.prepareConn = f
	}
	if f := c.BeforeClose; f != nil && ptr(f) != ptr(c.own.beforeClose) {
		c.userHooks.beforeClose = f
	}
	c.BeforeConnect, c.AfterConnect, c.PrepareConn = c.own.beforeConnect, c.own.afterConnect, c.own.prepareConn
	c.BeforeClose = c.own.beforeClose // AfterRelease stays the user's
}

// ptr is a function's code address: closures of one literal share it,
// the user's differ.
func ptr(f any) uintptr { return reflect.ValueOf(f).Pointer() }
