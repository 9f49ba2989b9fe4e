package entra_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"

	_ "github.com/pgsecrets/pgsecrets/entra" // secret_provider=entra

	"github.com/pgsecrets/pgsecrets/iamtest"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
)

// An application with a user-assigned managed identity logs in as the
// identity's role: the DSN names no password and no secret, only the
// provider (and here the identity, as the resource has several). On Azure
// that is all; here the iamtest issuer plays the App Service identity
// endpoint and its front end the Azure server, in front of a real
// PostgreSQL role.
func Example() {
	const identity = "6f1d3a52-8c1e-4b7a-9d2e-0a5b7c9e1f34" // the identity's client id
	pg := testdb.Current()
	if pg == nil {
		log.Fatal("examples need PostgreSQL: see internal/testdb")
	}
	ctx := context.Background()
	// What SELECT * FROM pgaadauth_create_principal('example-app', false, false)
	// makes on Azure: a role named after the identity.
	if err := pg.CreateRole(ctx, "example-app", "upstream-only-pw"); err != nil {
		log.Fatal(err)
	}
	defer pg.DropRole(ctx, "example-app")

	issuer, err := iamtest.NewEntraIssuer(iamtest.EntraOptions{
		UserAssigned: []iamtest.EntraIdentity{{ClientID: identity, Principal: "example-app"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer issuer.Close()
	defer setenv(issuer.Env())() // App Service sets IDENTITY_ENDPOINT and IDENTITY_HEADER
	opts := iamtest.Options{Upstream: func(user string) (string, error) {
		return fmt.Sprintf("host=%s port=%d user=%s password=upstream-only-pw dbname=postgres sslmode=verify-full sslrootcert=%s",
			pg.Host(), pg.Port(), user, pg.CAFile()), nil
	}}
	issuer.Configure(&opts)
	azure, err := iamtest.New(opts)
	if err != nil {
		log.Fatal(err)
	}
	defer azure.Close()

	db, err := sql.Open("pgsecrets", fmt.Sprintf(
		"host=%s port=%d user=example-app dbname=postgres sslmode=verify-full sslrootcert=%s secret_provider=entra secret_entra_client_id=%s",
		azure.Host(), azure.Port(), azure.CAFile(), identity))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	var user string
	if err := db.QueryRowContext(ctx, "SELECT current_user").Scan(&user); err != nil {
		log.Fatal(err)
	}
	fmt.Println("logged in as", user)
	// Output: logged in as example-app
}

// setenv sets env, having unset what else would pick the managed identity
// source, and returns what restores the environment.
func setenv(env map[string]string) (restore func()) {
	saved := map[string]*string{}
	for _, k := range iamtest.EntraClearEnv {
		if v, ok := os.LookupEnv(k); ok {
			saved[k] = &v
		} else {
			saved[k] = nil
		}
		os.Unsetenv(k)
	}
	for k, v := range env {
		os.Setenv(k, v)
	}
	return func() {
		for k, v := range saved {
			if v == nil {
				os.Unsetenv(k)
			} else {
				os.Setenv(k, *v)
			}
		}
	}
}
