package telemetry_test

import (
	"context"
	"database/sql/driver"
	"io"
	"log/slog"
	"testing"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/telemetry"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Benchmarks compare a connector with telemetry (SDK meter and tracer
// providers, every span sampled and handed to a processor) and one without,
// same server, same secret, in the same run. Report the ratio:
//
//	go test -run '^$' -bench Connect -count 10 . > bench.txt && benchstat -col /observer bench.txt

// discard is a span processor that drops what it is given.
type discard struct{}

func (discard) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (discard) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (discard) Shutdown(context.Context) error                  { return nil }
func (discard) ForceFlush(context.Context) error                { return nil }

func benchProviders(b *testing.B) (*sdkmetric.MeterProvider, *sdktrace.TracerProvider) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(discard{}))
	b.Cleanup(func() {
		_ = mp.Shutdown(context.Background())
		_ = tp.Shutdown(context.Background())
	})
	return mp, tp
}

// BenchmarkConnect: a new connection (TLS + SCRAM login), the secret
// cached, with and without telemetry.
func BenchmarkConnect(b *testing.B) {
	r := newRig(b)
	mp, tp := benchProviders(b)
	quiet := pgsecrets.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	connector := func(opts ...pgsecrets.Option) driver.Connector {
		c, err := pgsecrets.NewConnector(r.kv("secret_ttl=1h"), append([]pgsecrets.Option{quiet}, opts...)...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		conn, err := c.Connect(context.Background()) // warm the cache
		if err != nil {
			b.Fatal(err)
		}
		conn.Close()
		return c
	}
	plain := connector()
	otel := connector(telemetry.With(telemetry.WithMeterProvider(mp), telemetry.WithTracerProvider(tp)))
	for _, bc := range []struct {
		name string
		c    driver.Connector
	}{{"observer=none", plain}, {"observer=otel", otel}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			for b.Loop() {
				conn, err := bc.c.Connect(ctx)
				if err != nil {
					b.Fatal(err)
				}
				conn.Close()
			}
		})
	}
}

// BenchmarkObserveServed: the observer's cost for the event every
// connection with cached credentials emits, inside a recording connect
// span.
func BenchmarkObserveServed(b *testing.B) {
	mp, tp := benchProviders(b)
	o, err := telemetry.Observer(telemetry.WithMeterProvider(mp), telemetry.WithTracerProvider(tp))
	if err != nil {
		b.Fatal(err)
	}
	ctx := o.Observe(context.Background(), pgsecrets.Event{Kind: pgsecrets.KindConnectStart, Provider: "awssm",
		SecretID: "prod/app/db", Host: "db.internal", Port: "5432"})
	e := pgsecrets.Event{Kind: pgsecrets.KindServed, Provider: "awssm", SecretID: "prod/app/db", Stage: "AWSCURRENT",
		VersionID: "3f1c", Outcome: pgsecrets.ServedFresh}
	b.Run("span=recording", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			o.Observe(ctx, e)
		}
	})
	b.Run("span=none", func(b *testing.B) {
		b.ReportAllocs()
		bg := context.Background()
		for b.Loop() {
			o.Observe(bg, e)
		}
	})
}

// BenchmarkObserveConnect: the observer's whole cost for one connection
// with cached credentials (the events of such a Connect, spans and
// metrics), without the database: what observer=otel adds to
// BenchmarkConnect, measured apart from the login's noise.
func BenchmarkObserveConnect(b *testing.B) {
	mp, tp := benchProviders(b)
	o, err := telemetry.Observer(telemetry.WithMeterProvider(mp), telemetry.WithTracerProvider(tp))
	if err != nil {
		b.Fatal(err)
	}
	base := pgsecrets.Event{Provider: "awssm", SecretID: "prod/app/db", Stage: "AWSCURRENT", VersionID: "3f1c",
		Host: "db.internal", Port: "5432"}
	ev := func(k pgsecrets.EventKind, outcome string) pgsecrets.Event {
		e := base
		e.Kind, e.Outcome = k, outcome
		return e
	}
	start, served := ev(pgsecrets.KindConnectStart, ""), ev(pgsecrets.KindServed, pgsecrets.ServedFresh)
	loginStart, loginEnd := ev(pgsecrets.KindLoginStart, ""), ev(pgsecrets.KindLoginEnd, pgsecrets.OutcomeOK)
	end := ev(pgsecrets.KindConnectEnd, pgsecrets.OutcomeOK)
	b.ReportAllocs()
	bg := context.Background()
	for b.Loop() {
		ctx := o.Observe(bg, start)
		o.Observe(ctx, served)
		lctx := o.Observe(ctx, loginStart)
		o.Observe(lctx, loginEnd)
		o.Observe(ctx, end)
	}
}
