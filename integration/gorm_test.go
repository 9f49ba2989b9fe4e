package integration_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/pgsecrets/pgsecrets"
)

// Book is the GORM model the tests migrate and fill.
type Book struct {
	ID        uint   `gorm:"primaryKey"`
	ISBN      string `gorm:"size:20;not null;uniqueIndex"`
	Title     string `gorm:"not null"`
	Pages     int
	Tags      pq.StringArray `gorm:"type:text[]"`
	CreatedAt time.Time
}

// openGORM opens GORM on the pgsecrets driver: gorm.io/driver/postgres
// calls sql.Open(DriverName, DSN) and leaves the DSN to the driver.
func openGORM(t *testing.T, dsn string, translate bool) (*gorm.DB, *sql.DB) {
	t.Helper()
	return openGORMConfig(t, postgres.Config{DriverName: pgsecrets.DriverName, DSN: dsn}, translate)
}

// openGORMConfig is openGORM with the dialect's other settings.
func openGORMConfig(t *testing.T, cfg postgres.Config, translate bool) (*gorm.DB, *sql.DB) {
	t.Helper()
	gdb, err := gorm.Open(postgres.New(cfg), &gorm.Config{
		Logger:         logger.Default.LogMode(logger.Silent),
		TranslateError: translate,
		// PostgreSQL keeps microseconds; so do the timestamps GORM sets,
		// so what is read back can be compared exactly.
		NowFunc: func() time.Time { return time.Now().UTC().Truncate(time.Microsecond) },
	})
	if err != nil {
		t.Fatal(err)
	}
	sqlDB, err := gdb.DB()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sqlDB.Close() })
	return gdb, sqlDB
}

func TestGORM(t *testing.T) {
	w := newWorld(t)
	db, sqlDB := openGORM(t, w.kv(), true)

	// The pool is database/sql's with the pgsecrets driver, and the
	// connections in it are lib/pq's: GORM's pgx never sees a query.
	if got := fmt.Sprintf("%T", sqlDB.Driver()); got != "*pgsecrets.Driver" {
		t.Errorf("driver = %s, want *pgsecrets.Driver", got)
	}
	conn, err := sqlDB.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Raw(func(dc any) error {
		if got := fmt.Sprintf("%T", dc); got != "*pq.conn" {
			return fmt.Errorf("driver conn is %s, want lib/pq's *pq.conn", got)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	conn.Close()

	var user, dbname string
	if err := db.Raw("SELECT current_user, current_database()").Row().Scan(&user, &dbname); err != nil {
		t.Fatal(err)
	}
	if user != w.role || dbname != w.dbname {
		t.Errorf("connected as %q to %q, want %q to %q", user, dbname, w.role, w.dbname)
	}

	if err := db.AutoMigrate(&Book{}); err != nil {
		t.Fatal(err)
	}
	// Migrating again reads the table's columns and indexes back through
	// the driver and must find nothing to change.
	if err := db.AutoMigrate(&Book{}); err != nil {
		t.Fatalf("second AutoMigrate: %v", err)
	}
	if !db.Migrator().HasTable(&Book{}) || !db.Migrator().HasIndex(&Book{}, "ISBN") {
		t.Fatal("AutoMigrate did not create the table and its unique index")
	}
	var owner string
	if err := db.Raw("SELECT tableowner FROM pg_tables WHERE tablename = ?", "books").Scan(&owner).Error; err != nil {
		t.Fatal(err)
	}
	if owner != w.role {
		t.Errorf("books is owned by %q, want the secret's role %q", owner, w.role)
	}

	books := []Book{
		{ISBN: "978-0262033848", Title: "Introduction to Algorithms", Pages: 1312, Tags: pq.StringArray{"algorithms", "textbook"}},
		{ISBN: "978-0201633610", Title: "Design Patterns", Pages: 395, Tags: pq.StringArray{"oop"}},
		{ISBN: "978-0134190440", Title: "The Go Programming Language", Pages: 380, Tags: pq.StringArray{"go"}},
	}
	if err := db.Create(&books).Error; err != nil {
		t.Fatal(err)
	}
	for i, b := range books {
		if b.ID == 0 || b.CreatedAt.IsZero() {
			t.Errorf("books[%d] = %+v: RETURNING did not fill the ID, or CreatedAt is unset", i, b)
		}
	}

	var got []Book
	if err := db.Where("pages < ?", 1000).Order("pages DESC").Find(&got).Error; err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("found %d books under 1000 pages, want 2: %+v", len(got), got)
	}
	for i, want := range []Book{books[1], books[2]} {
		g := got[i]
		if g.ID != want.ID || g.ISBN != want.ISBN || g.Title != want.Title || g.Pages != want.Pages ||
			fmt.Sprint(g.Tags) != fmt.Sprint(want.Tags) || !g.CreatedAt.Equal(want.CreatedAt) {
			t.Errorf("row %d = %+v, want %+v", i, g, want)
		}
	}

	var one Book
	if err := db.First(&one, "isbn = ?", "978-0262033848").Error; err != nil {
		t.Fatal(err)
	}
	if one.Title != "Introduction to Algorithms" || one.ID != books[0].ID {
		t.Errorf("First = %+v", one)
	}
	if err := db.Model(&one).Update("pages", 1320).Error; err != nil {
		t.Fatal(err)
	}
	var total int64
	if err := db.Model(&Book{}).Select("COALESCE(SUM(pages), 0)").Scan(&total).Error; err != nil {
		t.Fatal(err)
	}
	if total != 1320+395+380 {
		t.Errorf("sum of pages = %d, want %d", total, 1320+395+380)
	}

	// A transaction that fails rolls back.
	errAbort := errors.New("abort")
	err = db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Create(&Book{ISBN: "978-0000000000", Title: "Never Written"}).Error; err != nil {
			return err
		}
		return errAbort
	})
	if !errors.Is(err, errAbort) {
		t.Errorf("Transaction = %v, want the callback's error", err)
	}
	var n int64
	if err := db.Model(&Book{}).Count(&n).Error; err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("%d books after the rolled-back transaction, want 3", n)
	}

	// lib/pq's errors reach GORM, which translates them with
	// TranslateError: not as pgx errors, but through the dialect's JSON
	// fallback (which keeps the message and drops the *pq.Error).
	err = db.Create(&Book{ISBN: books[0].ISBN, Title: "Duplicate"}).Error
	if !errors.Is(err, gorm.ErrDuplicatedKey) {
		t.Errorf("duplicate ISBN: err = %v, want gorm.ErrDuplicatedKey", err)
	}
}

