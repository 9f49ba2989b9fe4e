package gcpiam_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pgsecrets/pgsecrets/gcpiam"
	"github.com/pgsecrets/pgsecrets/iamtest"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
)

// A service account logs in to Cloud SQL as its database user with the
// key GOOGLE_APPLICATION_CREDENTIALS names. Here the token endpoint and
// the database are iamtest's stand-ins; in production the DSN names the
// instance's address and server CA, and the key (or the metadata server)
// is Google's.
func Example() {
	ctx := context.Background()
	issuer, _ := iamtest.NewGoogleIssuer(iamtest.GoogleOptions{})
	defer issuer.Close()
	email := "orders@" + issuer.ProjectID() + ".iam.gserviceaccount.com"
	user := gcpiam.DatabaseUser(email) // orders@iamtest-project.iam

	// The database: a role of that name behind a front end that checks
	// the issuer's tokens, as Cloud SQL does.
	pg := testdb.Current()
	_ = pg.CreateRole(ctx, user, "upstream-only")
	defer pg.DropRole(ctx, user)
	srv, _ := iamtest.New(iamtest.Options{
		Verifier:       issuer.Verifier(),
		RefusedMessage: issuer.RefusedMessage,
		Upstream: func(string) (string, error) {
			return fmt.Sprintf("host=%s port=%d user='%s' password=upstream-only dbname=postgres sslmode=verify-full sslrootcert='%s'",
				pg.Host(), pg.Port(), user, pg.CAFile()), nil
		},
	})
	defer srv.Close()

	// The service account's key, where Application Default Credentials
	// look first.
	dir, _ := os.MkdirTemp("", "gcpiam-example-")
	defer os.RemoveAll(dir)
	key, _ := issuer.ServiceAccountKey(email)
	keyFile := filepath.Join(dir, "key.json")
	_ = os.WriteFile(keyFile, key, 0o600)
	defer os.Unsetenv("GOOGLE_APPLICATION_CREDENTIALS")
	os.Setenv("GOOGLE_APPLICATION_CREDENTIALS", keyFile)

	db, err := sql.Open("pgsecrets", fmt.Sprintf(
		"host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=verify-full sslrootcert=%s secret_provider=gcp-iam",
		srv.Port(), user, srv.CAFile()))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer db.Close()
	var current string
	if err := db.QueryRowContext(ctx, "SELECT current_user").Scan(&current); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("logged in as", current)
	// Output: logged in as orders@iamtest-project.iam
}
