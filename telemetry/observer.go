package telemetry

import (
	"context"
	"net"
	"strconv"
	"sync"

	"github.com/pgsecrets/pgsecrets"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Span names.
const (
	// SpanConnect is one physical connection (kind client), from
	// Connect (or a pool's new connection) to its end, recoveries
	// included.
	SpanConnect = "pgsecrets.connect"
	// SpanLogin is one login to the database (kind client).
	SpanLogin = "pgsecrets.login"
	// SpanStoreCall is one call to the secret store, hedged requests
	// included (kind client).
	SpanStoreCall = "pgsecrets.store_call"
	// SpanRecovery is one recovery after a rejected login (kind internal).
	SpanRecovery = "pgsecrets.recovery"
)

// observer is what Observer returns: an instrument set and this observer's
// own settings. Its spans travel in the context under its own key, so that
// an End event ends the span this observer started even when other
// observers started spans too.
type observer struct {
	in       *instruments
	poolName string
	pools    sync.Map // poolKey → metric.MeasurementOption
}

type spanKey struct{ o *observer }

type poolKey struct{ host, port string }

// Observe implements pgsecrets.Observer.
func (o *observer) Observe(ctx context.Context, e pgsecrets.Event) context.Context {
	in := o.in
	k := secKey{e.Provider, e.SecretID}
	switch e.Kind {
	case pgsecrets.KindConnectStart:
		in.st.secret(k) // the secret's gauges start at 0
		return o.start(ctx, SpanConnect, trace.SpanKindClient, e,
			attrDBSystem.String("postgresql"), attrAddress.String(e.Host), attrPort.Int(port(e.Port)))
	case pgsecrets.KindConnectEnd:
		in.connects.Add(ctx, 1, in.opt(attrKey{provider: e.Provider, secret: e.SecretID, outcome: e.Outcome}))
		if e.Err == nil {
			in.createTime.Record(ctx, e.Duration.Seconds(), o.pool(e.Host, e.Port))
		}
		o.end(ctx, e, AttrOutcome.String(e.Outcome), AttrRecoveries.Int(e.Count))

	case pgsecrets.KindLoginStart:
		return o.start(ctx, SpanLogin, trace.SpanKindClient, e, AttrStage.String(e.Stage), AttrVersionID.String(e.VersionID))
	case pgsecrets.KindLoginEnd:
		in.logins.Add(ctx, 1, in.opt(attrKey{provider: e.Provider, secret: e.SecretID, stage: e.Stage, outcome: e.Outcome,
			sqlstate: e.SQLState, recovery: boolFlag(e.Recovery)}))
		o.end(ctx, e, AttrOutcome.String(e.Outcome), attrStatusCode.String(e.SQLState), AttrRecovery.Bool(e.Recovery))

	case pgsecrets.KindStoreCallStart:
		return o.start(ctx, SpanStoreCall, trace.SpanKindClient, e, AttrStage.String(e.Stage))
	case pgsecrets.KindStoreCallEnd:
		ko := in.opt(attrKey{provider: e.Provider, secret: e.SecretID, stage: e.Stage, outcome: e.Outcome})
		if e.Count > 0 {
			in.storeRequests.Add(ctx, int64(e.Count), ko)
		}
		in.storeDuration.Record(ctx, e.Duration.Seconds(), ko)
		o.end(ctx, e, AttrOutcome.String(e.Outcome), AttrVersionID.String(e.VersionID), AttrRequests.Int(e.Count))

	case pgsecrets.KindRecoveryStart:
		return o.start(ctx, SpanRecovery, trace.SpanKindInternal, e, AttrStage.String(e.Stage),
			AttrVersionID.String(e.VersionID), attrStatusCode.String(e.SQLState))
	case pgsecrets.KindRecoveryEnd:
		ko := in.opt(attrKey{provider: e.Provider, secret: e.SecretID, outcome: e.Outcome})
		in.recoveries.Add(ctx, 1, ko)
		in.recoveryDuration.Record(ctx, e.Duration.Seconds(), ko)
		attrs := []attribute.KeyValue{AttrOutcome.String(e.Outcome), AttrCredentialsTried.Int(e.Count)}
		if e.Err == nil {
			// On success Stage and VersionID are the credentials found.
			attrs = append(attrs, AttrFoundStage.String(e.Stage), AttrFoundVersionID.String(e.VersionID))
		}
		o.end(ctx, e, attrs...)

	case pgsecrets.KindServed:
		in.served.Add(ctx, 1, in.opt(attrKey{provider: e.Provider, secret: e.SecretID, stage: e.Stage, outcome: e.Outcome}))
		in.st.served(k, e.VersionID, e.Expires)
		if span := trace.SpanFromContext(ctx); span.IsRecording() {
			attrs := []attribute.KeyValue{AttrOutcome.String(e.Outcome), AttrStage.String(e.Stage), AttrVersionID.String(e.VersionID)}
			if e.Outcome == pgsecrets.ServedStale {
				attrs = append(attrs, AttrAge.Float64(e.Duration.Seconds()))
			}
			span.AddEvent("pgsecrets.served", trace.WithAttributes(attrs...))
		}
	case pgsecrets.KindStoreWait:
		spanEvent(ctx, "pgsecrets.store.wait", AttrStage.String(e.Stage))
	case pgsecrets.KindRotation:
		in.rotations.Add(ctx, 1, in.opt(attrKey{provider: e.Provider, secret: e.SecretID, stage: e.Stage}))
	case pgsecrets.KindPendingInUse:
		spanEvent(ctx, "pgsecrets.pending_in_use", AttrStage.String(e.Stage), AttrVersionID.String(e.VersionID))
	case pgsecrets.KindStoreUnavailable:
		in.st.secret(k).storeFailing.Store(1)
		in.storeUnavailable.Add(ctx, 1, in.opt(attrKey{provider: e.Provider, secret: e.SecretID, stage: e.Stage,
			outcome: e.Outcome, servingCached: boolFlag(e.VersionID != "")}))
		spanEvent(ctx, "pgsecrets.store.unavailable", AttrOutcome.String(e.Outcome), AttrServingCached.Bool(e.VersionID != ""))
	case pgsecrets.KindStoreRecovered:
		in.st.secret(k).storeFailing.Store(0)
		spanEvent(ctx, "pgsecrets.store.recovered", attribute.Int("pgsecrets.failed_calls", e.Count))

	case pgsecrets.KindBreakerOpen:
		if in.st.first(k, e) {
			in.st.secret(k).breakerOpen.Store(1)
			in.breakerOpens.Add(ctx, 1, in.opt(attrKey{provider: e.Provider, secret: e.SecretID}))
		}
	case pgsecrets.KindBreakerClosed:
		if in.st.first(k, e) {
			in.st.secret(k).breakerOpen.Store(0)
		}
	case pgsecrets.KindBreakerRejected:
		in.breakerRejections.Add(ctx, 1, in.opt(attrKey{provider: e.Provider, secret: e.SecretID}))

	case pgsecrets.KindLeaseIssued, pgsecrets.KindLeaseCapped:
		if in.st.first(k, e) {
			in.st.lease(k, e)
		}
	case pgsecrets.KindLeaseRenewed, pgsecrets.KindLeaseRenewFailed:
		if in.st.first(k, e) {
			in.st.lease(k, e)
			in.leaseRenewals.Add(ctx, 1, in.opt(attrKey{provider: e.Provider, secret: e.SecretID, outcome: outcome(e)}))
		}
	case pgsecrets.KindLeaseRevoked, pgsecrets.KindLeaseRevokeFailed:
		if in.st.first(k, e) {
			in.st.lease(k, e)
			in.leaseRevocations.Add(ctx, 1, in.opt(attrKey{provider: e.Provider, secret: e.SecretID, outcome: outcome(e),
				reason: e.Reason}))
		}
	case pgsecrets.KindConnRetired:
		in.connsRetired.Add(ctx, 1, in.opt(attrKey{provider: e.Provider, secret: e.SecretID}))
	case pgsecrets.KindWarning:
		in.warnings.Add(ctx, 1, in.opt(attrKey{provider: e.Provider, secret: e.SecretID, warning: e.Warning}))
	}
	return ctx
}

// outcome is e's Outcome, ok for a success that does not set it.
func outcome(e pgsecrets.Event) string {
	if e.Outcome != "" {
		return e.Outcome
	}
	if e.Err != nil {
		return pgsecrets.ErrorClass(e.Err)
	}
	return pgsecrets.OutcomeOK
}

// start begins a span for a Start event, a child of ctx's.
func (o *observer) start(ctx context.Context, name string, kind trace.SpanKind, e pgsecrets.Event, attrs ...attribute.KeyValue) context.Context {
	attrs = append(attrs, AttrProvider.String(e.Provider), AttrSecretID.String(e.SecretID))
	ctx, span := o.in.tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs...), o.in.spans)
	return context.WithValue(ctx, spanKey{o}, span)
}

