package telemetry

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
)

// Metric names (see README.md for units and attributes).
const (
	// MetricStoreRequests counts requests sent to the secret store.
	MetricStoreRequests = "pgsecrets.store.requests"
	// MetricStoreDuration is the duration of store calls.
	MetricStoreDuration = "pgsecrets.store.duration"
	// MetricStoreUnavailable counts store outages (their start).
	MetricStoreUnavailable = "pgsecrets.store.unavailable"
	// MetricStoreFailing is 1 while the store is failing.
	MetricStoreFailing = "pgsecrets.store.failing"
	// MetricRotations counts fetches that returned a new version.
	MetricRotations = "pgsecrets.rotations"
	// MetricServed counts credentials given to new connections.
	MetricServed = "pgsecrets.credentials.served"
	// MetricTimeToExpiry is the time left to the credentials served.
	MetricTimeToExpiry = "pgsecrets.credentials.time_to_expiry"
	// MetricConnects counts physical connections attempted.
	MetricConnects = "pgsecrets.connects"
	// MetricLogins counts logins to the database.
	MetricLogins = "pgsecrets.logins"
	// MetricRecoveries counts recoveries after a rejected login.
	MetricRecoveries = "pgsecrets.recoveries"
	// MetricRecoveryDuration is the duration of recoveries.
	MetricRecoveryDuration = "pgsecrets.recovery.duration"
	// MetricBreakerState is a secret's circuit breaker: 0 closed, 1 open.
	MetricBreakerState = "pgsecrets.breaker.state"
	// MetricBreakerOpens counts the breaker's openings.
	MetricBreakerOpens = "pgsecrets.breaker.opens"
	// MetricBreakerRejections counts connections the open breaker refused.
	MetricBreakerRejections = "pgsecrets.breaker.rejections"
	// MetricLeasesHeld is the number of leases held.
	MetricLeasesHeld = "pgsecrets.leases.held"
	// MetricLeaseRenewals counts lease renewals.
	MetricLeaseRenewals = "pgsecrets.lease.renewals"
	// MetricLeaseRevocations counts lease revocations.
	MetricLeaseRevocations = "pgsecrets.lease.revocations"
	// MetricConnsRetired counts connections retired before their lease's end.
	MetricConnsRetired = "pgsecrets.connections.retired"
	// MetricWarnings counts configuration warnings.
	MetricWarnings = "pgsecrets.warnings"
	// MetricConnCreateTime is the semantic conventions' connection
	// creation time.
	MetricConnCreateTime = "db.client.connection.create_time"
)

// Attribute keys of pgsecrets' own. Metrics use the bounded ones
// (provider, secret id, stage, outcome, recovery, serving_cached, reason,
// warning); spans use them all.
const (
	// AttrProvider is the secret_provider (awssm, vault, file, ...).
	AttrProvider = attribute.Key("pgsecrets.provider")
	// AttrSecretID is the secret_id.
	AttrSecretID = attribute.Key("pgsecrets.secret_id")
	// AttrStage is the version stage (AWSCURRENT, AWSPENDING).
	AttrStage = attribute.Key("pgsecrets.stage")
	// AttrOutcome is the event's outcome: ok, rejected, failed, fresh,
	// stale, waited, or an error class (pgsecrets.ErrorClass).
	AttrOutcome = attribute.Key("pgsecrets.outcome")
	// AttrRecovery marks a login a recovery made.
	AttrRecovery = attribute.Key("pgsecrets.recovery")
	// AttrServingCached says whether cached credentials were still served
	// when an outage began.
	AttrServingCached = attribute.Key("pgsecrets.serving_cached")
	// AttrReason is why a lease was revoked: superseded, unused, closed.
	AttrReason = attribute.Key("pgsecrets.reason")
	// AttrWarning is a configuration warning's message (a constant).
	AttrWarning = attribute.Key("pgsecrets.warning")
	// AttrVersionID is a secret version (spans only).
	AttrVersionID = attribute.Key("pgsecrets.version_id")
	// AttrRequests is the number of requests a store call sent (spans
	// only).
	AttrRequests = attribute.Key("pgsecrets.requests")
	// AttrRecoveries is the number of recoveries a connect went through
	// (spans only).
	AttrRecoveries = attribute.Key("pgsecrets.recoveries")
	// AttrCredentialsTried is the number of credentials a recovery tried
	// (spans only).
	AttrCredentialsTried = attribute.Key("pgsecrets.credentials_tried")
	// AttrAge is the age in seconds of stale credentials (span events).
	AttrAge = attribute.Key("pgsecrets.age")
	// AttrFoundStage and AttrFoundVersionID are the credentials a
	// successful recovery found (spans only).
	AttrFoundStage     = attribute.Key("pgsecrets.found.stage")
	AttrFoundVersionID = attribute.Key("pgsecrets.found.version_id")
)

