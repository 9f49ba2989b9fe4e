package pgxsecrets_test

import (
	"context"
	"fmt"
	"log"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/pgxsecrets"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// DBTX is the interface sqlc generates for pgx: *pgxsecrets.Pool satisfies
// it, as *pgxpool.Pool does.
type DBTX interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
	Query(context.Context, string, ...any) (pgx.Rows, error)
	QueryRow(context.Context, string, ...any) pgx.Row
}

// Queries is what sqlc generates around a DBTX.
type Queries struct{ db DBTX }

const countTables = `SELECT count(*) FROM pg_tables WHERE schemaname = $1`

func (q *Queries) CountTables(ctx context.Context, schema string) (int64, error) {
	var n int64
	err := q.db.QueryRow(ctx, countTables, schema).Scan(&n)
	return n, err
}

// sqlc-generated queries on a pool whose connections log in with a
// secret's credentials.
func Example_sqlc() {
	pg := testdb.Current()
	if pg == nil {
		log.Fatal("examples need PostgreSQL: see internal/testdb")
	}
	ctx := context.Background()
	if err := pg.CreateRole(ctx, "example_pgx", "example-pgx-pw"); err != nil {
		log.Fatal(err)
	}
	defer pg.DropRole(ctx, "example_pgx")
	sm := smtest.NewServer()
	defer sm.Close()
	sm.CreateSecret("prod/pgx", `{"username":"example_pgx","password":"example-pgx-pw"}`)

	pool, err := pgxsecrets.NewPool(ctx, fmt.Sprintf(
		"host=%s port=%d dbname=postgres sslmode=verify-full sslrootcert=%s secret_id=prod/pgx secret_endpoint=%s pool_max_conns=4",
		pg.Host(), pg.Port(), pg.CAFile(), sm.URL()))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	q := &Queries{db: pool}
	n, err := q.CountTables(ctx, "information_schema")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(n > 0)
	// Output: true
}
