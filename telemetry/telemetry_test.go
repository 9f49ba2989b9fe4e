package telemetry_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/smtest"
	"github.com/pgsecrets/pgsecrets/telemetry"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// attr is the value of span attribute k, "" if absent.
func attr(s sdktrace.ReadOnlySpan, k string) string {
	for _, a := range s.Attributes() {
		if string(a.Key) == k {
			return a.Value.Emit()
		}
	}
	return ""
}

// children are the ended spans whose parent is p, in start order.
func children(all []sdktrace.ReadOnlySpan, p sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range all {
		if s.Parent().SpanID() == p.SpanContext().SpanID() && s.Parent().TraceID() == p.SpanContext().TraceID() {
			out = append(out, s)
		}
	}
	return out
}

func names(spans []sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, s := range spans {
		n := s.Name()
		if st := attr(s, "pgsecrets.stage"); st != "" {
			n += "(" + st + ")"
		}
		out = append(out, n)
	}
	return out
}

// The caller's span and the connections made under it, by name.
func connectsUnder(t *testing.T, all []sdktrace.ReadOnlySpan, caller trace.Span) []sdktrace.ReadOnlySpan {
	t.Helper()
	var out []sdktrace.ReadOnlySpan
	for _, s := range all {
		if s.Name() == telemetry.SpanConnect && s.Parent().SpanID() == caller.SpanContext().SpanID() {
			if s.SpanContext().TraceID() != caller.SpanContext().TraceID() {
				t.Errorf("connect span in another trace than its caller")
			}
			out = append(out, s)
		}
	}
	return out
}

