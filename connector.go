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

	"github.com/lib/pq"
	"github.com/sony/gobreaker/v2"
)

// Connector opens PostgreSQL connections with credentials from a secret.
// Use it with sql.OpenDB; sql.Open("pgsecrets", dsn) builds one for you.
// It is safe for concurrent use. Close (which database/sql calls from
// DB.Close) stops its background work.
type Connector struct {
	cfg    *Config
	base   pq.Config // the DSN as lib/pq parsed it, never holding a password
	log    *slog.Logger
	engine Engine
	entry  *entry
	guard  *guard
	pol    policy

	hostSet, portSet, dbSet bool

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

	base, err := pq.NewConfig(cfg.pqDSN(os.Getenv))
	if err != nil {
		return nil, &DSNError{Msg: "lib/pq rejected the DSN", Err: err}
	}
	// PGPASSWORD may have filled this; the secret's password is set per
	// connection, and a non-empty password also keeps lib/pq from reading
	// a passfile.
	base.Password = ""

	c := &Connector{
		cfg:     cfg,
		base:    base,
		log:     o.logger,
		hostSet: cfg.has("host", "PGHOST", os.Getenv) || cfg.has("hostaddr", "PGHOSTADDR", os.Getenv),
		portSet: cfg.has("port", "PGPORT", os.Getenv),
		dbSet:   cfg.has("dbname", "PGDATABASE", os.Getenv),
	}
	ef, ok := lookupEngine(cfg.Driver)
	if !ok {
		return nil, unknownEngineError(cfg.Driver)
	}
	if c.engine, err = ef(c.EngineConfig()); err != nil {
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
		ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), loggerKey{}, c.log), 30*time.Second)
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
	c.pol = policy{ttl: cfg.TTL, maxStale: cfg.MaxStale, margin: cfg.ExpiryMargin, log: c.log, stats: &c.stats}
	key := fmt.Sprintf("%s|%s|%s|%s|%s", identity, cfg.SecretID, cfg.VersionStage, cfg.UsernameKey, cfg.PasswordKey)
	c.entry = acquireEntry(key, cfg.SecretID, cfg.VersionStage, provider)
	c.entry.leases.join(c.pol)
	target := fmt.Sprintf("%s|%d|%s|%v", base.Host, base.Port, base.Database, base.Multi)
	c.guard = c.entry.guardFor(target, o.breakerOpen, c.log)

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
		c.entry.leases.leave(c.pol)
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
// same call (see recover). It returns the engine's own connection, so
// queries run on the engine alone, except for expiring credentials
// (leases), whose connections are wrapped so that none outlives its
// credential (see lease.go). Every error it returns wraps a sentinel (see
// errors.go).
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	if c.closed.Load() {
		return nil, c.closedError()
	}
	conn, err := c.guard.cb.Execute(func() (driver.Conn, error) { return c.connect(ctx) })
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		c.stats.breakerRejects.Add(1)
		return nil, c.guard.openError(c.cfg.SecretID)
	}
	return conn, err
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
	creds, err := c.entry.fetch(ctx, c.entry.stage, c.pol, anyGen)
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
	e.mu.Lock()
	cr := e.activeLocked()
	e.mu.Unlock()
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
	if !cr.RotatesAt.IsZero() {
		facts = append(facts, Fact{"rotates", fmt.Sprintf("%s (in %s; fetched again just after)",
			cr.RotatesAt.UTC().Format(time.RFC3339), time.Until(cr.RotatesAt).Round(time.Second))})
	}
	if d, ok := e.provider.(Describer); ok {
		more, err := d.Describe(ctx)
		if err != nil {
			return facts, err
		}
		facts = append(facts, more...)
	}
	return facts, nil
}

func (c *Connector) connect(ctx context.Context) (driver.Conn, error) {
	creds, err := c.entry.get(ctx, c.pol)
	if err != nil {
		return nil, err
	}
	c.warnAtConnect(creds)
	// In the half-open state only the breaker's probe gets here; it must
	// try the credentials a failed recovery gave up on.
	probe := c.guard.cb.State() == gobreaker.StateHalfOpen
	conn, fail, err := c.firstLogin(ctx, creds, probe)
	if conn != nil || err != nil {
		return conn, err
	}
	if c.guard.cb.State() == gobreaker.StateOpen {
		// A recovery for the same target failed while this caller was
		// logging in: its answer stands for the breaker's interval.
		c.stats.breakerRejects.Add(1)
		return nil, c.guard.openError(c.cfg.SecretID)
	}
	// Recover, then log in with what recovery found. If even that is
	// rejected, the password changed again in between (two rotations in
	// quick succession): recover again, a bounded number of times.
	for attempt := 1; ; attempt++ {
		good, conn, err := c.recover(ctx, fail)
		if err != nil {
			return nil, err
		}
		if conn != nil { // this caller's recovery logged in: use that login
			c.stats.recovered.Add(1)
			return conn, nil
		}
		conn, err = c.dial(ctx, good)
		if err == nil {
			c.guard.verified.Store(good)
			c.stats.recovered.Add(1)
			return conn, nil
		}
		state, ok := authFailure(err)
		if !ok {
			return nil, err
		}
		c.stats.authFailures.Add(1)
		if attempt == maxRecoveries {
			return nil, &SecretError{Kind: ErrAuthFailed, SecretID: c.cfg.SecretID, Stage: good.Stage,
				VersionID: good.VersionID, SQLState: state, Err: err,
				Detail: fmt.Sprintf("credentials were rejected right after recovery found them working, %d times in a row", attempt)}
		}
		fail = failure{creds: good, sqlstate: state, err: err}
	}
}

