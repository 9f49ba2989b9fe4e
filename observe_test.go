package pgsecrets_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets"
)

// recorder is an observer that keeps every event and, like a tracer,
// gives each Start a context of its own: a span id, with its parent's.
type recorder struct {
	mu     sync.Mutex
	events []pgsecrets.Event
	ctxs   []context.Context
	next   int
}

type spanKey struct{}

type span struct {
	id     int
	parent *span
	kind   pgsecrets.EventKind
}

func (r *recorder) Observe(ctx context.Context, e pgsecrets.Event) context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	if strings.HasSuffix(e.Kind.String(), ".start") {
		r.next++
		parent, _ := ctx.Value(spanKey{}).(*span)
		ctx = context.WithValue(ctx, spanKey{}, &span{id: r.next, parent: parent, kind: e.Kind})
	}
	r.events = append(r.events, e)
	r.ctxs = append(r.ctxs, ctx)
	return ctx
}

// snapshot returns the events so far.
func (r *recorder) snapshot() ([]pgsecrets.Event, []context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events), slices.Clone(r.ctxs)
}

// take returns the events so far and forgets them.
func (r *recorder) take() ([]pgsecrets.Event, []context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev, cx := r.events, r.ctxs
	r.events, r.ctxs = nil, nil
	return ev, cx
}

func kinds(ev []pgsecrets.Event) []string {
	var out []string
	for _, e := range ev {
		s := e.Kind.String()
		if e.Outcome != "" {
			s += "(" + e.Outcome + ")"
		}
		out = append(out, s)
	}
	return out
}

func spanOf(ctx context.Context) *span {
	s, _ := ctx.Value(spanKey{}).(*span)
	return s
}

// Every fact of a cold start and of a rotation the database saw first
// reaches an observer once, in order, with its outcome; each End carries
// the context its Start got, and the recovery's login and store call are
// children of the recovery, itself a child of the connect that met the
// rejection. Stats, the other observer, agrees; no event carries a
// password.
func TestEventStream(t *testing.T) {
	r := newRig(t)
	rec := &recorder{}
	db, c := r.openC(r.kv(""), pgsecrets.WithObserver(rec))
	db.SetMaxIdleConns(0)
	ctx := context.Background()
	old := r.password
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	ev, cx := rec.take()
	first := ev
	want := []string{"connect.start", "store.wait", "store_call.start", "store_call.end(ok)", "served(waited)",
		"login.start", "login.end(ok)", "connect.end(ok)"}
	if got := kinds(ev); !slices.Equal(got, want) {
		t.Fatalf("cold start:\n got %v\nwant %v", got, want)
	}
	connect := spanOf(cx[0])
	for i, e := range ev {
		if e.SecretID != r.secretID || e.Provider != "awssm" {
			t.Errorf("%s: secret %q provider %q", e.Kind, e.SecretID, e.Provider)
		}
		if s := spanOf(cx[i]); s == nil || (s != connect && s.parent != connect) {
			t.Errorf("%s is not within the connect", e.Kind)
		}
	}
	if end := ev[len(ev)-1]; end.Host != r.pg.Host() || end.Port != fmt.Sprint(r.pg.Port()) || end.Duration <= 0 {
		t.Errorf("connect.end: host %q port %q duration %s", end.Host, end.Port, end.Duration)
	}

	r.wrongOrder(t, 0) // the database and the store change at once; the cache still has the old password
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	ev, cx = rec.take()
	calls := int64(1) // the cold start's
	for _, e := range ev {
		if e.Kind == pgsecrets.KindStoreCallEnd {
			calls += int64(e.Count)
		}
	}
	// The recovery also asks for AWSPENDING (none: this was no four-step
	// rotation), as often as its rounds do; those calls are not the point.
	for i := 0; i < len(ev); i++ {
		if ev[i].Stage == "AWSPENDING" && strings.HasPrefix(ev[i].Kind.String(), "store_call.") {
			if ev[i].Kind == pgsecrets.KindStoreCallEnd && ev[i].Outcome != "not_found" {
				t.Errorf("AWSPENDING: %s", ev[i].Outcome)
			}
			ev, cx = slices.Delete(ev, i, i+1), slices.Delete(cx, i, i+1)
			i--
		}
	}
	got := kinds(ev)
	want = []string{"connect.start", "served(fresh)", "login.start", "login.end(rejected)", "recovery.start",
		"store_call.start", "store_call.end(ok)", "rotation", "login.start", "login.end(ok)", "recovery.end(ok)", "connect.end(ok)"}
	if !slices.Equal(got, want) {
		t.Fatalf("rotation:\n got %v\nwant %v", got, want)
	}
	connect = spanOf(cx[0])
	byKind := func(k string) (pgsecrets.Event, *span) {
		i := slices.Index(got, k)
		return ev[i], spanOf(cx[i])
	}
	rej, _ := byKind("login.end(rejected)")
	if rej.SQLState != "28P01" || rej.Recovery || rej.Err == nil {
		t.Errorf("rejected login: sqlstate %q recovery %v err %v", rej.SQLState, rej.Recovery, rej.Err)
	}
	_, recovery := byKind("recovery.start")
	if recovery.kind != pgsecrets.KindRecoveryStart || recovery.parent != connect {
		t.Errorf("the recovery is not a child of the connect that met the rejection")
	}
	if _, s := byKind("store_call.start"); s.parent != recovery {
		t.Errorf("the recovery's store call is not its child")
	}
	if e, s := byKind("login.end(ok)"); s.parent != recovery || !e.Recovery {
		t.Errorf("the recovery's login: child %v, marked %v", s.parent == recovery, e.Recovery)
	}
	if e, s := byKind("recovery.end(ok)"); s != recovery || e.VersionID == rej.VersionID || e.Duration <= 0 {
		t.Errorf("recovery.end: same span %v, version %q (rejected %q)", s == recovery, e.VersionID, rej.VersionID)
	}
	if e, _ := byKind("connect.end(ok)"); e.Count != 1 || e.Err != nil {
		t.Errorf("connect.end: %d recoveries, err %v", e.Count, e.Err)
	}
	if e, _ := byKind("rotation"); e.PreviousVersionID != rej.VersionID {
		t.Errorf("rotation from %q, want %q", e.PreviousVersionID, rej.VersionID)
	}
	if st := c.Stats(); st.AuthFailures != 1 || st.AuthRecovered != 1 || st.StoreCalls != calls || st.StoreWaits != 1 || st.CacheHits != 1 {
		t.Errorf("Stats disagree with the events: %+v", st)
	}

	for _, e := range append(first, ev...) {
		for _, pw := range []string{old, r.password} {
			if s := eventText(e); strings.Contains(s, pw) {
				t.Errorf("%s carries a password: %s", e.Kind, s)
			}
		}
	}
}