// A cold start, then a rotation the database saw first: each instrument
// moves by exactly what happened, the spans form the tree connect →
// recovery → login and store call under the caller's span, and no
// password reaches a metric or a span.
func TestRotation(t *testing.T) {
	r := newRig(t)
	db, _ := r.open(r.kv(""))
	tracer := r.tp.Tracer("app")

	ctx, cold := tracer.Start(context.Background(), "cold")
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	cold.End()
	m := r.metrics()
	for _, c := range []struct {
		name string
		want []string
		n    float64
	}{
		{telemetry.MetricServed, []string{"pgsecrets.outcome=waited", "pgsecrets.stage=AWSCURRENT"}, 1},
		{telemetry.MetricServed, nil, 1},
		{telemetry.MetricLogins, []string{"pgsecrets.outcome=ok", "pgsecrets.recovery=false"}, 1},
		{telemetry.MetricLogins, nil, 1},
		{telemetry.MetricStoreRequests, []string{"pgsecrets.outcome=ok", "pgsecrets.stage=AWSCURRENT",
			"pgsecrets.provider=awssm", "pgsecrets.secret_id=" + r.secretID}, 1},
		{telemetry.MetricConnects, []string{"pgsecrets.outcome=ok"}, 1},
		{telemetry.MetricBreakerState, []string{"pgsecrets.secret_id=" + r.secretID}, 0},
		{telemetry.MetricStoreFailing, nil, 0},
	} {
		if got := m.sum(c.name, c.want...); got != c.n {
			t.Errorf("cold start: %s%v = %v, want %v", c.name, c.want, got, c.n)
		}
	}
	if n := m.points(telemetry.MetricBreakerState, "pgsecrets.secret_id="+r.secretID); n != 1 {
		t.Errorf("breaker state: %d points, want 1 (closed, reported from the first connect)", n)
	}
	if n := m.points(telemetry.MetricTimeToExpiry); n != 0 {
		t.Errorf("time to expiry reported for credentials that never expire (%d points)", n)
	}

	r.rotate()
	ctx, rot := tracer.Start(context.Background(), "rotation")
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	rot.End()

	m = r.metrics()
	for _, c := range []struct {
		name string
		want []string
		n    float64
	}{
		{telemetry.MetricLogins, []string{"pgsecrets.outcome=rejected", "pgsecrets.recovery=false", "db.response.status_code=28P01"}, 1},
		{telemetry.MetricLogins, []string{"pgsecrets.outcome=rejected"}, 1},
		{telemetry.MetricLogins, []string{"pgsecrets.outcome=ok", "pgsecrets.recovery=true"}, 1},
		{telemetry.MetricLogins, []string{"pgsecrets.outcome=ok", "pgsecrets.recovery=false"}, 1},
		{telemetry.MetricLogins, []string{"pgsecrets.outcome=failed"}, 0},
		{telemetry.MetricRecoveries, []string{"pgsecrets.outcome=ok"}, 1},
		{telemetry.MetricRecoveries, nil, 1},
		{telemetry.MetricServed, []string{"pgsecrets.outcome=fresh"}, 1},
		{telemetry.MetricServed, []string{"pgsecrets.outcome=waited"}, 1},
		{telemetry.MetricServed, []string{"pgsecrets.outcome=stale"}, 0},
		{telemetry.MetricStoreRequests, []string{"pgsecrets.outcome=ok", "pgsecrets.stage=AWSCURRENT"}, 2},
		{telemetry.MetricStoreRequests, nil, float64(r.sm.Calls("GetSecretValue"))},
		{telemetry.MetricRotations, []string{"pgsecrets.stage=AWSCURRENT"}, 1},
		{telemetry.MetricConnects, []string{"pgsecrets.outcome=ok"}, 2},
		{telemetry.MetricConnects, nil, 2},
		{telemetry.MetricBreakerOpens, nil, 0},
		{telemetry.MetricBreakerState, nil, 0},
		{telemetry.MetricStoreUnavailable, nil, 0},
	} {
		if got := m.sum(c.name, c.want...); got != c.n {
			t.Errorf("rotation: %s%v = %v, want %v", c.name, c.want, got, c.n)
		}
	}
	// The recovery also asked for AWSPENDING, which this rotation did not
	// use: not found.
	if got := m.sum(telemetry.MetricStoreRequests, "pgsecrets.stage=AWSPENDING", "pgsecrets.outcome=not_found"); got < 1 {
		t.Errorf("AWSPENDING requests: %v", got)
	}
	if got := m.count(telemetry.MetricRecoveryDuration, "pgsecrets.outcome=ok"); got != 1 {
		t.Errorf("recovery durations: %d", got)
	}
	if got := m.count(telemetry.MetricStoreDuration); float64(got) < 3 {
		t.Errorf("store durations: %d, want at least 3 calls", got)
	}
	server := []string{"db.system.name=postgresql", "server.address=" + r.pg.Host(), fmt.Sprintf("server.port=%d", r.pg.Port()),
		fmt.Sprintf("db.client.connection.pool.name=%s:%d", r.pg.Host(), r.pg.Port())}
	if got := m.count(telemetry.MetricConnCreateTime, server...); got != 2 {
		t.Errorf("create_time: %d connections with %v", got, server)
	}
	// Bounded attributes only: no version id or user anywhere in metrics.
	for _, x := range m {
		for _, set := range attrSets(x) {
			for _, a := range set.ToSlice() {
				if strings.Contains(a.Value.Emit(), r.role) && a.Key != "pgsecrets.secret_id" {
					t.Errorf("%s: %s names the user", x.Name, a.Key)
				}
				if a.Key == "pgsecrets.version_id" || a.Key == "pgsecrets.user" {
					t.Errorf("%s has %s", x.Name, a.Key)
				}
			}
		}
	}

	// Spans.
	all := r.spans.Ended()
	cc := connectsUnder(t, all, cold)
	if len(cc) != 1 {
		t.Fatalf("cold start: %d connect spans under the caller's", len(cc))
	}
	if got, want := names(children(all, cc[0])), []string{"pgsecrets.store_call(AWSCURRENT)", "pgsecrets.login(AWSCURRENT)"}; !slices.Equal(got, want) {
		t.Errorf("cold connect's children: %v, want %v", got, want)
	}
	if c := cc[0]; c.SpanKind() != trace.SpanKindClient || attr(c, "server.address") != r.pg.Host() ||
		attr(c, "db.system.name") != "postgresql" || attr(c, "pgsecrets.outcome") != "ok" || c.Status().Code == codes.Error {
		t.Errorf("cold connect span: kind %v attrs %v status %v", c.SpanKind(), c.Attributes(), c.Status())
	}
	if !slices.ContainsFunc(cc[0].Events(), func(e sdktrace.Event) bool { return e.Name == "pgsecrets.served" }) {
		t.Errorf("cold connect has no served event: %v", cc[0].Events())
	}
	rc := connectsUnder(t, all, rot)
	if len(rc) != 1 {
		t.Fatalf("rotation: %d connect spans under the caller's", len(rc))
	}
	kids := children(all, rc[0])
	if got, want := names(kids), []string{"pgsecrets.login(AWSCURRENT)", "pgsecrets.recovery(AWSCURRENT)"}; !slices.Equal(got, want) {
		t.Fatalf("rotation connect's children: %v, want %v", got, want)
	}
	rejected, recovery := kids[0], kids[1]
	if rejected.Status().Code != codes.Error || attr(rejected, "db.response.status_code") != "28P01" ||
		attr(rejected, "pgsecrets.outcome") != "rejected" ||
		!slices.ContainsFunc(rejected.Events(), func(e sdktrace.Event) bool { return e.Name == "exception" }) {
		t.Errorf("rejected login span: status %v attrs %v events %v", rejected.Status(), rejected.Attributes(), rejected.Events())
	}
	if attr(recovery, "pgsecrets.outcome") != "ok" || attr(recovery, "pgsecrets.found.version_id") == attr(rejected, "pgsecrets.version_id") ||
		attr(recovery, "pgsecrets.found.version_id") == "" {
		t.Errorf("recovery span attributes: %v", recovery.Attributes())
	}
	var current, logins int
	for _, s := range children(all, recovery) {
		switch {
		case s.Name() == telemetry.SpanStoreCall && attr(s, "pgsecrets.stage") == "AWSCURRENT":
			current++
			if attr(s, "pgsecrets.outcome") != "ok" || attr(s, "pgsecrets.version_id") != attr(recovery, "pgsecrets.found.version_id") {
				t.Errorf("recovery's store call: %v", s.Attributes())
			}
		case s.Name() == telemetry.SpanStoreCall:
			if attr(s, "pgsecrets.outcome") != "not_found" || s.Status().Code != codes.Error {
				t.Errorf("recovery's AWSPENDING call: %v %v", s.Attributes(), s.Status())
			}
		case s.Name() == telemetry.SpanLogin:
			logins++
			if attr(s, "pgsecrets.recovery") != "true" || attr(s, "pgsecrets.outcome") != "ok" {
				t.Errorf("recovery's login: %v", s.Attributes())
			}
		default:
			t.Errorf("unexpected child of the recovery: %s", s.Name())
		}
	}
	if current != 1 || logins != 1 {
		t.Errorf("recovery's children: %d AWSCURRENT calls, %d logins; want 1 and 1", current, logins)
	}
	if attr(rc[0], "pgsecrets.recoveries") != "1" || rc[0].Status().Code == codes.Error {
		t.Errorf("rotation connect span: %v %v", rc[0].Attributes(), rc[0].Status())
	}

	found, texts := r.leaks(m, r.old)
	if texts < 50 {
		t.Errorf("leak check looked at only %d texts", texts)
	}
	for _, f := range found {
		t.Errorf("password leaked: %s", f)
	}
}

