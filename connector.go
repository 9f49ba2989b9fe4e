package pgsecrets

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgsecrets/pgsecrets/internal/engine"
)

// Connector opens PostgreSQL connections with credentials from a secret.
// Use it with sql.OpenDB; sql.Open("pgsecrets", dsn) builds one for you.
// It is safe for concurrent use. Close (which database/sql calls from
// DB.Close) stops its background work.
type Connector struct {
	cfg    *Config
	srv    server // where the DSN points, read once
	dsn    string // the engine DSN
	log    *slog.Logger
	engine engine.Engine
	entry  *entry  // shared by every connector on the secret
	target *target // shared by every connector on the secret and database
	cl     client  // this connector, as the entry and target see it

	stats     counters
	final     atomic.Pointer[Stats] // what Stats says once Close has returned
	warned    warnings
	closed    atomic.Bool
	closeOnce sync.Once
}

// NewConnector parses dsn (see ParseDSN) and returns a Connector. It does
// not contact the store or the database; configuration errors (a bad DSN,
// no AWS region) are returned here.
func NewConnector(dsn string, opts ...Option) (*Connector, error) {
	cfg, err := ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	o := options{logger: slog.Default(), breakerOpen: DefaultBreakerOpen}
	for _, opt := range opts {
		opt(&o)
	}
	c := &Connector{cfg: cfg, srv: cfg.server(os.Getenv), log: o.logger}
	obs := &observers{log: c.log, stats: &c.stats, provider: cfg.Provider, extra: o.observers}
	c.dsn = cfg.pqDSN(os.Getenv)
	factory, ok := engine.Engines.Lookup(cfg.Driver)
	if !ok {
		return nil, unknownName(engine.Engines, cfg.Driver)
	}
	if c.engine, err = factory(c.dsn); err != nil {
		return nil, err
	}

	provider, identity := o.provider, ""
	switch {
	case provider != nil:
		identity = fmt.Sprintf("provider:%p", provider)
	case o.client != nil && cfg.Provider == DefaultProvider:
		identity = fmt.Sprintf("client:%p", o.client)
		provider = NewSecretsManagerProvider(o.client, cfg)
	default:
		info, ok := lookupProvider(cfg.Provider)
		if !ok {
			return nil, unknownProviderError(cfg.Provider)
		}
		ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), observersKey{}, obs), 30*time.Second)
		given := *cfg // factories read the configuration; they declare defaults (TTLDefaulter) rather than edit it
		provider, err = info.factory(ctx, &given)
		cancel()
		if err != nil {
			return nil, err
		}
		identity = fmt.Sprintf("%s:%p", cfg.Provider, provider)
		if k, ok := provider.(CacheKeyer); ok && k.CacheKey() != "" {
			identity = cfg.Provider + ":" + k.CacheKey()
		}
	}
	if d, ok := provider.(TTLDefaulter); ok && !cfg.explicit(keyTTL) && d.DefaultTTL() > 0 {
		cfg.TTL = d.DefaultTTL()
	}
	key := fmt.Sprintf("%s|%s|%s|%s|%s", identity, cfg.SecretID, cfg.VersionStage, cfg.UsernameKey, cfg.PasswordKey)
	c.entry = acquireEntry(key, cfg.SecretID, cfg.VersionStage, provider)
	obs.pendingStage = c.entry.store.pendingStage
	c.cl = client{
		policy: policy{ttl: cfg.TTL, maxStale: cfg.MaxStale, margin: cfg.ExpiryMargin, obs: obs},
		window: cfg.RetryWindow, warn: c.warnAtConnect, dial: c.dial, host: c.srv.hostName(), port: c.srv.port,
	}
	c.entry.leases.join(c.cl.policy)
	c.target = c.entry.target(c.srv.key(), o.breakerOpen)

	c.warnAtOpen()
	return c, nil
}

// Driver returns the pgsecrets driver.
func (c *Connector) Driver() driver.Driver { return &Driver{} }

