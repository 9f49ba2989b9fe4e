package pgsecrets

import (
	"context"
	"errors"
	"sync"
	"testing"
)

// holdingProvider holds its first `hold` requests until their context ends
// (a store that lost them) and answers the others; it records how many
// requests were ever in flight at once.
type holdingProvider struct {
	mu            sync.Mutex
	hold          int
	calls, now    int
	most          int
	abandonedSeen int
}

func (p *holdingProvider) Fetch(ctx context.Context, stage string) (*Credentials, error) {
	p.mu.Lock()
	p.calls++
	n := p.calls
	p.now++
	p.most = max(p.most, p.now)
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.now--
		p.mu.Unlock()
	}()
	if n <= p.hold {
		<-ctx.Done()
		p.mu.Lock()
		p.abandonedSeen++
		p.mu.Unlock()
		return nil, ctx.Err()
	}
	return &Credentials{Username: "u", Password: NewSecret("p"), VersionID: "v1", Stage: stage}, nil
}

// Requests the store never answers are hedged, then abandoned for new ones:
// the fetch succeeds as soon as a request reaches a store that answers,
// with never more than maxInFlight requests out.
func TestHedgedRequests(t *testing.T) {
	p := &holdingProvider{hold: 3}
	c, err := NewConnector("host=127.0.0.1 secret_id=hedged", WithProvider(p))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cr, err := c.entry.get(context.Background(), c.cl.policy)
	if err != nil || cr.VersionID != "v1" {
		t.Fatalf("get = %v, %v", cr, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.calls != 4 {
		t.Errorf("%d requests, want 4 (3 held, then one answered)", p.calls)
	}
	if p.most > maxInFlight {
		t.Errorf("%d requests in flight at once, want ≤ %d", p.most, maxInFlight)
	}
	// The answer ends the call: requests still out are cancelled before
	// get returns, so none outlives it.
	if p.now != 0 || p.abandonedSeen != 3 {
		t.Errorf("%d requests still out, %d held requests ended; want 0 and 3", p.now, p.abandonedSeen)
	}
	if got := c.stats.storeCalls.Load(); got != 4 {
		t.Errorf("Stats.StoreCalls = %d, want 4", got)
	}
}

// A store error from one request ends the call: the answer is the store's,
// not a wait for the hedge.
func TestHedgeErrorEndsCall(t *testing.T) {
	p := &failingProvider{err: &SecretError{Kind: ErrAccessDenied, SecretID: "denied"}}
	c, err := NewConnector("host=127.0.0.1 secret_id=denied", WithProvider(p))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.entry.get(context.Background(), c.cl.policy)
	if !errors.Is(err, ErrAccessDenied) {
		t.Fatalf("get = %v, want ErrAccessDenied", err)
	}
	// Asked again at once: the same answer, without a second request.
	_, err = c.entry.get(context.Background(), c.cl.policy)
	p.mu.Lock()
	calls := p.calls
	p.mu.Unlock()
	if !errors.Is(err, ErrAccessDenied) || calls != 1 {
		t.Errorf("second get = %v after %d requests, want ErrAccessDenied after 1", err, calls)
	}
}

type failingProvider struct {
	mu    sync.Mutex
	calls int
	err   error
}

func (p *failingProvider) Fetch(context.Context, string) (*Credentials, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	return nil, p.err
}
