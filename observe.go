package pgsecrets

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"slices"
	"time"
)

// One event stream: every fact pgsecrets logs or counts is emitted once, as
// an Event, to the observers of the connectors it concerns. The slog lines
// (events.go) and Stats are the two observers every connector has;
// WithObserver adds more (telemetry). Events are built where the fact
// happens (store.go, cache.go, target.go, recovery.go, lease.go,
// warnings.go) and nowhere else.

// EventKind says what an Event reports.
type EventKind uint8

// Event kinds. A kind ending in Start begins an operation whose End event
// follows on the same goroutine chain with the context the observers
// returned for the Start.
const (
	// KindConnectStart, KindConnectEnd: one physical connection is made
	// (Connector.Connect, or a pgxsecrets pool's new connection), logins
	// and recoveries included. End: Err, Duration, Count (logins the
	// database rejected on the way), Host, Port.
	KindConnectStart EventKind = iota + 1
	KindConnectEnd
	// KindLoginStart, KindLoginEnd: one login to the database with the
	// credentials of VersionID. End: Outcome (OutcomeOK, OutcomeRejected
	// or OutcomeFailed), SQLState, Duration.
	KindLoginStart
	KindLoginEnd
	// KindStoreCallStart, KindStoreCallEnd: one request to the secret store
	// for Stage. End: Outcome (OutcomeOK or the error class), VersionID,
	// Err, Duration.
	KindStoreCallStart
	KindStoreCallEnd
	// KindStoreUnavailable: the store started failing (once per outage);
	// VersionID is the cached version still served, if any. Outcome is the
	// class of the first error.
	KindStoreUnavailable
	// KindStoreRecovered: the first successful call after an outage; Count
	// is the number of failed calls.
	KindStoreRecovered
	// KindStoreWait: a new connection waits for a store call (a cold
	// cache, credentials past their TTL on an idle connector).
	KindStoreWait
	// KindServed: a new connection got credentials. Outcome: ServedFresh
	// (from the cache), ServedStale (past secret_ttl, the store failing) or
	// ServedWaited (after waiting for a store call). Duration: the age of
	// a stale credential; Expires: when the credentials stop being
	// usable for new logins (a lease's or a token's end), zero if never.
	KindServed
	// KindRotation: a fetch returned a new version (VersionID, after
	// PreviousVersionID).
	KindRotation
	// KindRecoveryStart, KindRecoveryEnd: the database rejected VersionID
	// (SQLState) and one recovery looks for credentials it accepts. End:
	// Outcome (OutcomeOK or OutcomeFailed), VersionID found, Err, Duration.
	KindRecoveryStart
	KindRecoveryEnd
	// KindPendingInUse: recovery found the pending stage (AWSPENDING)
	// working; new connections use VersionID until the configured stage
	// catches up.
	KindPendingInUse
	// KindBreakerOpen, KindBreakerClosed: the circuit breaker of the
	// secret and database changed state; Duration is how long it stays
	// open. KindBreakerRejected: a Connect failed fast on it.
	KindBreakerOpen
	KindBreakerClosed
	KindBreakerRejected
	// Leases (expiring credentials): issued (a new lease serves new
	// connections: LeaseID, Expires), renewed (Expires), capped at the
	// store's maximum TTL (Expires), renewal failed (Err), revoked (Reason:
	// superseded, unused, closed), revocation failed (Err).
	KindLeaseIssued
	KindLeaseRenewed
	KindLeaseCapped
	KindLeaseRenewFailed
	KindLeaseRevoked
	KindLeaseRevokeFailed
	// KindConnRetired: a connection was closed because its lease was about
	// to end.
	KindConnRetired
	// KindWarning: a configuration warning; Warning is its message (one of
	// the constants of events.go), Attrs its value-free details.
	KindWarning
)

