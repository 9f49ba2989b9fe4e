package telemetry_test

import (
	"context"
	"fmt"
	"log"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/smtest"
	"github.com/pgsecrets/pgsecrets/telemetry"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// Attach telemetry to a connector with one option, then read what a first
// connection reported. In an application the meter provider is the one the
// application set up (otel.SetMeterProvider, with a Prometheus or OTLP
// exporter) and With() needs no argument.
func Example() {
	pg := testdb.Current()
	if pg == nil {
		log.Fatal("examples need PostgreSQL: see internal/testdb")
	}
	sm := smtest.NewServer()
	defer sm.Close()
	ctx := context.Background()
	if err := pg.CreateRole(ctx, "telemetry_example", "example-pw"); err != nil {
		log.Fatal(err)
	}
	defer pg.DropRole(ctx, "telemetry_example")
	sm.CreateSecret("prod/app", `{"username":"telemetry_example","password":"example-pw"}`)
	dsn := fmt.Sprintf("postgres://%s:%d/postgres?sslmode=verify-full&sslrootcert=%s&secret_id=prod/app&secret_endpoint=%s",
		pg.Host(), pg.Port(), pg.CAFile(), sm.URL())

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(ctx)

	db, err := pgsecrets.Open(dsn, telemetry.With(telemetry.WithMeterProvider(mp)))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	var one int
	if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		log.Fatal(err)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok || (m.Name != telemetry.MetricServed && m.Name != telemetry.MetricLogins) {
				continue
			}
			for _, p := range sum.DataPoints {
				outcome, _ := p.Attributes.Value(telemetry.AttrOutcome)
				fmt.Printf("%s{outcome=%s} %d\n", m.Name, outcome.Emit(), p.Value)
			}
		}
	}
	// Unordered output:
	// pgsecrets.credentials.served{outcome=waited} 1
	// pgsecrets.logins{outcome=ok} 1
}