// end ends the span this observer started for the operation e ends.
func (o *observer) end(ctx context.Context, e pgsecrets.Event, attrs ...attribute.KeyValue) {
	span, ok := ctx.Value(spanKey{o}).(trace.Span)
	if !ok {
		return
	}
	if span.IsRecording() {
		span.SetAttributes(attrs...)
		if e.Err != nil {
			// The text is pgsecrets' redacted error: ids, stages and
			// SQLSTATEs, never a credential.
			span.RecordError(e.Err)
			span.SetStatus(codes.Error, e.Err.Error())
		}
	}
	span.End()
}

func spanEvent(ctx context.Context, name string, attrs ...attribute.KeyValue) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.AddEvent(name, trace.WithAttributes(attrs...))
	}
}

// pool is the attribute set of db.client.connection.create_time.
func (o *observer) pool(host, p string) metric.MeasurementOption {
	k := poolKey{host, p}
	if v, ok := o.pools.Load(k); ok {
		return v.(metric.MeasurementOption)
	}
	name := o.poolName
	if name == "" {
		name = net.JoinHostPort(host, p)
	}
	kv := append([]attribute.KeyValue{}, o.in.extra...)
	kv = append(kv, attrDBSystem.String("postgresql"), attrPoolName.String(name), attrAddress.String(host),
		attrPort.Int(port(p)))
	v, _ := o.pools.LoadOrStore(k, metric.WithAttributeSet(attribute.NewSet(kv...)))
	return v.(metric.MeasurementOption)
}

func port(p string) int {
	n, _ := strconv.Atoi(p)
	return n
}