var kindNames = [...]string{
	KindConnectStart: "connect.start", KindConnectEnd: "connect.end",
	KindLoginStart: "login.start", KindLoginEnd: "login.end",
	KindStoreCallStart: "store_call.start", KindStoreCallEnd: "store_call.end",
	KindStoreUnavailable: "store.unavailable", KindStoreRecovered: "store.recovered",
	KindStoreWait: "store.wait", KindServed: "served", KindRotation: "rotation",
	KindRecoveryStart: "recovery.start", KindRecoveryEnd: "recovery.end",
	KindPendingInUse: "pending_in_use",
	KindBreakerOpen:  "breaker.open", KindBreakerClosed: "breaker.closed", KindBreakerRejected: "breaker.rejected",
	KindLeaseIssued: "lease.issued", KindLeaseRenewed: "lease.renewed", KindLeaseCapped: "lease.capped",
	KindLeaseRenewFailed: "lease.renew_failed", KindLeaseRevoked: "lease.revoked", KindLeaseRevokeFailed: "lease.revoke_failed",
	KindConnRetired: "conn.retired", KindWarning: "warning",
}

// String returns the kind's stable name ("store_call.end").
func (k EventKind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return "unknown"
}

// Outcomes of Event.Outcome besides the error classes (see ErrorClass).
const (
	OutcomeOK       = "ok"
	OutcomeRejected = "rejected" // a login the database refused (28P01, 28000)
	OutcomeFailed   = "failed"   // a login that failed otherwise; a recovery that found nothing
	ServedFresh     = "fresh"
	ServedStale     = "stale"
	ServedWaited    = "waited"
)

// Event is one fact of pgsecrets' work. No field ever holds a password, a
// token or a secret's content; Err's text is redacted like every error
// pgsecrets returns. Fields a kind does not use are zero.
type Event struct {
	Kind EventKind
	// SecretID and Provider name the secret and its secret_provider.
	SecretID string
	Provider string
	// Stage and VersionID identify the credentials concerned;
	// PreviousVersionID the ones a rotation replaced.
	Stage             string
	VersionID         string
	PreviousVersionID string
	// User is the database user of the credentials, for the log only.
	User string
	// Outcome is the result of an End or KindServed event: OutcomeOK, an
	// outcome constant, or an error class (ErrorClass).
	Outcome  string
	SQLState string
	Err      error
	Duration time.Duration
	Count    int
	// Expires is a lease's or token's end, where the kind says.
	Expires time.Time
	LeaseID string
	Reason  string
	// Recovery marks a login made by a recovery (not by the caller).
	Recovery bool
	// Host and Port are the database server of a connect.
	Host, Port string
	// Warning and Attrs describe a KindWarning.
	Warning string
	Attrs   []slog.Attr
}

// An Observer receives a connector's events (WithObserver). Observe is
// called synchronously where the fact happens, possibly from several
// goroutines at once, and must return quickly without calling back into
// the connector. For a Start kind, the context it returns is the one the
// operation goes on with (and its End event carries): a tracer starts a
// span there. For other kinds the returned context is ignored; return ctx.
type Observer interface {
	Observe(ctx context.Context, e Event) context.Context
}

// ObserverFunc adapts a function to Observer.
type ObserverFunc func(ctx context.Context, e Event) context.Context

// Observe implements Observer.
func (f ObserverFunc) Observe(ctx context.Context, e Event) context.Context { return f(ctx, e) }

// WithObserver adds an observer to the connector's events, beside its log
// and Stats. Events of parts the connector shares with others (the cache,
// its leases, the breaker) reach the observers of every connector that
// shares them.
func WithObserver(o Observer) Option {
	return func(opts *options) {
		if o != nil {
			opts.observers = append(opts.observers, o)
		}
	}
}

// ErrorClass is a short, bounded name for err's kind, for an Outcome or a
// metric attribute: not_found, access_denied, malformed, throttled, unavailable,
// auth_failed, circuit_open, connect, closed, canceled, deadline, or other.
func ErrorClass(err error) string {
	switch {
	case err == nil:
		return OutcomeOK
	case errors.Is(err, ErrSecretNotFound):
		return "not_found"
	case errors.Is(err, ErrAccessDenied):
		return "access_denied"
	case errors.Is(err, ErrMalformedSecret):
		return "malformed"
	case errors.Is(err, ErrThrottled):
		return "throttled"
	case errors.Is(err, ErrStoreUnavailable):
		return "unavailable"
	case errors.Is(err, ErrAuthFailed):
		return "auth_failed"
	case errors.Is(err, ErrCircuitOpen):
		return "circuit_open"
	case errors.Is(err, ErrConnect):
		return "connect"
	case errors.Is(err, ErrClosed):
		return "closed"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	}
	return "other"
}

