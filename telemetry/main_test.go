package telemetry_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/smtest"
	"github.com/pgsecrets/pgsecrets/telemetry"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestMain(m *testing.M) {
	// The AWS SDK finds static test credentials and never looks at this
	// machine's AWS files or the metadata service.
	restore := smtest.IsolateEnv()
	code := testdb.RunMain(m, testdb.Options{})
	restore()
	os.Exit(code)
}

// rig is one test's world: a role with a random password in the shared
// PostgreSQL, a Secrets Manager of its own holding the role's secret, and
// an SDK meter and tracer provider recording what the telemetry reports.
type rig struct {
	t        testing.TB
	pg       *testdb.Cluster
	sm       *smtest.Server
	role     string
	password string
	old      []string // every password the role had
	secretID string

	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
}

var roleSeq atomic.Int64

func newRig(t testing.TB) *rig {
	t.Helper()
	pg := testdb.Shared(t)
	r := &rig{t: t, pg: pg, sm: smtest.Start(t)}
	r.role = fmt.Sprintf("otel_%d_%d", os.Getpid(), roleSeq.Add(1))
	r.password = randomPassword()
	r.old = []string{r.password}
	r.secretID = "test/" + r.role
	if err := pg.CreateRole(context.Background(), r.role, r.password); err != nil {
		t.Fatal(err)
	}
	r.sm.CreateSecret(r.secretID, rdsSecret(r.role, r.password))
	r.reader = sdkmetric.NewManualReader()
	r.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(r.reader))
	r.spans = tracetest.NewSpanRecorder()
	r.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(r.spans))
	t.Cleanup(func() {
		_ = r.mp.Shutdown(context.Background())
		_ = r.tp.Shutdown(context.Background())
	})
	return r
}

func randomPassword() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "pw-" + hex.EncodeToString(b)
}

func rdsSecret(user, password string) string {
	b, _ := json.Marshal(map[string]any{"username": user, "password": password, "engine": "postgres"})
	return string(b)
}

// kv is a key=value DSN reaching the shared cluster over verified TLS,
// with the rig's secret.
func (r *rig) kv(extra string) string {
	return fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s %s",
		r.pg.Host(), r.pg.Port(), r.pg.CAFile(), r.secretID, r.sm.URL(), extra)
}

// with is the telemetry option on the rig's providers.
func (r *rig) with(opts ...telemetry.Option) pgsecrets.Option {
	return telemetry.With(append([]telemetry.Option{telemetry.WithMeterProvider(r.mp), telemetry.WithTracerProvider(r.tp)},
		opts...)...)
}

// open is a *sql.DB on a connector with telemetry and no idle connections
// (every query makes a connection).
func (r *rig) open(dsn string, opts ...pgsecrets.Option) (*sql.DB, *pgsecrets.Connector) {
	r.t.Helper()
	quiet := pgsecrets.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	c, err := pgsecrets.NewConnector(dsn, append([]pgsecrets.Option{quiet, r.with()}, opts...)...)
	if err != nil {
		r.t.Fatal(err)
	}
	db := sql.OpenDB(c)
	db.SetMaxIdleConns(0)
	r.t.Cleanup(func() { db.Close() })
	return db, c
}

// rotate changes the password in the database and then in the store (no
// pending stage): the cache still has the old one.
func (r *rig) rotate() {
	r.t.Helper()
	pw := randomPassword()
	if err := r.pg.SetPassword(context.Background(), r.role, pw); err != nil {
		r.t.Fatal(err)
	}
	if _, err := r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, pw)); err != nil {
		r.t.Fatal(err)
	}
	r.password = pw
	r.old = append(r.old, pw)
}

// metrics collects what the reader has.
func (r *rig) metrics() metrics {
	r.t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		r.t.Fatal(err)
	}
	var m metrics
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name == telemetry.ScopeName {
			m = append(m, sm.Metrics...)
		}
	}
	return m
}

