package vault_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// Dynamic credentials from Vault: every lease is a PostgreSQL role of its
// own, renewed while in use, never outlived by a connection, revoked at
// Close. vaulttest stands in for Vault here; in production VAULT_ADDR and
// VAULT_TOKEN (or secret_vault_auth=kubernetes) point at the real one.
func Example() {
	pg := testdb.Current()
	if pg == nil {
		log.Fatal("examples need PostgreSQL: see internal/testdb")
	}
	vs := vaulttest.NewServer()
	defer vs.Close()
	vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: pg.DB(), TTL: time.Hour, MaxTTL: 24 * time.Hour})
	os.Setenv("VAULT_ADDR", vs.URL())
	os.Setenv("VAULT_TOKEN", vs.RootToken())
	defer os.Unsetenv("VAULT_ADDR")
	defer os.Unsetenv("VAULT_TOKEN")

	// import _ "github.com/pgsecrets/pgsecrets/vault" registers the provider.
	db, err := sql.Open("pgsecrets", fmt.Sprintf(
		"host=%s port=%d dbname=postgres sslmode=verify-full sslrootcert=%s secret_provider=vault secret_id=database/creds/app",
		pg.Host(), pg.Port(), pg.CAFile()))
	if err != nil {
		log.Fatal(err)
	}
	var user string
	if err := db.QueryRow("SELECT current_user").Scan(&user); err != nil {
		log.Fatal(err)
	}
	fmt.Println("logged in as a lease role:", strings.HasPrefix(user, "v-token-app-"))
	db.Close()
	fmt.Println("leases left after Close:", vs.ActiveLeases())
	// Output:
	// logged in as a lease role: true
	// leases left after Close: 0
}

// What pgsecrets check prints about a Vault secret comes from
// Connector.Describe.
func Example_describe() {
	pg := testdb.Current()
	vs := vaulttest.NewServer()
	defer vs.Close()
	vs.PutKV("secret", "app/db", map[string]any{"username": "nobody", "password": "unused"})
	os.Setenv("VAULT_TOKEN", vs.RootToken())
	defer os.Unsetenv("VAULT_TOKEN")
	c, err := pgsecrets.NewConnector(fmt.Sprintf("host=%s port=%d secret_provider=vault secret_id=secret/data/app/db secret_endpoint=%s",
		pg.Host(), pg.Port(), vs.URL()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	facts, err := c.Describe(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range facts {
		if f.Name != "vault" && f.Name != "version" {
			fmt.Printf("%s: %s\n", f.Name, f.Value)
		}
	}
	// Output:
	// provider: vault
	// user: nobody
	// path: secret/data/app/db (KV version 2)
	// auth: token
	// token: does not expire
}
