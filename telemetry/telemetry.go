// Package telemetry turns the events of pgsecrets connectors and pools into
// OpenTelemetry metrics and traces.
//
// Attach it with one option, to a connector, sql.Open's replacement or a
// pgx pool:
//
//	c, err := pgsecrets.NewConnector(dsn, telemetry.With())
//	db, err := pgsecrets.Open(dsn, telemetry.With())
//	pool, err := pgxsecrets.NewPool(ctx, dsn, telemetry.With())
//
// By default the global providers (otel.GetMeterProvider,
// otel.GetTracerProvider) are used; WithMeterProvider and
// WithTracerProvider choose others. The package depends on the
// OpenTelemetry API only: the application picks the SDK and exporters.
//
// Metrics are named pgsecrets.* (and db.client.connection.create_time, as
// the database client semantic conventions define it); their attributes are
// bounded: provider, secret id, stage, outcome or error class, SQLSTATE,
// never a version id, user, lease id, host from a secret or error text.
// Spans follow each physical connection: pgsecrets.connect, with the store
// calls, logins and recovery it made as children, in the trace of the
// context given to Connect. See README.md for the instruments, the spans
// and alerting rules.
//
// No password, token or secret content reaches a metric or a span: the
// events carry none (their error texts are redacted by pgsecrets).
package telemetry

import (
	"reflect"
	"sync"

	"github.com/pgsecrets/pgsecrets"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the meter and tracer.
const ScopeName = "github.com/pgsecrets/pgsecrets/telemetry"

// Version is the instrumentation scope version.
const Version = "0.1.0"

// Option configures Observer and With.
type Option func(*config)

type config struct {
	mp       metric.MeterProvider
	tp       trace.TracerProvider
	attrs    []attribute.KeyValue
	poolName string
}

// WithMeterProvider sets the meter provider (default: the global one,
// otel.GetMeterProvider, as it is when Observer is called).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) {
		if mp != nil {
			c.mp = mp
		}
	}
}

// WithTracerProvider sets the tracer provider (default: the global one,
// otel.GetTracerProvider, as it is when Observer is called).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) {
		if tp != nil {
			c.tp = tp
		}
	}
}

// WithAttributes adds attributes to every measurement and span (for
// example a service role). Keep them constant: each distinct set is a
// series of its own.
func WithAttributes(attrs ...attribute.KeyValue) Option {
	return func(c *config) { c.attrs = append(c.attrs, attrs...) }
}

// WithPoolName sets db.client.connection.pool.name on
// db.client.connection.create_time. The default is "address:port" of the
// server the DSN names; give each pool a name of its own when several reach
// the same server.
func WithPoolName(name string) Option {
	return func(c *config) { c.poolName = name }
}

// Observer returns an observer that records the events of the connectors it
// is given to (pgsecrets.WithObserver) as metrics and spans. Instruments
// are created once per meter provider, tracer provider and attribute set,
// and shared by every observer made with them, so that any number of
// connectors report into the same series. The error, if any, is the
// meter's (an instrument it refused); the observer is usable even then,
// without the instruments that failed.
func Observer(opts ...Option) (pgsecrets.Observer, error) {
	o, err := newObserver(opts...)
	return o, err
}

// With is pgsecrets.WithObserver(Observer(opts...)): the one option that
// attaches telemetry to pgsecrets.NewConnector, pgsecrets.Open or
// pgxsecrets.NewPool. An error creating instruments goes to otel.Handle.
func With(opts ...Option) pgsecrets.Option {
	o, err := newObserver(opts...)
	if err != nil {
		otel.Handle(err)
	}
	return pgsecrets.WithObserver(o)
}

func newObserver(opts ...Option) (*observer, error) {
	c := config{}
	for _, opt := range opts {
		opt(&c)
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	in, err := instrumentsFor(c.mp, c.tp, attribute.NewSet(c.attrs...))
	return &observer{in: in, poolName: c.poolName}, err
}

// setKey identifies one instrument set.
type setKey struct {
	mp    metric.MeterProvider
	tp    trace.TracerProvider
	attrs attribute.Distinct
}

var registry struct {
	sync.Mutex
	sets map[setKey]*instruments
}

// instrumentsFor returns the instrument set of mp, tp and attrs, creating it
// on first use. Providers whose dynamic type cannot be a map key get a set
// of their own each time.
func instrumentsFor(mp metric.MeterProvider, tp trace.TracerProvider, attrs attribute.Set) (*instruments, error) {
	if !comparable(mp) || !comparable(tp) {
		return newInstruments(mp, tp, attrs)
	}
	k := setKey{mp, tp, attrs.Equivalent()}
	registry.Lock()
	defer registry.Unlock()
	if in, ok := registry.sets[k]; ok {
		return in, nil
	}
	in, err := newInstruments(mp, tp, attrs)
	if registry.sets == nil {
		registry.sets = map[setKey]*instruments{}
	}
	registry.sets[k] = in
	return in, err
}

func comparable(v any) bool {
	t := reflect.TypeOf(v)
	// Pointers compare by identity; an empty struct (a noop provider) is
	// always equal to itself. Anything else could panic as a map key.
	return t != nil && (t.Kind() == reflect.Pointer || t.Kind() == reflect.Struct && t.Size() == 0)
}
