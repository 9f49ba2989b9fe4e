package vaulttest_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// serverFrames counts goroutines running code of this package's server. It
// is only meaningful in a test that is not parallel: those never overlap
// with parallel tests.
func serverFrames() (int, string) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "vaulttest.(*Server)") && !strings.Contains(g, "serverFrames") {
			n++
			found = append(found, g)
		}
	}
	return n, strings.Join(found, "\n\n")
}

// Not parallel, see serverFrames.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	cl, db := adminDB(t)
	user := unique("closing")
	if err := cl.CreateRole(t.Context(), user, "x"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.DropRole(context.Background(), user) })

	s := vaulttest.NewServer()
	if err := s.AddStaticRole("database", "static", vaulttest.StaticRole{DB: db, Username: user, RotationPeriod: time.Second}); err != nil {
		t.Fatal(err)
	}
	s.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: db, TTL: time.Hour})
	c := client(t, s, s.RootToken())
	sec, _, _ := creds(t, c, "database/creds/app")
	if err := s.RevokeLease(sec.LeaseID); err != nil {
		t.Fatal(err)
	}

	s.EnableKV("secret")
	s.Inject(vaulttest.OpKVRead, vaulttest.Fault{Kind: vaulttest.FaultHang})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Logical().ReadWithContext(context.Background(), "secret/data/x")
	}()
	if err := s.WaitCalls(waitCtx(t), vaulttest.OpKVRead, 1); err != nil {
		t.Fatal(err)
	}
	if n, _ := serverFrames(); n == 0 {
		t.Fatal("no server goroutine found before Close; the check would prove nothing")
	}
	s.Close()
	<-done
	if n, stacks := serverFrames(); n != 0 {
		t.Fatalf("%d goroutines of the server outlived Close:\n%s", n, stacks)
	}
	// PostgreSQL work after Close fails at once rather than run.
	if err := s.RotateStaticRole("database", "static"); err == nil {
		t.Fatal("RotateStaticRole after Close succeeded")
	}
	if got := len(s.Leases()); got != 1 {
		t.Fatalf("Leases after Close = %d, want 1", got)
	}
}