// An outage with credentials cached: connections get them stale, the
// outage is reported once with serving_cached=true, the store.failing gauge
// goes to 1 and back to 0 when the store answers again; every failed
// request is counted with its error class. Store calls made outside any
// Connect (Refresh, background refreshes) are root spans.
func TestOutage(t *testing.T) {
	r := newRig(t)
	unavailable, recovered := waitFor(pgsecrets.KindStoreUnavailable), waitFor(pgsecrets.KindStoreRecovered)
	db, c := r.open(r.kv("secret_ttl=1ms secret_max_stale=1h"), pgsecrets.WithObserver(unavailable), pgsecrets.WithObserver(recovered))
	ctx := context.Background()
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	remove := r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail})
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("with the store down and credentials cached: %v", err)
	}
	unavailable.wait(t)
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("with the store known down and credentials cached: %v", err)
	}
	m := r.metrics()
	if got := m.sum(telemetry.MetricStoreFailing, "pgsecrets.secret_id="+r.secretID); got != 1 {
		t.Errorf("store.failing during the outage: %v", got)
	}
	if got := m.sum(telemetry.MetricServed, "pgsecrets.outcome=stale"); got != 2 {
		t.Errorf("served stale: %v, want 2", got)
	}
	remove()
	for {
		_, err := c.Refresh(ctx) // may share a background call that still failed
		if err == nil {
			break
		}
		if !errors.Is(err, pgsecrets.ErrStoreUnavailable) {
			t.Fatal(err)
		}
	}
	recovered.wait(t)

	m = r.metrics()
	for _, c := range []struct {
		name string
		want []string
		n    float64
	}{
		{telemetry.MetricStoreUnavailable, []string{"pgsecrets.outcome=unavailable", "pgsecrets.serving_cached=true"}, 1},
		{telemetry.MetricStoreUnavailable, nil, 1},
		{telemetry.MetricStoreFailing, nil, 0},
		{telemetry.MetricServed, []string{"pgsecrets.outcome=stale"}, 2},
		{telemetry.MetricServed, []string{"pgsecrets.outcome=waited"}, 1},
		{telemetry.MetricConnects, []string{"pgsecrets.outcome=ok"}, 3},
		{telemetry.MetricLogins, []string{"pgsecrets.outcome=ok"}, 3},
		{telemetry.MetricStoreRequests, nil, float64(r.sm.Calls("GetSecretValue"))},
	} {
		if got := m.sum(c.name, c.want...); got != c.n {
			t.Errorf("outage: %s%v = %v, want %v", c.name, c.want, got, c.n)
		}
	}
	failed := m.sum(telemetry.MetricStoreRequests, "pgsecrets.outcome=unavailable")
	ok := m.sum(telemetry.MetricStoreRequests, "pgsecrets.outcome=ok")
	if failed < 1 || ok < 2 || failed+ok != float64(r.sm.Calls("GetSecretValue")) {
		t.Errorf("store requests: %v failed, %v ok, %d sent", failed, ok, r.sm.Calls("GetSecretValue"))
	}

	roots := 0
	ended := r.spans.Ended()
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range ended {
		byID[s.SpanContext().SpanID()] = s
	}
	for _, s := range ended {
		if s.Name() != telemetry.SpanStoreCall {
			continue
		}
		if !s.Parent().IsValid() {
			roots++
			continue
		}
		if p, ok := byID[s.Parent().SpanID()]; !ok || (p.Name() != telemetry.SpanConnect && p.Name() != telemetry.SpanRecovery) {
			t.Errorf("store call under neither a connect nor a recovery")
		}
	}
	if roots < 1 {
		t.Errorf("no root store_call span for the calls made outside Connect")
	}
	if found, _ := r.leaks(m, r.old); len(found) > 0 {
		t.Errorf("password leaked: %v", found)
	}
}

