package smtest_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/pgsecrets/pgsecrets/smtest"
)

// clientAs is a client of s that signs with its own access key id, as one
// process of a fleet would.
func clientAs(s *smtest.Server, akid string, optFns ...func(*secretsmanager.Options)) *secretsmanager.Client {
	cfg := s.AWSConfig()
	cfg.Credentials = aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{AccessKeyID: akid, SecretAccessKey: smtest.DefaultSecretAccessKey}, nil
	})
	return secretsmanager.NewFromConfig(cfg, optFns...)
}

// The quota is a token bucket of one second's worth of requests that
// refills by the server's clock: with the clock standing still exactly the
// burst is served, the rest is throttled as AWS throttles, and each client
// is told apart by its access key id.
func TestQuotaTokenBucket(t *testing.T) {
	clock := newClock()
	s := smtest.Start(t, smtest.WithClock(clock.Now))
	s.CreateSecret("db", "v1")
	s.SetQuota(3)
	if q := s.Quota(); q != 3 {
		t.Fatalf("Quota() = %v, want 3", q)
	}
	ctx := t.Context()
	a := clientAs(s, "AKIDPROCESSA", smtest.NoRetries)
	b := clientAs(s, "AKIDPROCESSB", smtest.NoRetries)

	// The bucket starts full: three requests, then "Rate exceeded".
	for i, c := range []*secretsmanager.Client{a, b, a} {
		if _, err := get(ctx, c, "db"); err != nil {
			t.Fatalf("request %d within the burst: %v", i+1, err)
		}
	}
	for _, c := range []*secretsmanager.Client{a, b, b} {
		_, err := get(ctx, c, "db")
		wantCode(t, err, "ThrottlingException")
		if want := "Rate exceeded"; !containsMessage(err, want) {
			t.Errorf("throttled error %v, want the message %q", err, want)
		}
	}
	// DescribeSecret shares the quota, as at AWS; other operations have
	// none.
	_, err := a.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String("db")})
	wantCode(t, err, "ThrottlingException")
	if _, err := a.ListSecrets(ctx, &secretsmanager.ListSecretsInput{}); err != nil {
		t.Errorf("ListSecrets under an exhausted quota: %v", err)
	}
	if n := s.Throttled(); n != 4 {
		t.Errorf("Throttled() = %d, want 4", n)
	}
	// Throttled requests are requests.
	if n := s.Calls("GetSecretValue"); n != 6 {
		t.Errorf("Calls(GetSecretValue) = %d, want 6", n)
	}
	counts := s.ClientCounts()
	if got := counts["AKIDPROCESSA"]; got.Calls["GetSecretValue"] != 3 || got.Calls["DescribeSecret"] != 1 ||
		got.Calls["ListSecrets"] != 1 || got.Throttled != 2 {
		t.Errorf("client A: %+v, want 3 GetSecretValue, 1 DescribeSecret, 1 ListSecrets, 2 throttled", got)
	}
	if got := counts["AKIDPROCESSB"]; got.Calls["GetSecretValue"] != 3 || got.Throttled != 2 {
		t.Errorf("client B: %+v, want 3 GetSecretValue, 2 throttled", got)
	}

	// Half a second refills half of it: one and a half requests' worth.
	clock.Advance(500 * time.Millisecond)
	if _, err := get(ctx, a, "db"); err != nil {
		t.Errorf("after 500ms: %v", err)
	}
	_, err = get(ctx, a, "db")
	wantCode(t, err, "ThrottlingException")
	// Never more than the burst, however long the pause.
	clock.Advance(time.Hour)
	served := 0
	for range 5 {
		if _, err := get(ctx, b, "db"); err == nil {
			served++
		}
	}
	if served != 3 {
		t.Errorf("after an hour, %d of 5 requests served, want the burst of 3", served)
	}

	// ResetCalls zeroes the counters, SetQuota(0) lifts the quota.
	s.ResetCalls()
	if n, c := s.Throttled(), len(s.ClientCounts()); n != 0 || c != 0 {
		t.Errorf("after ResetCalls: Throttled %d, %d clients", n, c)
	}
	s.SetQuota(0)
	for range 10 {
		if _, err := get(ctx, a, "db"); err != nil {
			t.Fatalf("without a quota: %v", err)
		}
	}
	if s.Quota() != 0 || s.Throttled() != 0 || s.ClientCounts()["AKIDPROCESSA"].Calls["GetSecretValue"] != 10 {
		t.Errorf("without a quota: Quota %v, Throttled %d, counts %+v", s.Quota(), s.Throttled(), s.ClientCounts())
	}
}

// The SDK retries throttling by itself: one call is several requests, and
// the counters count requests. A retried call that finds the quota
// refilled succeeds.
func TestQuotaCountsSDKAttempts(t *testing.T) {
	clock := newClock()
	s := smtest.Start(t, smtest.WithClock(clock.Now))
	s.CreateSecret("db", "v1")
	s.SetQuota(1)
	c := clientAs(s, "AKIDRETRIER", smtest.FastRetries(3))
	ctx := t.Context()
	if _, err := get(ctx, c, "db"); err != nil {
		t.Fatal(err)
	}
	_, err := get(ctx, c, "db")
	wantCode(t, err, "ThrottlingException")
	if got := s.ClientCounts()["AKIDRETRIER"]; got.Calls["GetSecretValue"] != 4 || got.Throttled != 3 {
		t.Errorf("counts %+v, want 4 requests (1 + 3 attempts), 3 throttled", got)
	}

	// The quota comes before faults: a throttled request uses up none of
	// a fault's Times.
	s.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail, Times: 1})
	_, err = get(ctx, clientAs(s, "AKIDRETRIER", smtest.NoRetries), "db")
	wantCode(t, err, "ThrottlingException")
	clock.Advance(time.Second)
	_, err = get(ctx, clientAs(s, "AKIDRETRIER", smtest.NoRetries), "db")
	wantCode(t, err, "InternalServiceError")
}

// Concurrent clients on the real clock: the quota holds over all of them
// together (at most the burst plus what the elapsed time refilled), and
// the per-client counts add up to the server's.
func TestQuotaConcurrentClients(t *testing.T) {
	s := smtest.Start(t)
	s.CreateSecret("db", "v1")
	const rate, clients, each = 5, 8, 10
	s.SetQuota(rate)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range clients {
		c := clientAs(s, "AKIDFLEET"+string(rune('A'+i)), smtest.NoRetries)
		wg.Go(func() {
			for range each {
				_, _ = get(t.Context(), c, "db")
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	total, throttled := s.Calls("GetSecretValue"), s.Throttled()
	if total != clients*each {
		t.Fatalf("Calls = %d, want %d", total, clients*each)
	}
	if allowed := rate + int(elapsed.Seconds()*rate) + 1; total-throttled > allowed {
		t.Errorf("%d requests served in %s, over the quota's %d", total-throttled, elapsed, allowed)
	}
	if throttled == 0 {
		t.Error("nothing throttled")
	}
	sum, sumThrottled := 0, 0
	counts := s.ClientCounts()
	for _, c := range counts {
		sum += c.Calls["GetSecretValue"]
		sumThrottled += c.Throttled
	}
	if len(counts) != clients || sum != total || sumThrottled != throttled {
		t.Errorf("%d clients with %d requests, %d throttled; want %d, %d, %d", len(counts), sum, sumThrottled, clients, total, throttled)
	}
}

func containsMessage(err error, msg string) bool {
	return err != nil && strings.Contains(err.Error(), msg)
}
