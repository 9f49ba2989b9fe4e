package integration_test

import (
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/pgsecrets/pgsecrets"
)

type item struct {
	ID    int64     `db:"id"`
	Name  string    `db:"name"`
	Qty   int       `db:"qty"`
	Added time.Time `db:"added"`
}

func TestSQLx(t *testing.T) {
	if got := sqlx.BindType(pgsecrets.DriverName); got != sqlx.DOLLAR {
		t.Fatalf("sqlx.BindType(%q) = %d, want DOLLAR (%d): BindDriver was not called", pgsecrets.DriverName, got, sqlx.DOLLAR)
	}
	for _, form := range []string{"key=value", "URL"} {
		t.Run(form, func(t *testing.T) {
			w := newWorld(t)
			dsn := w.kv()
			if form == "URL" {
				dsn = w.url()
			}
			// Connect opens and pings: the first login happens here.
			db, err := sqlx.Connect(pgsecrets.DriverName, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()

			if got := db.Rebind("SELECT ? + ?"); got != "SELECT $1 + $2" {
				t.Errorf("Rebind = %q, want $-placeholders", got)
			}
			var user string
			if err := db.Get(&user, "SELECT current_user"); err != nil {
				t.Fatal(err)
			}
			if user != w.role {
				t.Errorf("current_user = %q, want %q", user, w.role)
			}

			db.MustExec(`CREATE TABLE items (
				id    bigserial PRIMARY KEY,
				name  text NOT NULL UNIQUE,
				qty   integer NOT NULL,
				added timestamptz NOT NULL)`)

			base := time.Date(2024, 2, 29, 12, 30, 0, 123456000, time.UTC)
			rows := []item{
				{Name: "bolt", Qty: 40, Added: base},
				{Name: "nut", Qty: 55, Added: base.Add(time.Hour)},
				{Name: "washer", Qty: 7, Added: base.Add(2 * time.Hour)},
			}
			// One NamedExec for a single row, one for a batch.
			res, err := db.NamedExec(`INSERT INTO items (name, qty, added) VALUES (:name, :qty, :added)`, rows[0])
			if err != nil {
				t.Fatal(err)
			}
			if n, err := res.RowsAffected(); err != nil || n != 1 {
				t.Errorf("single insert: RowsAffected = %d, %v", n, err)
			}
			res, err = db.NamedExec(`INSERT INTO items (name, qty, added) VALUES (:name, :qty, :added)`, rows[1:])
			if err != nil {
				t.Fatal(err)
			}
			if n, err := res.RowsAffected(); err != nil || n != 2 {
				t.Errorf("batch insert: RowsAffected = %d, %v", n, err)
			}

			var got []item
			if err := db.Select(&got, `SELECT id, name, qty, added FROM items WHERE qty > $1 ORDER BY name`, 5); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(rows) {
				t.Fatalf("Select returned %d rows, want %d: %+v", len(got), len(rows), got)
			}
			ids := map[int64]bool{}
			for i, want := range rows {
				g := got[i]
				if g.Name != want.Name || g.Qty != want.Qty || !g.Added.Equal(want.Added) {
					t.Errorf("row %d = %+v, want %+v", i, g, want)
				}
				if g.ID == 0 || ids[g.ID] {
					t.Errorf("row %d has id %d: not assigned or not unique", i, g.ID)
				}
				ids[g.ID] = true
			}

			var one item
			if err := db.Get(&one, db.Rebind(`SELECT id, name, qty, added FROM items WHERE name = ?`), "nut"); err != nil {
				t.Fatal(err)
			}
			if one.Name != "nut" || one.Qty != 55 || !one.Added.Equal(base.Add(time.Hour)) || one.ID != got[1].ID {
				t.Errorf("Get = %+v, want %+v", one, got[1])
			}

			// Named query with a map argument.
			nrows, err := db.NamedQuery(`SELECT name FROM items WHERE qty >= :min ORDER BY qty`, map[string]any{"min": 40})
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for nrows.Next() {
				var n string
				if err := nrows.Scan(&n); err != nil {
					t.Fatal(err)
				}
				names = append(names, n)
			}
			if err := nrows.Err(); err != nil {
				t.Fatal(err)
			}
			nrows.Close()
			if len(names) != 2 || names[0] != "bolt" || names[1] != "nut" {
				t.Errorf("NamedQuery names = %q, want [bolt nut]", names)
			}

			// A transaction through sqlx, rolled back.
			tx := db.MustBegin()
			tx.MustExec(`UPDATE items SET qty = 0`)
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			var sum int
			if err := db.Get(&sum, `SELECT sum(qty) FROM items`); err != nil {
				t.Fatal(err)
			}
			if sum != 40+55+7 {
				t.Errorf("sum(qty) = %d after rollback, want %d", sum, 40+55+7)
			}
		})
	}
}