type metrics []metricdata.Metrics

func (m metrics) get(name string) (metricdata.Metrics, bool) {
	i := slices.IndexFunc(m, func(x metricdata.Metrics) bool { return x.Name == name })
	if i < 0 {
		return metricdata.Metrics{}, false
	}
	return m[i], true
}

// matches reports whether set has every key=value of want.
func matches(set attribute.Set, want []string) bool {
	for _, kv := range want {
		k, v, _ := strings.Cut(kv, "=")
		got, ok := set.Value(attribute.Key(k))
		if !ok || got.Emit() != v {
			return false
		}
	}
	return true
}

// sum adds up the points of the counter or gauge name whose attributes
// have every key=value of want.
func (m metrics) sum(name string, want ...string) float64 {
	x, ok := m.get(name)
	if !ok {
		return 0
	}
	var total float64
	switch d := x.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				total += float64(p.Value)
			}
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				total += float64(p.Value)
			}
		}
	case metricdata.Gauge[float64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				total += p.Value
			}
		}
	}
	return total
}

// points counts the points of name whose attributes match want.
func (m metrics) points(name string, want ...string) int {
	x, ok := m.get(name)
	if !ok {
		return 0
	}
	n := 0
	for _, set := range attrSets(x) {
		if matches(set, want) {
			n++
		}
	}
	return n
}

// count is the number of measurements of the histogram name whose
// attributes match want.
func (m metrics) count(name string, want ...string) uint64 {
	x, ok := m.get(name)
	if !ok {
		return 0
	}
	var n uint64
	if d, ok := x.Data.(metricdata.Histogram[float64]); ok {
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				n += p.Count
			}
		}
	}
	return n
}

// attrSets are the attribute sets of every point of x.
func attrSets(x metricdata.Metrics) []attribute.Set {
	var out []attribute.Set
	switch d := x.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	case metricdata.Gauge[float64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	}
	return out
}

// leaks returns every text the metrics and spans carry that contains one
// of the passwords, and how many texts were looked at.
func (r *rig) leaks(m metrics, passwords []string) (found []string, texts int) {
	check := func(where, s string) {
		texts++
		for _, pw := range passwords {
			if strings.Contains(s, pw) {
				found = append(found, where+": "+s)
			}
		}
	}
	kvs := func(where string, kv []attribute.KeyValue) {
		for _, a := range kv {
			check(where, string(a.Key)+"="+a.Value.Emit())
		}
	}
	for _, x := range m {
		check("metric", x.Name+" "+x.Description)
		for _, set := range attrSets(x) {
			kvs(x.Name, set.ToSlice())
		}
	}
	for _, s := range r.spans.Ended() {
		check("span", s.Name())
		kvs(s.Name(), s.Attributes())
		check(s.Name()+" status", s.Status().Description)
		for _, ev := range s.Events() {
			check(s.Name()+" event", ev.Name)
			kvs(s.Name()+" event "+ev.Name, ev.Attributes)
		}
	}
	return found, texts
}

// waiter is an extra observer that signals when an event of a kind
// arrives.
type waiter struct {
	kind pgsecrets.EventKind
	ch   chan struct{}
	once atomic.Bool
}

func waitFor(kind pgsecrets.EventKind) *waiter {
	return &waiter{kind: kind, ch: make(chan struct{})}
}

func (w *waiter) Observe(ctx context.Context, e pgsecrets.Event) context.Context {
	if e.Kind == w.kind && w.once.CompareAndSwap(false, true) {
		close(w.ch)
	}
	return ctx
}

func (w *waiter) wait(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	select {
	case <-w.ch:
	case <-ctx.Done():
		t.Fatalf("no %s event within a minute", w.kind)
	}
}

type metricsOnly struct {
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
}

// newMetricsOnly is a meter provider of the test's own, for tests without
// a database.
func newMetricsOnly(t *testing.T) metricsOnly {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return metricsOnly{reader, mp}
}
