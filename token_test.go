package pgsecrets_test

import (
	"context"
	"database/sql/driver"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets"
)

// tokenProvider hands out the rig's password as a token that can log in
// until valid from the time of the fetch.
type tokenProvider struct {
	user, password string
	valid          time.Duration
	fetches        atomic.Int64
}

func (p *tokenProvider) Fetch(context.Context, string) (*pgsecrets.Credentials, error) {
	n := p.fetches.Add(1)
	return &pgsecrets.Credentials{Username: p.user, Password: pgsecrets.NewSecret(p.password),
		VersionID: "token-" + strconv.FormatInt(n, 10), LoginUntil: time.Now().Add(p.valid)}, nil
}

// A token only has to be valid at login: its connections are the engine's
// own (not wrapped, never retired for it) and outlive it, while a new
// connection never gets a token within the expiry margin of its end; the
// provider mints another.
func TestTokensAreNotLeases(t *testing.T) {
	r := newRig(t)
	// Valid for 1 ms: within the margin (at least 250 ms) at once.
	p := &tokenProvider{user: r.role, password: r.password, valid: time.Millisecond}
	c, err := pgsecrets.NewConnector(r.kv(""), pgsecrets.WithProvider(p), pgsecrets.WithLogger(r.logger))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	first, err := c.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if typ := fmt.Sprintf("%T", first); strings.Contains(typ, "pgsecrets") {
		t.Errorf("a token's connection is wrapped (%s): it would be retired at the token's end", typ)
	}
	second, err := c.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if n := p.fetches.Load(); n != 2 {
		t.Errorf("%d tokens minted for two connections, the first token's end within the margin: want 2", n)
	}
	// The first token has ended; its connection goes on.
	rows, err := first.(driver.QueryerContext).QueryContext(ctx, "SELECT current_user", nil)
	if err != nil {
		t.Fatalf("the connection made with an ended token stopped working: %v", err)
	}
	dest := make([]driver.Value, 1)
	if err := rows.Next(dest); err != nil || fmt.Sprintf("%s", dest[0]) != r.role {
		t.Errorf("SELECT current_user = %v, %v", dest[0], err)
	}
	rows.Close()
	st := c.Stats()
	if st.ConnsRetired != 0 || st.LeasesHeld != 0 || !st.Expires.IsZero() {
		t.Errorf("a token was treated as a lease: %+v", st)
	}
}