// Semantic convention attribute keys (database client).
const (
	attrDBSystem   = attribute.Key("db.system.name")
	attrStatusCode = attribute.Key("db.response.status_code")
	attrPoolName   = attribute.Key("db.client.connection.pool.name")
	attrAddress    = attribute.Key("server.address")
	attrPort       = attribute.Key("server.port")
)

// instruments is one instrument set: the meter's instruments and tracer of
// one provider pair and attribute set, the state behind its observable
// instruments, and the attribute sets measurements use (built once).
type instruments struct {
	tracer trace.Tracer
	attrs  attribute.Set // WithAttributes
	extra  []attribute.KeyValue

	storeRequests, storeUnavailable, rotations, served, connects, logins, recoveries,
	breakerOpens, breakerRejections, leaseRenewals, leaseRevocations, connsRetired, warnings metric.Int64Counter
	storeDuration, recoveryDuration, createTime metric.Float64Histogram

	st    *state
	opts  sync.Map // attrKey → metric.MeasurementOption
	reg   metric.Registration
	spans trace.SpanStartOption // the extra attributes, on every span
}

func newInstruments(mp metric.MeterProvider, tp trace.TracerProvider, attrs attribute.Set) (*instruments, error) {
	in := &instruments{
		tracer: tp.Tracer(ScopeName, trace.WithInstrumentationVersion(Version)),
		attrs:  attrs,
		extra:  attrs.ToSlice(),
		st:     newState(),
	}
	in.spans = trace.WithAttributes(in.extra...)
	m := mp.Meter(ScopeName, metric.WithInstrumentationVersion(Version))
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		if err != nil || c == nil {
			errs = append(errs, err)
			c, _ = noop.Meter{}.Int64Counter(name)
		}
		return c
	}
	histogram := func(name, desc string, bounds ...float64) metric.Float64Histogram {
		h, err := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(bounds...))
		if err != nil || h == nil {
			errs = append(errs, err)
			h, _ = noop.Meter{}.Float64Histogram(name)
		}
		return h
	}
	in.storeRequests = counter(MetricStoreRequests, "{request}",
		"Requests sent to the secret store (hedged calls send two), by outcome: ok or the error class.")
	in.storeDuration = histogram(MetricStoreDuration,
		"Duration of secret store calls, hedged requests included, by outcome.",
		0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
	in.storeUnavailable = counter(MetricStoreUnavailable, "{outage}",
		"Outages of the secret store: times it started failing, by the class of the first error and whether cached credentials were still served.")
	in.rotations = counter(MetricRotations, "{rotation}",
		"Store fetches that returned a new version of the secret.")
	in.served = counter(MetricServed, "{connection}",
		"Credentials given to new connections, by outcome: fresh (from the cache), stale (past secret_ttl, the store failing) or waited (after waiting for a store call).")
	in.connects = counter(MetricConnects, "{connection}",
		"Physical connections attempted, by outcome: ok or the error class of the failure.")
	in.logins = counter(MetricLogins, "{login}",
		"Logins to the database, by outcome (ok, rejected, failed), SQLSTATE and whether a recovery made them.")
	in.recoveries = counter(MetricRecoveries, "{recovery}",
		"Recoveries after the database rejected credentials, by outcome: ok (credentials it accepts were found) or failed.")
	in.recoveryDuration = histogram(MetricRecoveryDuration,
		"Duration of recoveries after the database rejected credentials, by outcome.",
		0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
	in.breakerOpens = counter(MetricBreakerOpens, "{opening}",
		"Times the circuit breaker of a secret opened after a recovery found no credentials the database accepts.")
	in.breakerRejections = counter(MetricBreakerRejections, "{connection}",
		"Connections refused at once because the circuit breaker was open.")
	in.leaseRenewals = counter(MetricLeaseRenewals, "{renewal}",
		"Lease renewals, by outcome: ok or the error class.")
	in.leaseRevocations = counter(MetricLeaseRevocations, "{revocation}",
		"Lease revocations, by outcome (ok or the error class) and reason (superseded, unused, closed).")
	in.connsRetired = counter(MetricConnsRetired, "{connection}",
		"Connections closed because the lease of their credentials was about to end.")
	in.warnings = counter(MetricWarnings, "{warning}",
		"Configuration warnings, by message.")
	in.createTime = histogram(MetricConnCreateTime,
		"The time it took to create a new connection",
		0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10)

	breaker, err1 := m.Int64ObservableGauge(MetricBreakerState, metric.WithUnit("{state}"),
		metric.WithDescription("State of the circuit breaker of a secret: 0 closed, 1 open (half-open counts as open until a probe succeeds)."))
	failing, err2 := m.Int64ObservableGauge(MetricStoreFailing, metric.WithUnit("{state}"),
		metric.WithDescription("1 while the secret store is failing (between an outage's first failed call and the next successful one), else 0."))
	held, err3 := m.Int64ObservableUpDownCounter(MetricLeasesHeld, metric.WithUnit("{lease}"),
		metric.WithDescription("Leases held: issued, and neither revoked nor past their end."))
	expiry, err4 := m.Float64ObservableGauge(MetricTimeToExpiry, metric.WithUnit("s"),
		metric.WithDescription("Time until the credentials new connections get stop being usable for logins (a lease's or token's end); absent for credentials that do not expire."))
	errs = append(errs, err1, err2, err3, err4)
	if breaker != nil && failing != nil && held != nil && expiry != nil {
		reg, err := m.RegisterCallback(func(_ context.Context, obs metric.Observer) error {
			in.st.observe(time.Now(), func(k secKey, breakerOpen, storeFailing int64, leases int64, hasLeases bool, ttl float64, hasTTL bool) {
				o := in.opt(attrKey{provider: k.provider, secret: k.secret})
				obs.ObserveInt64(breaker, breakerOpen, o)
				obs.ObserveInt64(failing, storeFailing, o)
				if hasLeases {
					obs.ObserveInt64(held, leases, o)
				}
				if hasTTL {
					obs.ObserveFloat64(expiry, ttl, o)
				}
			})
			return nil
		}, breaker, failing, held, expiry)
		in.reg = reg
		errs = append(errs, err)
	}
	return in, errors.Join(errs...)
}

// flag is an optional boolean attribute.
type flag int8

const (
	none flag = iota
	no
	yes
)

// attrKey is the bounded content of a measurement's attribute set.
type attrKey struct {
	provider, secret, stage, outcome, sqlstate, reason, warning string
	recovery, servingCached                                     flag
}

// opt returns the measurement option for k, building its attribute set on
// first use.
func (in *instruments) opt(k attrKey) metric.MeasurementOption {
	if o, ok := in.opts.Load(k); ok {
		return o.(metric.MeasurementOption)
	}
	kv := make([]attribute.KeyValue, 0, 8+len(in.extra))
	kv = append(kv, in.extra...)
	add := func(key attribute.Key, v string) {
		if v != "" {
			kv = append(kv, key.String(v))
		}
	}
	add(AttrProvider, k.provider)
	add(AttrSecretID, k.secret)
	add(AttrStage, k.stage)
	add(AttrOutcome, k.outcome)
	add(attrStatusCode, k.sqlstate)
	add(AttrReason, k.reason)
	add(AttrWarning, k.warning)
	if k.recovery != none {
		kv = append(kv, AttrRecovery.Bool(k.recovery == yes))
	}
	if k.servingCached != none {
		kv = append(kv, AttrServingCached.Bool(k.servingCached == yes))
	}
	o := metric.WithAttributeSet(attribute.NewSet(kv...))
	actual, _ := in.opts.LoadOrStore(k, o)
	return actual.(metric.MeasurementOption)
}

func boolFlag(b bool) flag {
	if b {
		return yes
	}
	return no
}