// Close stops the connector's background work. The credential cache of its
// secret is dropped when the last connector using it closes. From then on
// Stats returns what it said when Close returned.
func (c *Connector) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.entry.release()
		// After release: the last connector's Close revokes the leases
		// left, and reports that.
		c.entry.leases.leave(c.cl.policy)
		s := c.snapshot()
		c.final.Store(&s)
	})
	return nil
}

// Config returns a copy of the parsed configuration.
func (c *Connector) Config() Config {
	cp := *c.cfg
	cp.Params = append([]Param(nil), c.cfg.Params...)
	cp.providerParams = append([]Param(nil), c.cfg.providerParams...)
	return cp
}

// closedError is what every call on a closed connector returns.
func (c *Connector) closedError() error {
	return &SecretError{Kind: ErrClosed, SecretID: c.cfg.SecretID}
}

// Connect opens a connection: credentials from the cache (fetched once for
// all concurrent callers when needed), then the engine (lib/pq, or pgx with
// secret_driver=pgx). On an authentication failure it recovers within the
// same call (target.go, recovery.go). It returns the engine's own
// connection, so queries run on the engine alone, except for expiring
// credentials (leases), whose connections are wrapped so that none
// outlives its credential (see lease.go). Every error it returns wraps a
// sentinel (see errors.go).
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	if c.closed.Load() {
		return nil, c.closedError()
	}
	var conn driver.Conn
	err := c.target.run(ctx, c.cl, func(ctx context.Context, a *attempt) error {
		if conn = a.take(); conn != nil {
			return nil // the login of the recovery this caller ran
		}
		creds, err := c.target.credentials(ctx, c.cl, a)
		if err != nil {
			return err
		}
		conn, err = c.dial(ctx, creds)
		return err
	})
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// Refresh fetches the configured stage of the secret from the store now,
// sharing any fetch already in flight, and returns the version id it got.
// New connections use that version from then on, except while a rotation
// is in progress: a pending version (AWSPENDING) that recovery found the
// database accepting stays in use until the configured stage holds it or
// a newer version, since the version Refresh got is then the one the
// database no longer accepts. Stats tells which version and stage new
// connections use. Call it when the application learns of a rotation from
// elsewhere (an EventBridge rule, a deploy hook) and should not wait for
// secret_ttl or the next authentication failure. Store calls stay paced, so
// a Refresh right after another call waits for its turn (within ctx).
func (c *Connector) Refresh(ctx context.Context) (string, error) {
	if c.closed.Load() {
		return "", c.closedError()
	}
	creds, err := c.entry.store.fetch(ctx, c.entry.store.stage, c.cl.policy, anyGen)
	if err != nil {
		return "", err
	}
	return creds.VersionID, nil
}

// Describe fetches the secret now (as Refresh does) and says what is known
// about the credentials new connections get: the provider, the user, the
// version, for a lease its id (without the part that tells leases apart),
// end and renewability, a store's announced rotation time, and the
// provider's own facts (see Describer). It never shows a password or token.
func (c *Connector) Describe(ctx context.Context) ([]Fact, error) {
	if _, err := c.Refresh(ctx); err != nil {
		return nil, err
	}
	e := c.entry
	cr := e.cache.active()
	facts := []Fact{{"provider", c.cfg.Provider}, {"user", cr.Username}, {"version", cr.VersionID}}
	if cr.expiring() {
		if cr.LeaseID != "" {
			id := cr.LeaseID
			if i := strings.LastIndexByte(id, '/'); i >= 0 {
				id = id[:i+1] + "…"
			}
			facts = append(facts, Fact{"lease", id})
		}
		end := e.leases.expires(cr)
		facts = append(facts,
			Fact{"expires", fmt.Sprintf("%s (in %s)", end.UTC().Format(time.RFC3339), time.Until(end).Round(time.Second))},
			Fact{"renewable", fmt.Sprint(cr.Renewable)})
	}
	if !cr.LoginUntil.IsZero() {
		facts = append(facts, Fact{"token valid until", fmt.Sprintf("%s (in %s; new logins only, its connections live on)",
			cr.LoginUntil.UTC().Format(time.RFC3339), time.Until(cr.LoginUntil).Round(time.Second))})
	}
	if !cr.RotatesAt.IsZero() {
		facts = append(facts, Fact{"rotates", fmt.Sprintf("%s (in %s; fetched again just after)",
			cr.RotatesAt.UTC().Format(time.RFC3339), time.Until(cr.RotatesAt).Round(time.Second))})
	}
	if d, ok := e.store.provider.(Describer); ok {
		more, err := d.Describe(ctx)
		if err != nil {
			return facts, err
		}
		facts = append(facts, more...)
	}
	return facts, nil
}

