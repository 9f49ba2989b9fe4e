package telemetry_test

import (
	"context"
	"slices"
	"testing"

	"github.com/pgsecrets/pgsecrets/pgxsecrets"
	"github.com/pgsecrets/pgsecrets/telemetry"
)

// A pgx pool takes the same option and reports the same instruments and
// spans: a rotation met by the pool's next connection is one rejected
// login and one recovery, under the span of the call that needed the
// connection.
func TestPgxPool(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	p, err := pgxsecrets.NewPool(ctx, r.kv("pool_max_conns=1"), r.with())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	r.rotate()
	p.Reset() // the next call needs a new connection
	tctx, caller := r.tp.Tracer("app").Start(ctx, "query")
	if err := p.Ping(tctx); err != nil {
		t.Fatal(err)
	}
	caller.End()

	m := r.metrics()
	for _, c := range []struct {
		name string
		want []string
		n    float64
	}{
		{telemetry.MetricLogins, []string{"pgsecrets.outcome=rejected", "db.response.status_code=28P01"}, 1},
		{telemetry.MetricLogins, []string{"pgsecrets.outcome=ok", "pgsecrets.recovery=true"}, 1},
		{telemetry.MetricRecoveries, []string{"pgsecrets.outcome=ok"}, 1},
		{telemetry.MetricConnects, []string{"pgsecrets.outcome=ok"}, 2},
		{telemetry.MetricStoreRequests, nil, float64(r.sm.Calls("GetSecretValue"))},
	} {
		if got := m.sum(c.name, c.want...); got != c.n {
			t.Errorf("pool: %s%v = %v, want %v", c.name, c.want, got, c.n)
		}
	}
	if got := m.count(telemetry.MetricConnCreateTime, "db.system.name=postgresql"); got != 2 {
		t.Errorf("create_time: %d", got)
	}
	all := r.spans.Ended()
	cc := connectsUnder(t, all, caller)
	if len(cc) != 1 {
		t.Fatalf("%d connect spans under the caller's", len(cc))
	}
	if got := names(children(all, cc[0])); !slices.Contains(got, telemetry.SpanRecovery+"(AWSCURRENT)") {
		t.Errorf("pool connect's children: %v", got)
	}
	if found, _ := r.leaks(m, r.old); len(found) > 0 {
		t.Errorf("password leaked: %v", found)
	}
}