// observers are where one connector's events go: its log, its Stats and
// what WithObserver added.
type observers struct {
	log          *slog.Logger
	stats        *counters
	provider     string
	pendingStage string // the provider's (Staged), "" if none
	extra        []Observer
}

// emit hands e to every observer and returns the context the operation
// goes on with (for a Start kind).
func (o *observers) emit(ctx context.Context, e Event) context.Context {
	if ctx == nil {
		ctx = context.Background()
	}
	if e.Provider == "" {
		e.Provider = o.provider
	}
	o.count(e)
	o.logEvent(ctx, e)
	for _, x := range o.extra {
		if c := x.Observe(ctx, e); c != nil && isStart(e.Kind) {
			ctx = c
		}
	}
	return ctx
}

func isStart(k EventKind) bool {
	switch k {
	case KindConnectStart, KindLoginStart, KindStoreCallStart, KindRecoveryStart:
		return true
	}
	return false
}

// fanOut emits e to each of several connectors' observers: counted for
// each, logged once per distinct logger, and given once to each distinct
// added observer (connectors sharing a telemetry observer, or a logger,
// do not repeat the fact).
func fanOut(ctx context.Context, all []*observers, e Event) {
	var seen []Observer
	for i, o := range all {
		one := *o
		if slices.ContainsFunc(all[:i], func(p *observers) bool { return p.log == o.log }) {
			one.log = nil
		}
		one.extra = nil
		for _, x := range o.extra {
			if !slices.ContainsFunc(seen, func(y Observer) bool { return sameObserver(x, y) }) {
				seen = append(seen, x)
				one.extra = append(one.extra, x)
			}
		}
		one.emit(ctx, e)
	}
}

// sameObserver reports whether two observers are the same value; a
// function (ObserverFunc) is never the same as another.
func sameObserver(a, b Observer) bool {
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	return ta == tb && ta.Comparable() && a == b
}

// count is the Stats observer.
func (o *observers) count(e Event) {
	s := o.stats
	if s == nil {
		return
	}
	switch e.Kind {
	case KindStoreCallEnd:
		s.storeCalls.Add(int64(e.Count))
		if errors.Is(e.Err, ErrThrottled) {
			s.storeThrottled.Add(1)
		}
	case KindServed:
		switch e.Outcome {
		case ServedFresh:
			s.cacheHits.Add(1)
		case ServedStale:
			s.staleServes.Add(1)
		}
	case KindStoreWait:
		s.storeWaits.Add(1)
	case KindLoginEnd:
		switch {
		case e.Outcome == OutcomeRejected && !e.Recovery:
			s.authFailures.Add(1)
		case e.Outcome == OutcomeOK && e.Stage != "" && e.Stage == o.pendingStage:
			s.pendingUses.Add(1)
		}
	case KindConnectEnd:
		if e.Err == nil && e.Count > 0 {
			s.recovered.Add(1)
		}
	case KindBreakerRejected:
		s.breakerRejects.Add(1)
	case KindLeaseRenewed:
		s.leaseRenewals.Add(1)
	case KindLeaseRenewFailed:
		s.leaseRenewFailures.Add(1)
	case KindLeaseRevoked:
		s.leaseRevocations.Add(1)
	case KindConnRetired:
		s.connsRetired.Add(1)
	}
}

