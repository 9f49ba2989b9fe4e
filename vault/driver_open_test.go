package vault_test

import (
	"context"
	"database/sql/driver"
	"fmt"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// Driver.Open, for code that uses the driver without database/sql, makes a
// connector of its own for one connection: the connection's lease must
// live until the connection closes, and not a moment longer.
func TestDriverOpenKeepsLeaseUntilClose(t *testing.T) {
	r := newVRig(t)
	r.vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: r.pg.DB(), TTL: time.Minute, MaxTTL: time.Hour})
	conn, err := (&pgsecrets.Driver{}).Open(r.dsn("database/creds/app", ""))
	r.noSecret(err)
	if err != nil {
		t.Fatal(err)
	}
	leases := r.vs.Leases()
	if len(leases) != 1 {
		t.Fatalf("%d leases issued, want 1", len(leases))
	}
	l := leases[0]
	if l.Revoked {
		t.Fatalf("the lease of the connection Open returned was revoked already (by %s)", l.RevokedBy)
	}

	rows, err := conn.(driver.QueryerContext).QueryContext(context.Background(), "SELECT current_user", nil)
	if err != nil {
		t.Fatal(err)
	}
	dest := make([]driver.Value, 1)
	if err := rows.Next(dest); err != nil {
		t.Fatal(err)
	}
	user := fmt.Sprintf("%s", dest[0]) // lib/pq's []byte, valid until rows close
	rows.Close()
	if user != l.Username {
		t.Errorf("current_user = %s, want the lease's %s", user, l.Username)
	}
	if l, _ := r.vs.Lease(l.ID); l.Revoked {
		t.Fatalf("the lease was revoked (by %s) while its connection was open", l.RevokedBy)
	}

	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	if l, _ := r.vs.Lease(l.ID); !l.Revoked {
		t.Error("the lease is still active after its only connection closed")
	}
}