// A secret that never worked: the login is rejected, the one recovery
// round fails, the breaker opens (state 1) and the next connection is
// refused at once. Two connectors on the same secret share the breaker,
// and each hears of it: the opening is still counted once.
func TestWrongSecret(t *testing.T) {
	r := newRig(t)
	if _, err := r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, "wrong-"+randomPassword())); err != nil {
		t.Fatal(err)
	}
	hold := pgsecrets.WithBreakerOpenInterval(time.Hour)
	db, _ := r.open(r.kv(""), hold)
	db2, _ := r.open(r.kv(""), hold)
	ctx, caller := r.tp.Tracer("app").Start(context.Background(), "caller")
	if err := db.PingContext(ctx); !errors.Is(err, pgsecrets.ErrAuthFailed) {
		t.Fatalf("wrong secret: %v", err)
	}
	caller.End()
	if err := db2.PingContext(context.Background()); !errors.Is(err, pgsecrets.ErrCircuitOpen) {
		t.Fatalf("breaker open: %v", err)
	}
	m := r.metrics()
	for _, c := range []struct {
		name string
		want []string
		n    float64
	}{
		{telemetry.MetricBreakerState, []string{"pgsecrets.secret_id=" + r.secretID, "pgsecrets.provider=awssm"}, 1},
		{telemetry.MetricBreakerOpens, nil, 1},
		{telemetry.MetricBreakerRejections, nil, 1},
		{telemetry.MetricRecoveries, []string{"pgsecrets.outcome=failed"}, 1},
		{telemetry.MetricRecoveries, nil, 1},
		{telemetry.MetricLogins, []string{"pgsecrets.outcome=ok"}, 0},
		{telemetry.MetricLogins, []string{"pgsecrets.outcome=rejected", "pgsecrets.recovery=false", "db.response.status_code=28P01"}, 1},
		{telemetry.MetricConnects, []string{"pgsecrets.outcome=auth_failed"}, 1},
		{telemetry.MetricConnects, []string{"pgsecrets.outcome=circuit_open"}, 1},
		{telemetry.MetricConnects, nil, 2},
	} {
		if got := m.sum(c.name, c.want...); got != c.n {
			t.Errorf("wrong secret: %s%v = %v, want %v", c.name, c.want, got, c.n)
		}
	}
	if got := m.count(telemetry.MetricConnCreateTime); got != 0 {
		t.Errorf("create_time recorded %d failed connections", got)
	}
	all := r.spans.Ended()
	cc := connectsUnder(t, all, caller)
	if len(cc) != 1 {
		t.Fatalf("%d connect spans under the caller's", len(cc))
	}
	if s := cc[0]; s.Status().Code != codes.Error || attr(s, "pgsecrets.outcome") != "auth_failed" ||
		!strings.Contains(s.Status().Description, r.secretID) {
		t.Errorf("failed connect span: %v %v", s.Attributes(), s.Status())
	}
	rec := slices.IndexFunc(children(all, cc[0]), func(s sdktrace.ReadOnlySpan) bool { return s.Name() == telemetry.SpanRecovery })
	if rec < 0 {
		t.Fatalf("no recovery span under the connect: %v", names(children(all, cc[0])))
	}
	if s := children(all, cc[0])[rec]; attr(s, "pgsecrets.outcome") != "failed" || s.Status().Code != codes.Error {
		t.Errorf("failed recovery span: %v %v", s.Attributes(), s.Status())
	}
	if found, _ := r.leaks(m, r.old); len(found) > 0 {
		t.Errorf("password leaked: %v", found)
	}
}