// logEvent is the slog observer: the lines of events.go, with their levels
// and attributes.
func (o *observers) logEvent(ctx context.Context, e Event) {
	if o.log == nil {
		return
	}
	level, msg := slog.LevelDebug, ""
	var attrs []any
	kv := func(a ...any) { attrs = append(attrs, a...) }
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	switch e.Kind {
	case KindStoreCallEnd:
		if errors.Is(e.Err, ErrClosed) {
			return // cut short by the last Close: nothing to say about the store
		}
		if e.Err == nil {
			msg = EventFetched
			kv("secret_id", e.SecretID, "stage", e.Stage, "version_id", e.VersionID, "duration", e.Duration.Round(time.Microsecond))
			break
		}
		msg, level = EventFetchFailed, slog.LevelWarn
		// During an outage each failed call is a debug line (the outage is
		// one warning); so is a missing pending stage, the usual case.
		if errors.Is(e.Err, ErrStoreUnavailable) || (e.Stage == o.pendingStage && errors.Is(e.Err, ErrSecretNotFound)) {
			level = slog.LevelDebug
		}
		kv("secret_id", e.SecretID, "stage", e.Stage, "error_kind", kindName(e.Err), "duration", e.Duration.Round(time.Microsecond))
	case KindStoreUnavailable:
		msg, level = EventStoreUnavailable, slog.LevelWarn
		kv("secret_id", e.SecretID, "stage", e.Stage, "cached_version_id", e.VersionID, "serving_cached", e.VersionID != "")
	case KindStoreRecovered:
		msg, level = EventStoreRecovered, slog.LevelInfo
		kv("secret_id", e.SecretID, "failed_calls", e.Count)
	case KindServed:
		if e.Outcome != ServedStale {
			return
		}
		msg = EventServingStale
		kv("secret_id", e.SecretID, "version_id", e.VersionID, "stage", e.Stage, "age", ms(e.Duration))
	case KindRotation:
		msg, level = EventRotationPickedUp, slog.LevelInfo
		kv("secret_id", e.SecretID, "stage", e.Stage, "version_id", e.VersionID, "previous_version_id", e.PreviousVersionID)
	case KindRecoveryStart:
		msg, level = EventAuthFailed, slog.LevelInfo
		kv("secret_id", e.SecretID, "stage", e.Stage, "version_id", e.VersionID, "user", e.User, "sqlstate", e.SQLState)
	case KindRecoveryEnd:
		if e.Outcome == OutcomeOK {
			msg, level = EventRecovered, slog.LevelInfo
			kv("secret_id", e.SecretID, "stage", e.Stage, "version_id", e.VersionID, "user", e.User, "took", ms(e.Duration))
			break
		}
		msg, level = EventRecoveryFailed, slog.LevelWarn
		kv("secret_id", e.SecretID, "stage", e.Stage, "version_id", e.VersionID, "user", e.User, "sqlstate", e.SQLState,
			"took", ms(e.Duration), "credentials_tried", e.Count)
	case KindPendingInUse:
		msg, level = EventUsingPending, slog.LevelInfo
		kv("secret_id", e.SecretID, "version_id", e.VersionID, "user", e.User)
	case KindBreakerOpen:
		msg, level = EventBreakerOpen, slog.LevelWarn
		kv("secret_id", e.SecretID, "sqlstate", e.SQLState, "open_for", e.Duration)
	case KindBreakerClosed:
		msg, level = EventBreakerClosed, slog.LevelInfo
		kv("secret_id", e.SecretID)
	case KindLeaseRenewed, KindLeaseCapped:
		msg = EventLeaseRenewed
		if e.Kind == KindLeaseCapped {
			msg, level = EventLeaseCapped, slog.LevelInfo
		}
		kv("secret_id", e.SecretID, "lease_id", e.LeaseID, "user", e.User, "expires_in", ms(time.Until(e.Expires)))
	case KindLeaseRenewFailed:
		msg, level = EventLeaseRenewFailed, slog.LevelWarn
		kv("secret_id", e.SecretID, "lease_id", e.LeaseID, "user", e.User, "error_kind", kindName(e.Err), "error", e.Err.Error(),
			"expires_in", ms(time.Until(e.Expires)))
	case KindLeaseRevoked:
		msg = EventLeaseRevoked
		kv("secret_id", e.SecretID, "lease_id", e.LeaseID, "user", e.User, "reason", e.Reason)
	case KindLeaseRevokeFailed:
		msg, level = EventLeaseRevokeFailed, slog.LevelWarn
		kv("secret_id", e.SecretID, "lease_id", e.LeaseID, "user", e.User, "reason", e.Reason, "error_kind", kindName(e.Err),
			"error", e.Err.Error())
	case KindWarning:
		msg, level = e.Warning, slog.LevelWarn
		if e.Warning == EventSecretFieldOverridden {
			level = slog.LevelDebug
		}
		kv("secret_id", e.SecretID)
		for _, a := range e.Attrs {
			attrs = append(attrs, a)
		}
	default:
		return // connects, logins, store call starts, lease issues, retirements: counted, not logged
	}
	if o.log.Enabled(ctx, level) {
		o.log.Log(ctx, level, msg, attrs...)
	}
}
