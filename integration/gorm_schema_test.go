package integration_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"gorm.io/driver/postgres"
	"gorm.io/gorm"

	"github.com/pgsecrets/pgsecrets"
	_ "github.com/pgsecrets/pgsecrets/pgxsecrets" // secret_driver=pgx
)

// gadgetV1 and gadgetV2 are one table before and after a release that
// changes the type of two columns. AutoMigrate alters them one at a time,
// and before each ALTER it reads the table's columns back with
// SELECT * FROM "gadgets" LIMIT $1: the read before the second ALTER runs
// the statement the earlier reads prepared, against a table whose row type
// the first ALTER changed.
type gadgetV1 struct {
	ID     uint `gorm:"primaryKey"`
	Serial int32
	Weight int32
}

func (gadgetV1) TableName() string { return "gadgets" }

type gadgetV2 struct {
	ID     uint `gorm:"primaryKey"`
	Serial string
	Weight int64
}

func (gadgetV2) TableName() string { return "gadgets" }

// The README's "GORM and sqlx" section says that with DriverName GORM's
// postgres dialect no longer protects its schema changes from pgx's
// statement cache, and that the DSN key default_query_exec_mode=
// simple_protocol is the remedy. This test keeps that true in both
// directions: if a GORM or pgx upgrade made the failure go away, or the
// remedy stop working, it fails.
func TestGORMSchemaChangeWithPgxStatementCache(t *testing.T) {
	for _, tc := range []struct {
		name  string
		dsn   string // appended to the world's DSN
		pref  bool   // postgres.Config.PreferSimpleProtocol
		pgx   bool   // the connections are pgx's
		stale bool   // AutoMigrate runs into the stale statement
	}{
		// pgx caches every prepared statement per connection (its default
		// exec mode); GORM's migrator asks pgx for the simple protocol for
		// that read only when DriverName is "" or "pgx".
		{name: "pgx", dsn: " secret_driver=pgx", pgx: true, stale: true},
		// PreferSimpleProtocol is read only where GORM builds the pgx
		// configuration itself, never with DriverName.
		{name: "pgx+PreferSimpleProtocol", dsn: " secret_driver=pgx", pref: true, pgx: true, stale: true},
		// The remedy: pgx reads its exec mode from the DSN that pgsecrets
		// passes on.
		{name: "pgx+simple_protocol", dsn: " secret_driver=pgx default_query_exec_mode=simple_protocol", pgx: true},
		// lib/pq prepares unnamed statements only, so nothing goes stale.
		{name: "pq", dsn: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			db, sqlDB := openGORMConfig(t, postgres.Config{DriverName: pgsecrets.DriverName, DSN: w.kv() + tc.dsn,
				PreferSimpleProtocol: tc.pref}, false)
			// One connection: every statement below meets the cache of the
			// same session, as it would on a busy pool sooner or later.
			sqlDB.SetMaxOpenConns(1)

			conn, err := sqlDB.Conn(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			var engine string
			_ = conn.Raw(func(dc any) error { engine = fmt.Sprintf("%T", dc); return nil })
			conn.Close()
			if want := map[bool]string{true: "*stdlib.Conn", false: "*pq.conn"}[tc.pgx]; engine != want {
				t.Fatalf("driver connection is %s, want %s", engine, want)
			}

			if err := db.AutoMigrate(&gadgetV1{}); err != nil {
				t.Fatal(err)
			}
			if err := db.Create(&gadgetV1{Serial: 42, Weight: 7}).Error; err != nil {
				t.Fatal(err)
			}
			// The application reads the table before the release migrates
			// it: SELECT * FROM "gadgets", a statement of its own.
			var before []gadgetV1
			if err := db.Find(&before).Error; err != nil || len(before) != 1 {
				t.Fatalf("reading gadgets before the migration: %v, %d rows", err, len(before))
			}

			err = db.AutoMigrate(&gadgetV2{})
			if tc.stale {
				assertStalePlan(t, "AutoMigrate to the new column types", err)
				// The migration stopped between its two ALTERs.
				if got := columnTypes(t, db, "gadgets"); got != "id bigint, serial text, weight integer" {
					t.Errorf("columns after the failed AutoMigrate: %s, want serial changed and weight not", got)
				}
				// The application's own statement went stale too; pgx drops
				// a statement that failed, so only its first run fails.
				var after []gadgetV2
				assertStalePlan(t, "reading gadgets after the migration", db.Find(&after).Error)
				if err := db.Find(&after).Error; err != nil || len(after) != 1 || after[0].Serial != "42" {
					t.Errorf("reading gadgets again: %v, %+v, want one with serial \"42\"", err, after)
				}
				return
			}
			if err != nil {
				t.Fatalf("AutoMigrate to the new column types: %v", err)
			}
			if got := columnTypes(t, db, "gadgets"); got != "id bigint, serial text, weight bigint" {
				t.Errorf("columns after AutoMigrate: %s, want serial text and weight bigint", got)
			}
			var after []gadgetV2
			if err := db.Find(&after).Error; err != nil {
				t.Fatalf("reading gadgets after the migration: %v", err)
			}
			if len(after) != 1 || after[0].Serial != "42" || after[0].Weight != 7 {
				t.Errorf("gadgets after the migration = %+v, want one with serial \"42\", weight 7", after)
			}
		})
	}
}

// assertStalePlan fails the test unless err is PostgreSQL refusing a
// prepared statement whose result type has changed.
func assertStalePlan(t *testing.T, what string, err error) {
	t.Helper()
	var pgErr interface{ SQLState() string }
	if !errors.As(err, &pgErr) || pgErr.SQLState() != "0A000" ||
		!strings.Contains(err.Error(), "cached plan must not change result type") {
		t.Fatalf("%s: err = %v, want SQLSTATE 0A000 \"cached plan must not change result type\"", what, err)
	}
}

// columnTypes lists a table's columns and their types, in order.
func columnTypes(t *testing.T, db *gorm.DB, table string) string {
	t.Helper()
	var cols []string
	if err := db.Raw(`SELECT column_name || ' ' || data_type FROM information_schema.columns
		WHERE table_name = ? ORDER BY ordinal_position`, table).Scan(&cols).Error; err != nil {
		t.Fatal(err)
	}
	return strings.Join(cols, ", ")
}