// leaser hands out the rig's credentials as leases of an hour, renewable,
// and records revocations.
type leaser struct {
	user, password string
	n              atomic.Int64
	revoked        chan string
}

func (p *leaser) Fetch(context.Context, string) (*pgsecrets.Credentials, error) {
	n := p.n.Add(1)
	return &pgsecrets.Credentials{Username: p.user, Password: pgsecrets.NewSecret(p.password),
		VersionID: fmt.Sprintf("v%d", n), LeaseID: fmt.Sprintf("database/creds/app/lease%d", n),
		Expires: time.Now().Add(time.Hour), Renewable: true}, nil
}

func (p *leaser) Renew(_ context.Context, c *pgsecrets.Credentials, inc time.Duration) (time.Time, error) {
	return time.Now().Add(inc), nil
}

func (p *leaser) Revoke(_ context.Context, c *pgsecrets.Credentials) error {
	p.revoked <- c.LeaseID
	return nil
}

// Leases: one held while the connector is open, the time to expiry of the
// credentials served near an hour, connections retired none; the last
// Close revokes the lease (counted with reason closed) and the gauges
// drop it.
func TestLease(t *testing.T) {
	r := newRig(t)
	p := &leaser{user: r.role, password: r.password, revoked: make(chan string, 4)}
	db, c := r.open(r.kv(""), pgsecrets.WithProvider(p))
	if err := db.PingContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	m := r.metrics()
	if got := m.sum(telemetry.MetricLeasesHeld, "pgsecrets.secret_id="+r.secretID); got != 1 {
		t.Errorf("leases held: %v", got)
	}
	ttl := m.sum(telemetry.MetricTimeToExpiry, "pgsecrets.secret_id="+r.secretID)
	if n := m.points(telemetry.MetricTimeToExpiry); n != 1 || ttl <= 0 || ttl > 3600 {
		t.Errorf("time to expiry: %v s (%d points), want within the hour", ttl, n)
	}
	db.Close()
	c.Close()
	select {
	case <-p.revoked:
	case <-time.After(time.Minute):
		t.Fatal("the lease was not revoked at Close")
	}
	m = r.metrics()
	if got := m.sum(telemetry.MetricLeaseRevocations, "pgsecrets.outcome=ok", "pgsecrets.reason=closed"); got != 1 {
		t.Errorf("revocations at close: %v", got)
	}
	if got := m.sum(telemetry.MetricLeasesHeld, "pgsecrets.secret_id="+r.secretID); got != 0 {
		t.Errorf("leases held after Close: %v", got)
	}
	if n := m.points(telemetry.MetricTimeToExpiry); n != 0 {
		t.Errorf("time to expiry still reported for revoked credentials")
	}
	if n := m.points(telemetry.MetricLeasesHeld, "pgsecrets.secret_id="+r.secretID); n != 1 {
		t.Errorf("leases held: %d points, want a 0", n)
	}
}