// A URL-form DSN works with GORM too.
func TestGORMURLDSN(t *testing.T) {
	w := newWorld(t)
	db, _ := openGORM(t, w.url(), false)
	if err := db.AutoMigrate(&Book{}); err != nil {
		t.Fatal(err)
	}
	if err := db.Create(&Book{ISBN: "978-1", Title: "URL"}).Error; err != nil {
		t.Fatal(err)
	}
	var b Book
	if err := db.Take(&b).Error; err != nil {
		t.Fatal(err)
	}
	if b.ISBN != "978-1" || b.Title != "URL" {
		t.Errorf("read back %+v", b)
	}
	var user string
	if err := db.Raw("SELECT current_user").Scan(&user).Error; err != nil {
		t.Fatal(err)
	}
	if user != w.role {
		t.Errorf("current_user = %q, want %q", user, w.role)
	}

	// Without TranslateError, GORM hands back lib/pq's own error.
	err := db.Create(&Book{ISBN: "978-1", Title: "Duplicate"}).Error
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) || pqErr.Code != "23505" {
		t.Errorf("duplicate ISBN: err = %v (%T), want a *pq.Error with SQLSTATE 23505", err, err)
	}
}

// A pool of one's own goes to GORM as Conn, and DriverName must name it
// too: GORM's migrator takes an empty DriverName for pgx and puts pgx's
// exec mode in front of the arguments when it reads a table's columns
// (gorm.io/driver/postgres migrator.go GetRows), which lib/pq counts as
// one argument too many. The first AutoMigrate only creates the table; the
// second reads it.
func TestGORMConnPool(t *testing.T) {
	for _, tc := range []struct {
		driverName string
		wantErr    string
	}{
		{driverName: "", wantErr: "got 2 parameters but the statement requires 1"},
		{driverName: pgsecrets.DriverName},
	} {
		t.Run("DriverName="+tc.driverName, func(t *testing.T) {
			w := newWorld(t)
			sqlDB, err := pgsecrets.Open(w.kv())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sqlDB.Close() })
			db, err := gorm.Open(postgres.New(postgres.Config{Conn: sqlDB, DriverName: tc.driverName}),
				&gorm.Config{Logger: logger.Default.LogMode(logger.Silent)})
			if err != nil {
				t.Fatal(err)
			}
			if err := db.AutoMigrate(&Book{}); err != nil {
				t.Fatal(err)
			}
			err = db.AutoMigrate(&Book{})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("second AutoMigrate: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("second AutoMigrate: err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
