package pgsecrets_test

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/smtest"
)

// BenchmarkTimeToHeal: how soon after the store answers again a fresh
// *sql.DB, pinged every 100 ms with a 2 s deadline per ping and nothing
// cached, gets a ping through. The store first fails every call (HTTP 500)
// or holds every request unanswered, for 3 s. Reported as heal-ms (mean)
// and heal-max-ms over the iterations; ns/op is the whole scenario.
//
//	go test -run '^$' -bench TimeToHeal -benchtime 10x .
func BenchmarkTimeToHeal(b *testing.B) {
	for _, bc := range []struct {
		name  string
		fault smtest.FaultKind
	}{{"case=store-down", smtest.Fail}, {"case=store-hangs", smtest.HangUntilCancel}} {
		b.Run(bc.name, func(b *testing.B) {
			var heals []time.Duration
			for b.Loop() {
				r := newRig(b)
				remove := r.sm.Inject("GetSecretValue", smtest.Fault{Kind: bc.fault})
				db := r.open(r.kv(""))
				db.SetMaxIdleConns(0)
				healedAt := make(chan time.Time, 1)
				go func() {
					time.Sleep(3 * time.Second) // the fault's length
					remove()
					healedAt <- time.Now()
				}()
				var healed time.Time
				tick := time.NewTicker(100 * time.Millisecond)
				for {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					err := db.PingContext(ctx)
					cancel()
					if err == nil {
						break
					}
					select {
					case healed = <-healedAt:
					default:
					}
					<-tick.C
				}
				tick.Stop()
				if healed.IsZero() {
					healed = <-healedAt
				}
				heals = append(heals, time.Since(healed))
				db.Close()
			}
			sort.Slice(heals, func(i, j int) bool { return heals[i] < heals[j] })
			var sum time.Duration
			for _, h := range heals {
				sum += h
			}
			b.ReportMetric(float64(sum.Milliseconds())/float64(len(heals)), "heal-ms")
			b.ReportMetric(float64(heals[len(heals)-1].Milliseconds()), "heal-max-ms")
		})
	}
}