// Events straight to an observer: the copies pgsecrets hands to every
// connector of a shared part count once, real repeats count again, and
// leases that end without being revoked stop being held.
func TestSharedEvents(t *testing.T) {
	r := &rig{t: t}
	rr := newMetricsOnly(t)
	r.reader = rr.reader
	a, err := telemetry.Observer(telemetry.WithMeterProvider(rr.mp))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := telemetry.Observer(telemetry.WithMeterProvider(rr.mp))
	both := func(e pgsecrets.Event) {
		e.Provider, e.SecretID = "vault", "db/creds/app"
		a.Observe(context.Background(), e)
		b.Observe(context.Background(), e)
	}
	now := time.Now()
	fail := func() error {
		return &pgsecrets.SecretError{Kind: pgsecrets.ErrStoreUnavailable, SecretID: "db/creds/app"}
	}
	both(pgsecrets.Event{Kind: pgsecrets.KindLeaseIssued, LeaseID: "l1", VersionID: "v1", Expires: now.Add(time.Hour)})
	both(pgsecrets.Event{Kind: pgsecrets.KindLeaseIssued, LeaseID: "l0", VersionID: "v0", Expires: now.Add(-time.Second)})
	both(pgsecrets.Event{Kind: pgsecrets.KindLeaseRenewed, LeaseID: "l1", Expires: now.Add(2 * time.Hour)})
	both(pgsecrets.Event{Kind: pgsecrets.KindLeaseRenewFailed, LeaseID: "l1", Err: fail(), Outcome: "unavailable", Expires: now.Add(2 * time.Hour)})
	both(pgsecrets.Event{Kind: pgsecrets.KindLeaseRenewFailed, LeaseID: "l1", Err: fail(), Outcome: "unavailable", Expires: now.Add(2 * time.Hour)})
	both(pgsecrets.Event{Kind: pgsecrets.KindBreakerOpen, SQLState: "28P01", Duration: time.Second})
	both(pgsecrets.Event{Kind: pgsecrets.KindBreakerClosed})
	both(pgsecrets.Event{Kind: pgsecrets.KindBreakerOpen, SQLState: "28P01", Duration: time.Second})
	a.Observe(context.Background(), pgsecrets.Event{Kind: pgsecrets.KindServed, Provider: "vault", SecretID: "db/creds/app",
		VersionID: "v1", Outcome: pgsecrets.ServedFresh, Expires: now.Add(time.Hour)})
	m := r.metrics()
	for _, c := range []struct {
		name string
		want []string
		n    float64
	}{
		{telemetry.MetricLeasesHeld, nil, 1}, // l0 ended without an event
		{telemetry.MetricLeaseRenewals, []string{"pgsecrets.outcome=ok"}, 1},
		{telemetry.MetricLeaseRenewals, []string{"pgsecrets.outcome=unavailable"}, 2},
		{telemetry.MetricBreakerOpens, nil, 2},
		{telemetry.MetricBreakerState, nil, 1},
	} {
		if got := m.sum(c.name, c.want...); got != c.n {
			t.Errorf("%s%v = %v, want %v", c.name, c.want, got, c.n)
		}
	}
	// The renewal moved the end of the credentials served beyond the end
	// they were fetched with.
	if ttl := m.sum(telemetry.MetricTimeToExpiry); ttl < 3600 || ttl > 7200 {
		t.Errorf("time to expiry %v s, want the renewed end (within two hours)", ttl)
	}
	both(pgsecrets.Event{Kind: pgsecrets.KindLeaseRevoked, LeaseID: "l1", Reason: "closed"})
	m = r.metrics()
	if got := m.sum(telemetry.MetricLeaseRevocations, "pgsecrets.reason=closed", "pgsecrets.outcome=ok"); got != 1 {
		t.Errorf("revocations: %v", got)
	}
	if got := m.sum(telemetry.MetricLeasesHeld); got != 0 {
		t.Errorf("held after revocation: %v", got)
	}
	if n := m.points(telemetry.MetricTimeToExpiry); n != 0 {
		t.Errorf("time to expiry of revoked credentials still reported")
	}
}

