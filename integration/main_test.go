package integration_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"sync/atomic"
	"testing"

	"github.com/jmoiron/sqlx"

	_ "github.com/pgsecrets/pgsecrets" // registers the "pgsecrets" driver
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/smtest"
)

func TestMain(m *testing.M) {
	// The SDK's default chain finds static test credentials and never looks
	// at this machine's AWS files or the metadata service.
	restore := smtest.IsolateEnv()
	sqlx.BindDriver("pgsecrets", sqlx.DOLLAR)
	code := testdb.RunMain(m, testdb.Options{})
	restore()
	os.Exit(code)
}

// world is one test's setting: a login role with a random password, a
// database that role owns (so it may create tables), and a Secrets Manager
// of its own holding the role's credentials in the RDS format.
type world struct {
	t        *testing.T
	pg       *testdb.Cluster
	sm       *smtest.Server
	role     string
	password string
	dbname   string
	secretID string
}

var seq atomic.Int64

func newWorld(t *testing.T) *world {
	t.Helper()
	ctx := context.Background()
	pg := testdb.Shared(t)
	n := seq.Add(1)
	w := &world{
		t:        t,
		pg:       pg,
		sm:       smtest.Start(t),
		role:     fmt.Sprintf("integ_%d", n),
		password: randomPassword(),
		dbname:   fmt.Sprintf("integ_db_%d", n),
	}
	w.secretID = "integration/" + w.role
	if err := pg.CreateRole(ctx, w.role, w.password); err != nil {
		t.Fatal(err)
	}
	if err := pg.CreateDatabase(ctx, w.dbname, w.role); err != nil {
		t.Fatal(err)
	}
	// Registered before any pool the test opens, so it runs after they
	// are closed (cleanups run last-in first-out).
	t.Cleanup(func() {
		if err := pg.DropDatabase(ctx, w.dbname); err != nil {
			t.Error(err)
		}
		if err := pg.DropRole(ctx, w.role); err != nil {
			t.Error(err)
		}
	})
	w.sm.CreateSecret(w.secretID, rdsSecret(w.role, w.password))
	return w
}

// rotate changes the role's password in the database and then writes the
// new one to the secret as its AWSCURRENT version, as a rotation would.
// The driver's cache still holds the old password afterwards.
func (w *world) rotate() {
	w.t.Helper()
	pw := randomPassword()
	if err := w.pg.SetPassword(context.Background(), w.role, pw); err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.sm.PutSecretValue(w.secretID, rdsSecret(w.role, pw)); err != nil {
		w.t.Fatal(err)
	}
	w.password = pw
}

// kv is a key=value DSN for the world's database over verified TLS. It
// names the secret and never a password.
func (w *world) kv() string {
	return fmt.Sprintf("host=%s port=%d dbname=%s sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s",
		w.pg.Host(), w.pg.Port(), w.dbname, w.pg.CAFile(), w.secretID, w.sm.URL())
}

// url is the same DSN in postgres:// URL form.
func (w *world) url() string {
	q := url.Values{}
	q.Set("sslmode", "verify-full")
	q.Set("sslrootcert", w.pg.CAFile())
	q.Set("secret_id", w.secretID)
	q.Set("secret_endpoint", w.sm.URL())
	return fmt.Sprintf("postgres://%s:%d/%s?%s", w.pg.Host(), w.pg.Port(), w.dbname, q.Encode())
}

func randomPassword() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "pw-" + hex.EncodeToString(b)
}

// rdsSecret is the JSON AWS writes for an RDS PostgreSQL secret.
func rdsSecret(user, password string) string {
	b, err := json.Marshal(map[string]string{"username": user, "password": password, "engine": "postgres"})
	if err != nil {
		panic(err)
	}
	return string(b)
}
