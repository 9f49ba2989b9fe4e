package rotate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"

	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/rotate"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// Rotate a secret now: the four steps, each reporting what it did.
func ExampleRotator_Rotate() {
	pg := testdb.Current()
	if pg == nil {
		log.Fatal("examples need PostgreSQL: see internal/testdb")
	}
	ctx := context.Background()
	if err := pg.CreateRole(ctx, "example_rotate", "example-rotate-pw"); err != nil {
		log.Fatal(err)
	}
	defer pg.DropRole(ctx, "example_rotate")
	sm := smtest.NewServer()
	defer sm.Close()
	v, _ := json.Marshal(map[string]any{"username": "example_rotate", "password": "example-rotate-pw",
		"host": pg.Host(), "port": pg.Port(), "dbname": "postgres", "engine": "postgres"})
	sm.CreateSecret("prod/example", string(v))

	r := rotate.New(sm.Client(), rotate.Options{ConnParams: "sslmode=verify-full sslrootcert=" + pg.CAFile(),
		Probes: []string{"SELECT 1"}})
	_, steps, err := r.Rotate(ctx, "prod/example")
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range steps {
		fmt.Println(s.Step, s.Changed)
	}
	// Output:
	// createSecret true
	// setSecret true
	// testSecret false
	// finishSecret true
}
