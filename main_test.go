package pgsecrets_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/smtest"
)

func TestMain(m *testing.M) {
	// The SDK's default chain finds static test credentials and never looks
	// at this machine's AWS files or the metadata service.
	restore := smtest.IsolateEnv()
	code := testdb.RunMain(m, testdb.Options{})
	restore()
	os.Exit(code)
}

// rig is one test's world: a role with a random password in the shared
// PostgreSQL, and a Secrets Manager of its own holding that role's secret.
type rig struct {
	t        testing.TB
	pg       *testdb.Cluster
	sm       *smtest.Server
	role     string
	password string
	secretID string
	logs     *syncBuffer
	logger   *slog.Logger
}

var roleSeq atomic.Int64

func newRig(t testing.TB) *rig {
	t.Helper()
	pg := testdb.Shared(t)
	r := &rig{t: t, pg: pg, sm: smtest.Start(t), logs: &syncBuffer{}}
	r.logger = slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r.role = fmt.Sprintf("app_%d", roleSeq.Add(1))
	r.password = randomPassword()
	r.secretID = "test/" + r.role
	if err := pg.CreateRole(context.Background(), r.role, r.password); err != nil {
		t.Fatal(err)
	}
	r.sm.CreateSecret(r.secretID, rdsSecret(r.role, r.password, nil))
	t.Cleanup(func() {
		// Leak check on everything the driver logged during the test.
		if strings.Contains(r.logs.String(), r.password) {
			t.Errorf("a log line contains the password")
		}
	})
	return r
}

func randomPassword() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "pw-" + hex.EncodeToString(b)
}

// rdsSecret is the JSON AWS writes for an RDS secret.
func rdsSecret(user, password string, extra map[string]any) string {
	m := map[string]any{"username": user, "password": password, "engine": "postgres"}
	for k, v := range extra {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// kv is a key=value DSN reaching the shared cluster over verified TLS,
// with the rig's secret.
func (r *rig) kv(extra string) string {
	return fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s %s",
		r.pg.Host(), r.pg.Port(), r.pg.CAFile(), r.secretID, r.sm.URL(), extra)
}

// open opens a *sql.DB through NewConnector with the rig's logger.
func (r *rig) open(dsn string, opts ...pgsecrets.Option) *sql.DB {
	r.t.Helper()
	db, _ := r.openC(dsn, opts...)
	return db
}

// openC is open that also returns the connector, for its Stats.
func (r *rig) openC(dsn string, opts ...pgsecrets.Option) (*sql.DB, *pgsecrets.Connector) {
	r.t.Helper()
	c, err := pgsecrets.NewConnector(dsn, append([]pgsecrets.Option{pgsecrets.WithLogger(r.logger)}, opts...)...)
	if err != nil {
		r.t.Fatal(err)
	}
	db := sql.OpenDB(c)
	r.t.Cleanup(func() { db.Close() })
	return db, c
}

func currentUser(t *testing.T, db *sql.DB) string {
	t.Helper()
	var u string
	if err := db.QueryRow("SELECT current_user").Scan(&u); err != nil {
		t.Fatal(err)
	}
	return u
}

// syncBuffer is a bytes.Buffer safe for concurrent log writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// count returns how many log lines carry msg.
func (s *syncBuffer) count(msg string) int {
	return len(regexp.MustCompile(regexp.QuoteMeta(`msg="`+msg+`"`)).FindAllStringIndex(s.String(), -1))
}
