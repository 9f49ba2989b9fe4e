package pgxsecrets_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/internal/tlsmatrix"
	"github.com/pgsecrets/pgsecrets/pgxsecrets"
)

const sslQuery = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"

// TestTLSMatrixStdlib: database/sql over pgx (secret_driver=pgx).
func TestTLSMatrixStdlib(t *testing.T) {
	tlsmatrix.Run(t, func(t *testing.T, dsn string, logger *slog.Logger) (bool, error) {
		c, err := pgsecrets.NewConnector(dsn, pgsecrets.WithLogger(logger))
		if err != nil {
			t.Fatal(err)
		}
		db := sql.OpenDB(c)
		defer db.Close()
		var ssl bool
		err = db.QueryRow(sslQuery).Scan(&ssl)
		return ssl, err
	}, tlsmatrix.Options{Params: []string{"secret_driver", "pgx"}})
}

// TestTLSMatrixPool: pgxsecrets.NewPool.
func TestTLSMatrixPool(t *testing.T) {
	tlsmatrix.Run(t, func(t *testing.T, dsn string, logger *slog.Logger) (bool, error) {
		ctx := context.Background()
		p, err := pgxsecrets.NewPool(ctx, dsn, pgsecrets.WithLogger(logger))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		var ssl bool
		err = p.QueryRow(ctx, sslQuery).Scan(&ssl)
		return ssl, err
	}, tlsmatrix.Options{})
}

// The engine DSN says sslmode only when neither the DSN nor PGSSLMODE
// did, and pgx reads the environment again when it parses for the
// secret's host: once PGSSLMODE is gone, that parse would fall back to
// pgx's default, prefer, and send the password in plaintext to a server
// that declines TLS. The login is refused instead.
func TestTLSEnvChangedAfterOpen(t *testing.T) {
	r := newRig(t)
	im := testkit.StartImpostor(t, testkit.ImpostorOptions{})
	r.sm.CreateSecret("test/envchange", secretJSONAt(r.role, r.password, im.Host(), im.Port()))
	t.Setenv("PGSSLMODE", "require")
	dsn := fmt.Sprintf("dbname=postgres secret_id=test/envchange secret_endpoint=%s secret_retry_window=0s", r.sm.URL())

	pool, err := pgxsecrets.NewPool(context.Background(), dsn, pgsecrets.WithLogger(r.logger))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	c, err := pgsecrets.NewConnector(dsn+" secret_driver=pgx", pgsecrets.WithLogger(r.logger))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()

	t.Setenv("PGSSLMODE", "")
	os.Unsetenv("PGSSLMODE")
	if err := pool.Ping(context.Background()); err == nil || !strings.Contains(err.Error(), "environment") {
		t.Errorf("pool: %v, want the environment change named", err)
	}
	if err := db.Ping(); err == nil || !strings.Contains(err.Error(), "environment") {
		t.Errorf("database/sql: %v, want the environment change named", err)
	}
	im.Settle(t)
	if im.PlaintextStartups() != 0 || im.Saw(r.password) {
		t.Errorf("a login went out in plaintext: %v", im)
	}
}

func secretJSONAt(user, pw, host string, port int) string {
	b, _ := json.Marshal(map[string]any{"username": user, "password": pw, "engine": "postgres", "host": host, "port": port})
	return string(b)
}
