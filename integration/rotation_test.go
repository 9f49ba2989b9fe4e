package integration_test

import (
	"database/sql"
	"testing"

	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/pgsecrets/pgsecrets"
	_ "github.com/pgsecrets/pgsecrets/pgxsecrets" // secret_driver=pgx
)

// The password changes between two GORM queries. The pool keeps no idle
// connections, so the second query needs a new login; the driver's cache
// still holds the old password, the database rejects it, and the driver
// recovers by fetching the secret again, within the same query.
func TestGORMPasswordRotation(t *testing.T) {
	for _, mode := range []string{"DriverName", "Conn", "DriverName+pgx"} {
		t.Run(mode, func(t *testing.T) {
			w := newWorld(t)
			var (
				db        *gorm.DB
				sqlDB     *sql.DB
				connector *pgsecrets.Connector
			)
			switch mode {
			case "DriverName":
				db, sqlDB = openGORM(t, w.kv(), false)
			case "DriverName+pgx":
				// The same, logging in through pgx (secret_driver=pgx).
				db, sqlDB = openGORM(t, w.kv()+" secret_driver=pgx", false)
			case "Conn":
				// The other way in: a Connector of one's own, for its Stats.
				var err error
				connector, err = pgsecrets.NewConnector(w.kv())
				if err != nil {
					t.Fatal(err)
				}
				sqlDB = sql.OpenDB(connector)
				t.Cleanup(func() { sqlDB.Close() })
				db, err = gorm.Open(postgres.New(postgres.Config{Conn: sqlDB, DriverName: pgsecrets.DriverName}), &gorm.Config{Logger: logger.Default.LogMode(logger.Silent)})
				if err != nil {
					t.Fatal(err)
				}
			}
			// Every connection is closed when it goes back to the pool, so
			// every query logs in anew.
			sqlDB.SetMaxIdleConns(0)

			if err := db.AutoMigrate(&Book{}); err != nil {
				t.Fatal(err)
			}
			if err := db.Create(&Book{ISBN: "before", Title: "Before rotation"}).Error; err != nil {
				t.Fatal(err)
			}
			pidBefore := sessionAs(t, db, w.role)
			if n := w.sm.Calls("GetSecretValue"); n != 1 {
				t.Fatalf("GetSecretValue calls before the rotation = %d, want 1 (one fetch, then the cache)", n)
			}
			if n := w.pg.AuthFailures(w.role); n != 0 {
				t.Fatalf("%d failed logins before the rotation", n)
			}
			if n := sqlDB.Stats().OpenConnections; n != 0 {
				t.Fatalf("%d connections still open with SetMaxIdleConns(0), want 0", n)
			}

			w.rotate()

			// The query after the rotation must succeed.
			if err := db.Create(&Book{ISBN: "after", Title: "After rotation"}).Error; err != nil {
				t.Fatalf("first query after the rotation: %v", err)
			}
			// Exactly one login was rejected (the cached old password),
			// so it was the driver's recovery, not a timely refresh, that
			// found the new password.
			if n := w.pg.AuthFailures(w.role); n != 1 {
				t.Errorf("failed logins after the rotation = %d, want exactly 1 (the stale cached password)", n)
			}
			if n := w.sm.Calls("GetSecretValue"); n < 2 {
				t.Errorf("GetSecretValue calls = %d, want the secret fetched again", n)
			}

			// Later logins use the new password straight from the cache.
			pidAfter := sessionAs(t, db, w.role)
			if pidAfter == pidBefore {
				t.Errorf("the query after the rotation ran in the old session (pid %d): no new login happened", pidAfter)
			}
			var titles []string
			if err := db.Model(&Book{}).Order("id").Pluck("title", &titles).Error; err != nil {
				t.Fatal(err)
			}
			if len(titles) != 2 || titles[0] != "Before rotation" || titles[1] != "After rotation" {
				t.Errorf("titles = %q", titles)
			}
			if n := w.pg.AuthFailures(w.role); n != 1 {
				t.Errorf("failed logins after recovery = %d, want still 1", n)
			}

			if connector != nil {
				s := connector.Stats()
				if s.AuthFailures != 1 || s.AuthRecovered != 1 {
					t.Errorf("Stats: AuthFailures = %d, AuthRecovered = %d, want 1 and 1", s.AuthFailures, s.AuthRecovered)
				}
			}
		})
	}
}

// sessionAs runs a query reporting the session's user and backend pid,
// checks the user and returns the pid.
func sessionAs(t *testing.T, db *gorm.DB, role string) int {
	t.Helper()
	var user string
	var pid int
	if err := db.Raw("SELECT current_user, pg_backend_pid()").Row().Scan(&user, &pid); err != nil {
		t.Fatal(err)
	}
	if user != role {
		t.Fatalf("current_user = %q, want %q", user, role)
	}
	return pid
}