// eventText is every text an event carries.
func eventText(e pgsecrets.Event) string {
	s := fmt.Sprintf("%+v", e)
	if e.Err != nil {
		s += e.Err.Error()
	}
	for _, a := range e.Attrs {
		s += a.String()
	}
	return s
}

// Every kind has a name of its own.
func TestEventKindNames(t *testing.T) {
	seen := map[string]bool{}
	for k := pgsecrets.KindConnectStart; k <= pgsecrets.KindWarning; k++ {
		n := k.String()
		if n == "unknown" || seen[n] {
			t.Errorf("kind %d is named %q", k, n)
		}
		seen[n] = true
	}
	if pgsecrets.EventKind(0).String() != "unknown" {
		t.Error("the zero kind has a name")
	}
}

// A rotation done in the wrong order (the database first, the store 1.5 s
// later) is recovered from by asking the configured stage every round,
// and the pending stage once: a four-step rotation would have written it
// before changing the database, so its absence will not change.
func TestWrongOrderAsksPendingOnce(t *testing.T) {
	r := newRig(t)
	rec := &recorder{}
	db, _ := r.openC(r.kv(""), pgsecrets.WithObserver(rec))
	db.SetMaxIdleConns(0)
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	rec.take()
	pw := randomPassword()
	if err := r.pg.SetPassword(context.Background(), r.role, pw); err != nil {
		t.Fatal(err)
	}
	pinged := make(chan error, 1)
	go func() { pinged <- db.Ping() }()
	eventually(t, "the recovery's first round", func() bool {
		ev, _ := rec.snapshot()
		return slices.ContainsFunc(ev, func(e pgsecrets.Event) bool { return e.Kind == pgsecrets.KindRecoveryStart })
	})
	time.Sleep(1500 * time.Millisecond) // the operator updates the store late
	if _, err := r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, pw, nil)); err != nil {
		t.Fatal(err)
	}
	r.password = pw
	if err := <-pinged; err != nil {
		t.Fatalf("Ping across the wrong-order rotation: %v", err)
	}
	ev, _ := rec.take()
	current, pending := 0, 0
	for _, e := range ev {
		if e.Kind == pgsecrets.KindStoreCallEnd {
			if e.Stage == "AWSPENDING" {
				pending++
			} else {
				current++
			}
		}
	}
	if pending != 1 || current < 2 {
		t.Errorf("the recovery asked AWSPENDING %d times and AWSCURRENT %d times, want once and every round", pending, current)
	}
}