// One instrument set per provider set: observers made with the same
// providers share instruments, so two of them do not make two series, and
// the observable gauges are reported once.
func TestInstrumentsShared(t *testing.T) {
	rr := newMetricsOnly(t)
	for i := 0; i < 3; i++ {
		o, err := telemetry.Observer(telemetry.WithMeterProvider(rr.mp))
		if err != nil {
			t.Fatal(err)
		}
		o.Observe(context.Background(), pgsecrets.Event{Kind: pgsecrets.KindConnectStart, Provider: "awssm", SecretID: "s"})
		o.Observe(context.Background(), pgsecrets.Event{Kind: pgsecrets.KindWarning, Provider: "awssm", SecretID: "s",
			Warning: pgsecrets.EventWeakSSLMode, Attrs: nil})
	}
	r := &rig{t: t, reader: rr.reader}
	m := r.metrics()
	if n := m.points(telemetry.MetricBreakerState); n != 1 {
		t.Errorf("breaker state: %d points, want 1", n)
	}
	if got := m.sum(telemetry.MetricWarnings, "pgsecrets.warning="+pgsecrets.EventWeakSSLMode); got != 3 {
		t.Errorf("warnings: %v", got)
	}
	// Another attribute set is a series of its own.
	o, _ := telemetry.Observer(telemetry.WithMeterProvider(rr.mp), telemetry.WithAttributes(attribute.String("service.role", "reader")))
	o.Observe(context.Background(), pgsecrets.Event{Kind: pgsecrets.KindConnectStart, Provider: "awssm", SecretID: "s"})
	if n := r.metrics().points(telemetry.MetricBreakerState); n != 2 {
		t.Errorf("breaker state: %d points, want 2", n)
	}
}
