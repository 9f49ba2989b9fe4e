package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/internal/testdb"
)

// scrape reads a Prometheus text page into series → value.
func scrape(url string) (map[string]float64, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, "", err
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, string(body), nil
}

// sum adds the series of name whose labels include every one of labels.
func sum(m map[string]float64, name string, labels ...string) float64 {
	total := 0.0
	for series, v := range m {
		if series != name && !strings.HasPrefix(series, name+"{") {
			continue
		}
		all := true
		for _, l := range labels {
			all = all && strings.Contains(series, l)
		}
		if all {
			total += v
		}
	}
	return total
}

// The demo with --metrics: the endpoint, scraped while rotations and an
// outage run, shows the counters the telemetry README describes moving
// the way it says (a rejected login and a recovery per rotation, store
// requests, fresh serves, the outage), never backwards, with no password
// on the page; the summary prints the same counters.
func TestDemoMetrics(t *testing.T) {
	testdb.Shared(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	var mu sync.Mutex
	var pages []map[string]float64
	var bodies []string
	stop := make(chan struct{})
	scraped := make(chan struct{})
	go func() {
		defer close(scraped)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if m, body, err := scrape("http://" + addr + "/metrics"); err == nil && len(m) > 0 {
				mu.Lock()
				pages, bodies = append(pages, m), append(bodies, body)
				mu.Unlock()
			}
		}
	}()
	r, d := captureDemo(t, "--duration", "6s", "--rotate-every", "1.5s", "--workers", "4", "--metrics", addr)
	close(stop)
	<-scraped
	t.Logf("demo stdout:\n%s", r.stdout)
	if d == nil || r.code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", r.code, r)
	}
	if len(pages) < 4 {
		t.Fatalf("%d scrapes of the endpoint while the demo ran", len(pages))
	}
	for _, b := range bodies {
		assertNoSecret(t, result{stdout: b}, d.Passwords()...)
	}
	counters := []struct{ name, label string }{
		{"pgsecrets_logins_total", `pgsecrets_outcome="rejected"`},
		{"pgsecrets_logins_total", `pgsecrets_outcome="ok"`},
		{"pgsecrets_recoveries_total", `pgsecrets_outcome="ok"`},
		{"pgsecrets_store_requests_total", `pgsecrets_outcome="ok"`},
		{"pgsecrets_credentials_served_total", `pgsecrets_outcome="fresh"`},
		{"pgsecrets_rotations_total", ""},
	}
	for i := 1; i < len(pages); i++ {
		for _, c := range counters {
			if a, b := sum(pages[i-1], c.name, c.label), sum(pages[i], c.name, c.label); b < a {
				t.Errorf("%s{%s} went back from %v to %v", c.name, c.label, a, b)
			}
		}
	}
	last := pages[len(pages)-1]
	rotations := sum(last, "pgsecrets_rotations_total")
	if rotations < 2 {
		t.Errorf("%v rotations picked up, want the four-step's and the wrong-order's", rotations)
	}
	if n := sum(last, "pgsecrets_logins_total", `pgsecrets_outcome="rejected"`, `pgsecrets_recovery="false"`); n < 1 {
		t.Errorf("%v rejected logins: a rotation meets at least one", n)
	}
	if n := sum(last, "pgsecrets_recoveries_total", `pgsecrets_outcome="ok"`); n < 1 {
		t.Errorf("%v recoveries ok", n)
	}
	if n := sum(last, "pgsecrets_recoveries_total", `pgsecrets_outcome="failed"`); n != 0 {
		t.Errorf("%v recoveries failed in a healthy run", n)
	}
	if ok := sum(last, "pgsecrets_store_requests_total", `pgsecrets_outcome="ok"`); ok < rotations+1 {
		t.Errorf("%v store requests ok for %v rotations and the cold start", ok, rotations)
	}
	if n := sum(last, "pgsecrets_credentials_served_total", `pgsecrets_outcome="fresh"`); n < 10 {
		t.Errorf("%v fresh serves", n)
	}
	if n := sum(last, "pgsecrets_breaker_state"); n != 0 {
		t.Errorf("breaker state %v in a healthy run", n)
	}
	// The summary's figures are the endpoint's, read after the last scrape.
	m := regexp.MustCompile(`pgsecrets_logins_total\{rejected\}\s+(\d+)`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatal("the summary does not print the rejected logins")
	}
	if n, _ := strconv.ParseFloat(m[1], 64); n < sum(last, "pgsecrets_logins_total", `pgsecrets_outcome="rejected"`) {
		t.Errorf("the summary says %v rejected logins, fewer than the endpoint did", n)
	}
}