// dial logs in with creds through the engine; connections made with
// expiring credentials are wrapped (lease.go). A rejected login comes back
// as the engine's error, for the caller to classify and recover from; any
// other failure comes back as the *SecretError Connect returns for it.
func (c *Connector) dial(ctx context.Context, creds *Credentials) (driver.Conn, error) {
	var l *lease
	if creds.expiring() {
		l = c.entry.leases.open(creds, c.cl.policy)
	}
	conn, err := c.engine.Connect(ctx, c.srv.login(creds))
	if l != nil {
		if err != nil {
			c.entry.leases.failed(l)
		} else {
			lc := c.entry.leases.opened(l, conn, c.cl.obs)
			if lc.expired() {
				// A slow login near the lease's end: database/sql would be
				// refused this connection at its first use.
				_ = lc.Close()
				return nil, &SecretError{Kind: ErrConnect, SecretID: c.cfg.SecretID, Stage: creds.Stage, VersionID: creds.VersionID,
					Err: errLeaseEndedInLogin, Detail: "the login succeeded, but the lease it used reached its end meanwhile (the login took longer than secret_expiry_margin)",
					Hint: "raise secret_expiry_margin above the time a login takes, or the lease TTL"}
			}
			conn = lc
		}
	}
	if err != nil {
		if _, rejected := authFailure(err); !rejected {
			return nil, c.loginError(ctx, creds, err)
		}
		return nil, err
	}
	return conn, nil
}

// errLeaseEndedInLogin is dial's answer for a connection whose lease
// reached its retirement while the login ran; run logs in again.
var errLeaseEndedInLogin = errors.New("the lease ended while the login ran")

// loginError is the error for a login that failed other than by a
// rejection of creds: ErrConnect wrapping the engine's error, or, if ctx
// ended meanwhile (the engine gave up on the dial or the handshake), what
// a caller who gives up gets.
func (c *Connector) loginError(ctx context.Context, creds *Credentials, err error) error {
	if ctx.Err() != nil {
		return waitError(ctx, c.cfg.SecretID, creds, "", "gave up while logging in to the database", err)
	}
	se := &SecretError{Kind: ErrConnect, SecretID: c.cfg.SecretID, SQLState: sqlState(err), Err: err}
	if creds != nil {
		se.Stage, se.VersionID = creds.Stage, creds.VersionID
	}
	return se
}

// counters back Stats.
type counters struct {
	storeCalls     atomic.Int64
	storeThrottled atomic.Int64
	cacheHits      atomic.Int64
	storeWaits     atomic.Int64
	staleServes    atomic.Int64
	authFailures   atomic.Int64
	recovered      atomic.Int64
	pendingUses    atomic.Int64
	breakerRejects atomic.Int64
	// Lease events (see Stats).
	leaseRenewals      atomic.Int64
	leaseRenewFailures atomic.Int64
	leaseRevocations   atomic.Int64
	connsRetired       atomic.Int64
}

var (
	_ driver.Connector = (*Connector)(nil)
	_ io.Closer        = (*Connector)(nil)
)