// maxUnverifiedLogins bounds the concurrent logins with credentials that
// have not logged in yet (a cold start, a new version): if they are wrong,
// a burst of callers costs this many rejected logins, not one per caller.
const maxUnverifiedLogins = 4

// firstLogin logs in with creds from the cache. It returns a connection, or
// the failure to recover from, or another error. Credentials that a running
// recovery already knows to be rejected are not tried again; credentials
// not yet proven are tried by at most maxUnverifiedLogins callers at a
// time, the others waiting for the outcome.
func (c *Connector) firstLogin(ctx context.Context, creds *Credentials, probe bool) (driver.Conn, failure, error) {
	g := c.guard
	release, known, err := c.loginSlot(ctx, creds, probe)
	if known != nil {
		return nil, *known, nil
	}
	if err != nil {
		return nil, failure{}, err // ctx ended, or a failed recovery's answer (the breaker opens on it)
	}
	defer release()
	conn, err := c.dial(ctx, creds)
	if err == nil {
		g.verified.Store(creds)
		g.rejected.Store(nil)
		return conn, failure{}, nil
	}
	state, ok := authFailure(err)
	if !ok {
		return nil, failure{}, err
	}
	c.stats.authFailures.Add(1)
	f := failure{creds: creds, sqlstate: state, err: err}
	// Published before the slot is released, so waiting callers join the
	// recovery instead of trying the same credentials; the recovery clears
	// it when it ends.
	g.failing.Store(&f)
	return nil, f, nil
}

// loginSlot waits, for credentials that have not logged in yet, for one of
// the maxUnverifiedLogins slots such logins share; release gives it back
// (once; it does nothing when no slot was needed). Instead of a slot it
// returns the failure a login with creds met meanwhile (known: join its
// recovery), or, unless probe, the error a failed recovery ended with for
// them, so that credentials known to be rejected are not tried again.
func (c *Connector) loginSlot(ctx context.Context, creds *Credentials, probe bool) (release func(), known *failure, err error) {
	g := c.guard
	slot := false
	release = func() {
		if slot {
			slot = false
			<-g.unverified
		}
	}
	none := func() {}
	for {
		if f := g.failing.Load(); f != nil && f.creds.same(creds) {
			release()
			return none, f, nil
		}
		if r := g.rejected.Load(); !probe && r.covers(creds) {
			release()
			return none, nil, r.err
		}
		if slot || g.verified.Load().same(creds) {
			return release, nil, nil
		}
		select {
		case g.unverified <- struct{}{}:
			slot = true // check again: the outcome may be known now
		case <-ctx.Done():
			return none, nil, waitError(ctx, c.cfg.SecretID, creds, "",
				fmt.Sprintf("gave up waiting for a login slot: %d callers were already trying these credentials, which have not logged in yet",
					maxUnverifiedLogins), nil)
		}
	}
}

// maxRecoveries bounds how often one Connect recovers when the credentials
// recovery found are rejected again at once.
const maxRecoveries = 3

// dial logs in with creds through the engine; connections made with
// expiring credentials are wrapped (lease.go). A rejected login comes back
// as the engine's error, for the caller to classify and recover from; any
// other failure comes back as the *SecretError Connect returns for it.
func (c *Connector) dial(ctx context.Context, creds *Credentials) (driver.Conn, error) {
	var l *lease
	if creds.expiring() {
		l = c.entry.leases.open(creds, c.pol)
	}
	conn, err := c.engine.Connect(ctx, creds)
	if l != nil {
		if err != nil {
			c.entry.leases.failed(l)
		} else {
			conn = c.entry.leases.opened(l, conn, &c.stats)
		}
	}
	if err != nil {
		if _, rejected := authFailure(err); !rejected {
			return nil, c.loginError(ctx, creds, err)
		}
		return nil, err
	}
	if creds.Stage != "" && creds.Stage == c.entry.pendingStage {
		c.stats.pendingUses.Add(1)
	}
	return conn, nil
}

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
