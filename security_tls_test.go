package pgsecrets_test

import (
	"database/sql"
	"log/slog"
	"testing"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/tlsmatrix"
)

// TestTLSMatrixPQ runs the TLS matrix (where the host comes from × sslmode
// × a hostssl-only server or a listener that should not get the password)
// through lib/pq. The pgx engines run the same matrix in pgxsecrets.
func TestTLSMatrixPQ(t *testing.T) {
	tlsmatrix.Run(t, func(t *testing.T, dsn string, logger *slog.Logger) (bool, error) {
		c, err := pgsecrets.NewConnector(dsn, pgsecrets.WithLogger(logger))
		if err != nil {
			t.Fatal(err)
		}
		db := sql.OpenDB(c)
		defer db.Close()
		var ssl bool
		err = db.QueryRow("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl)
		return ssl, err
	}, tlsmatrix.Options{})
}
