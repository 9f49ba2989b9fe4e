package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/telemetry"
)

// The demo with --metrics ADDR: the connector's telemetry (the telemetry
// module on the OpenTelemetry SDK) served in the Prometheus format at
// http://ADDR/metrics while the demo runs, and the same figures in its
// summary.

type metricsServer struct {
	reg  *prometheus.Registry
	mp   *sdkmetric.MeterProvider
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
	opt  pgsecrets.Option
}

// startMetrics listens on addr and serves /metrics from a meter provider
// of its own, which opt attaches to a connector.
func startMetrics(addr string) (*metricsServer, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
	if err != nil {
		return nil, err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	obs, err := telemetry.Observer(telemetry.WithMeterProvider(mp))
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	m := &metricsServer{reg: reg, mp: mp, ln: ln, done: make(chan struct{}), opt: pgsecrets.WithObserver(obs),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}
	go func() {
		defer close(m.done)
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Printf("pgsecrets demo: metrics server: %v\n", err)
		}
	}()
	return m, nil
}

// URL is where the metrics are served.
func (m *metricsServer) URL() string { return "http://" + m.ln.Addr().String() + "/metrics" }

func (m *metricsServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = m.srv.Shutdown(ctx)
	<-m.done
	_ = m.mp.Shutdown(ctx)
}

// totals sums each pgsecrets counter by its outcome label, as Prometheus
// would with sum by (pgsecrets_outcome): "pgsecrets_logins_total{rejected}".
func (m *metricsServer) totals() (map[string]float64, error) {
	fams, err := m.reg.Gather()
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), "pgsecrets_") || f.GetType() != dto.MetricType_COUNTER {
			continue
		}
		for _, mt := range f.GetMetric() {
			key := f.GetName()
			for _, l := range mt.GetLabel() {
				if l.GetName() == "pgsecrets_outcome" {
					key += "{" + l.GetValue() + "}"
				}
			}
			out[key] += mt.GetCounter().GetValue()
		}
	}
	return out, nil
}

// metricsSummary prints the counters the way the summary does.
func (d *demo) metricsSummary() {
	if d.metrics == nil {
		return
	}
	t, err := d.metrics.totals()
	if err != nil {
		d.summaryRow("metrics", "unavailable: %v", err)
		return
	}
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	d.summaryRow("metrics", "served at %s while the demo ran:", d.metrics.URL())
	for _, k := range keys {
		fmt.Fprintf(d.stdout, "  %-18s   %-58s %8.0f\n", "", k, t[k])
	}
}
