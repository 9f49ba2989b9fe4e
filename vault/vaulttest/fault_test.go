package vaulttest_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

func TestFaultError(t *testing.T) {
	t.Parallel()
	s := vaulttest.Start(t)
	s.PutKV("secret", "x", map[string]any{"k": "v"})
	kv := client(t, s, s.RootToken()).KVv2("secret")

	s.Inject(vaulttest.OpKVRead, vaulttest.Fault{Kind: vaulttest.FaultError, Count: 1})
	_, err := kv.Get(t.Context(), "x")
	wantErrorText(t, responseError(t, err, 503), "Vault is sealed")
	if _, err := kv.Get(t.Context(), "x"); err != nil {
		t.Fatalf("after a Count 1 fault: %v", err)
	}

	remove := s.Inject(vaulttest.OpKVRead, vaulttest.Fault{Kind: vaulttest.FaultError, Status: 500, Message: "boom"})
	for range 2 {
		_, err = kv.Get(t.Context(), "x")
		wantErrorText(t, responseError(t, err, 500), "boom")
	}
	// Other operations are not affected.
	if _, err := kv.Put(t.Context(), "x", map[string]any{"k": "w"}); err != nil {
		t.Fatalf("write during a read fault: %v", err)
	}
	remove()
	remove() // harmless
	if _, err := kv.Get(t.Context(), "x"); err != nil {
		t.Fatalf("after remove: %v", err)
	}
	if got := s.Calls(vaulttest.OpKVRead); got != 5 {
		t.Fatalf("Calls(OpKVRead) = %d, want 5", got)
	}
	if got := s.Calls(vaulttest.OpKVWrite); got != 1 {
		t.Fatalf("Calls(OpKVWrite) = %d, want 1", got)
	}

	// Faults come before the token check, as an outage would.
	s.Inject(vaulttest.OpAny, vaulttest.Fault{Kind: vaulttest.FaultError, Status: 502})
	_, err = client(t, s, "").Auth().Token().LookupSelfWithContext(t.Context())
	responseError(t, err, 502)
	s.ClearFaults()
	_, err = client(t, s, "").Auth().Token().LookupSelfWithContext(t.Context())
	responseError(t, err, 403)
}

func TestFaultHangUntilClientTimeout(t *testing.T) {
	t.Parallel()
	s := vaulttest.Start(t)
	s.PutKV("secret", "x", map[string]any{"k": "v"})
	c := client(t, s, s.RootToken())
	c.SetClientTimeout(300 * time.Millisecond)

	s.Inject(vaulttest.OpKVRead, vaulttest.Fault{Kind: vaulttest.FaultHang, Count: 1})
	_, err := c.KVv2("secret").Get(t.Context(), "x")
	if err == nil {
		t.Fatal("a hung request succeeded")
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		t.Fatalf("a hung request got an answer: %v", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error = %v, want the client's deadline", err)
	}
	if _, err := c.KVv2("secret").Get(t.Context(), "x"); err != nil {
		t.Fatalf("after the hang: %v", err)
	}
}

func TestFaultHangReleasedByClose(t *testing.T) {
	t.Parallel()
	s := vaulttest.NewServer()
	defer s.Close()
	c := client(t, s, s.RootToken())
	s.Inject(vaulttest.OpTokenLookup, vaulttest.Fault{Kind: vaulttest.FaultHang})

	errc := make(chan error, 1)
	go func() {
		_, err := c.Auth().Token().LookupSelfWithContext(context.Background())
		errc <- err
	}()
	if err := s.WaitCalls(waitCtx(t), vaulttest.OpTokenLookup, 1); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close is blocked by a hung request")
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("the hung request succeeded")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the hung request was not released by Close")
	}
	if err := s.WaitCalls(t.Context(), vaulttest.OpTokenLookup, 2); !errors.Is(err, vaulttest.ErrClosed) {
		t.Fatalf("WaitCalls after Close = %v, want ErrClosed", err)
	}
}

func TestFaultDropAndLatency(t *testing.T) {
	t.Parallel()
	s := vaulttest.Start(t)
	c := client(t, s, s.RootToken())

	s.Inject(vaulttest.OpTokenLookup, vaulttest.Fault{Kind: vaulttest.FaultDrop, Count: 1})
	_, err := c.Auth().Token().LookupSelfWithContext(t.Context())
	var re *api.ResponseError
	if err == nil || errors.As(err, &re) {
		t.Fatalf("dropped connection: error = %v, want a transport error", err)
	}

	const delay = 50 * time.Millisecond
	s.Inject(vaulttest.OpTokenLookup, vaulttest.Fault{Kind: vaulttest.FaultLatency, Delay: delay, Count: 1})
	start := time.Now()
	if _, err := c.Auth().Token().LookupSelfWithContext(t.Context()); err != nil {
		t.Fatalf("with latency: %v", err)
	}
	if el := time.Since(start); el < delay {
		t.Fatalf("request took %v, less than the injected %v", el, delay)
	}
	// Latency then an error: both apply.
	s.Inject(vaulttest.OpTokenLookup, vaulttest.Fault{Kind: vaulttest.FaultLatency, Delay: time.Millisecond, Count: 1})
	s.Inject(vaulttest.OpTokenLookup, vaulttest.Fault{Kind: vaulttest.FaultError, Status: 429, Count: 1})
	_, err = c.Auth().Token().LookupSelfWithContext(t.Context())
	responseError(t, err, 429)
	if got := s.Calls(vaulttest.OpTokenLookup); got != 3 {
		t.Fatalf("Calls = %d, want 3", got)
	}
}

func TestCountersAndOnRequest(t *testing.T) {
	t.Parallel()
	s := vaulttest.Start(t)
	var mu sync.Mutex
	var seen []string
	s.OnRequest(func(op, path string) {
		mu.Lock()
		seen = append(seen, op+" "+path)
		mu.Unlock()
	})
	c := client(t, s, s.RootToken())
	c.Auth().Token().LookupSelfWithContext(t.Context())
	c.KVv2("secret").Get(t.Context(), "a/b")
	c.Logical().ReadWithContext(t.Context(), "unknown/path")
	c.Sys().RenewWithContext(t.Context(), "database/creds/x/y", 0)

	mu.Lock()
	got := slices.Clone(seen)
	mu.Unlock()
	want := []string{"token-lookup-self auth/token/lookup-self", " unknown/path", "renew sys/leases/renew"}
	// secret/data/a/b is no mount yet, so it is an unknown path too.
	want = slices.Insert(want, 1, " secret/data/a/b")
	if !slices.Equal(got, want) {
		t.Fatalf("OnRequest saw %q, want %q", got, want)
	}
	if s.TotalCalls() != 4 || s.Calls(vaulttest.OpAny) != 4 || s.Calls(vaulttest.OpRenew) != 1 {
		t.Fatalf("TotalCalls = %d, Calls(OpRenew) = %d", s.TotalCalls(), s.Calls(vaulttest.OpRenew))
	}
	s.ResetCalls()
	if s.TotalCalls() != 0 || s.Calls(vaulttest.OpTokenLookup) != 0 {
		t.Fatalf("counters after ResetCalls: %d", s.TotalCalls())
	}
	s.OnRequest(nil)
	c.Auth().Token().LookupSelfWithContext(t.Context())
	mu.Lock()
	n := len(seen)
	mu.Unlock()
	if n != 4 || s.TotalCalls() != 1 {
		t.Fatalf("after removing the hook: %d calls seen, total %d", n, s.TotalCalls())
	}
}
