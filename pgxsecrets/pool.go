package pgxsecrets

import (
	"context"
	"errors"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/puddle/v2"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/engine"
)

// Pool is a *pgxpool.Pool whose calls recover from a rejected login of a
// new connection: every method of *pgxpool.Pool, with the same signature.
type Pool struct {
	pool      *pgxpool.Pool
	connector *pgsecrets.Connector
	target    engine.Target
	done      chan struct{} // closed by Close
	swept     chan struct{} // closed when the sweeper has stopped
	closeOnce sync.Once
}

// Pool returns the underlying *pgxpool.Pool. Its calls do not recover from
// a rejected login; the credentials still come from the secret.
func (p *Pool) Pool() *pgxpool.Pool { return p.pool }

// Connector is the pgsecrets connector behind the pool: Stats, Refresh,
// Describe.
func (p *Pool) Connector() *pgsecrets.Connector { return p.connector }

// retry runs call under the connector's policy (see the package comment):
// when it fails because the database rejected the login of a new
// connection, the connector recovers and call runs again. A failed login
// sends nothing of the call to the database, so running it again is safe.
// A call that fails while making a new connection fails as Connect would
// (see callError).
func retry[T any](ctx context.Context, p *Pool, call func(ctx context.Context) (T, error)) (T, error) {
	var v T
	err := p.target.Run(ctx, func(ctx context.Context) error {
		var err error
		if v, err = call(ctx); err != nil && !p.target.Rejected(err) {
			err = p.callError(ctx, err)
		}
		return err
	})
	return v, err
}

// callError is the error of a call that failed other than by a rejected
// login. One that failed making a new connection gets the *SecretError
// Connect would return: ErrClosed once the pool is closed, ErrConnect
// wrapping pgx's error, or the caller's context error if ctx ended during
// the login. Errors that are already pgsecrets' (from BeforeConnect) and
// the errors of the call's own work (a query's *pgconn.PgError) are
// returned as they are.
func (p *Pool) callError(ctx context.Context, err error) error {
	var se *pgsecrets.SecretError
	if errors.As(err, &se) {
		return err
	}
	if errors.Is(err, puddle.ErrClosedPool) {
		return &pgsecrets.SecretError{Kind: pgsecrets.ErrClosed, SecretID: p.connector.Config().SecretID, Err: err}
	}
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) {
		return err
	}
	return p.target.LoginError(ctx, err)
}

// Acquire returns a connection from the pool, logging in with the secret's
// credentials when a new one is needed, and recovering if the database
// rejects them.
func (p *Pool) Acquire(ctx context.Context) (*pgxpool.Conn, error) {
	return retry(ctx, p, p.pool.Acquire)
}

// AcquireFunc acquires a connection, calls f with it and releases it.
func (p *Pool) AcquireFunc(ctx context.Context, f func(*pgxpool.Conn) error) error {
	c, err := p.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	return f(c)
}

// AcquireAllIdle acquires every idle connection (see pgxpool).
func (p *Pool) AcquireAllIdle(ctx context.Context) []*pgxpool.Conn { return p.pool.AcquireAllIdle(ctx) }

// Exec acquires a connection, runs sql on it and releases it.
func (p *Pool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return retry(ctx, p, func(ctx context.Context) (pgconn.CommandTag, error) { return p.pool.Exec(ctx, sql, args...) })
}

// Query acquires a connection and runs sql on it; the connection is
// released when the rows are closed.
func (p *Pool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return retry(ctx, p, func(ctx context.Context) (pgx.Rows, error) { return p.pool.Query(ctx, sql, args...) })
}

// QueryRow acquires a connection and runs sql on it; the connection is
// released by the row's Scan.
func (p *Pool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c, err := p.Acquire(ctx)
	if err != nil {
		return errRow{err}
	}
	return &poolRow{c: c, r: c.QueryRow(ctx, sql, args...)}
}

// SendBatch acquires a connection and sends b on it; the connection is
// released when the results are closed.
func (p *Pool) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	c, err := p.Acquire(ctx)
	if err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	return &poolBatch{c: c, br: c.SendBatch(ctx, b)}
}

// Begin starts a transaction on an acquired connection, released at its
// end.
func (p *Pool) Begin(ctx context.Context) (pgx.Tx, error) {
	return retry(ctx, p, p.pool.Begin)
}

// BeginTx is Begin with options.
func (p *Pool) BeginTx(ctx context.Context, txOptions pgx.TxOptions) (pgx.Tx, error) {
	return retry(ctx, p, func(ctx context.Context) (pgx.Tx, error) { return p.pool.BeginTx(ctx, txOptions) })
}

// CopyFrom copies rows into tableName on an acquired connection.
func (p *Pool) CopyFrom(ctx context.Context, tableName pgx.Identifier, columnNames []string, rowSrc pgx.CopyFromSource) (int64, error) {
	return retry(ctx, p, func(ctx context.Context) (int64, error) { return p.pool.CopyFrom(ctx, tableName, columnNames, rowSrc) })
}

// Ping acquires a connection and pings the server.
func (p *Pool) Ping(ctx context.Context) error {
	_, err := retry(ctx, p, func(ctx context.Context) (struct{}, error) { return struct{}{}, p.pool.Ping(ctx) })
	return err
}

// Close closes the pool and then the connector (revoking its leases).
func (p *Pool) Close() {
	p.closeOnce.Do(func() {
		close(p.done)
		<-p.swept
		p.pool.Close()
		p.connector.Close()
	})
}

// Reset closes every connection (see pgxpool).
func (p *Pool) Reset() { p.pool.Reset() }

// Config returns a copy of the pool's configuration.
func (p *Pool) Config() *pgxpool.Config { return p.pool.Config() }

// Stat returns the pool's statistics.
func (p *Pool) Stat() *pgxpool.Stat { return p.pool.Stat() }

// poolRow releases its connection after Scan.
type poolRow struct {
	c *pgxpool.Conn
	r pgx.Row
}

func (r *poolRow) Scan(dest ...any) error {
	defer r.c.Release()
	return r.r.Scan(dest...)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// poolBatch releases its connection on Close.
type poolBatch struct {
	c  *pgxpool.Conn
	br pgx.BatchResults
}

func (b *poolBatch) Exec() (pgconn.CommandTag, error) { return b.br.Exec() }
func (b *poolBatch) Query() (pgx.Rows, error)         { return b.br.Query() }
func (b *poolBatch) QueryRow() pgx.Row                { return b.br.QueryRow() }
func (b *poolBatch) Close() error {
	defer b.c.Release()
	return b.br.Close()
}

// Tx is the transaction the batch ran in, if it was sent on one (never, for
// a batch sent on the pool).
func (b *poolBatch) Tx() pgx.Tx { return b.br.Tx() }
