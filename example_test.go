package pgsecrets_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"expvar"
	"fmt"
	"log"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/lib/pq"
	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// exampleWorld starts what a real deployment already has: a database role
// and its secret. The examples print nothing about it.
func exampleWorld(role string) (dsn string, sm *smtest.Server, cleanup func()) {
	pg := testdb.Current()
	if pg == nil {
		log.Fatal("examples need PostgreSQL: see internal/testdb")
	}
	sm = smtest.NewServer()
	pw := "example-" + role + "-pw"
	if err := pg.CreateRole(context.Background(), role, pw); err != nil {
		log.Fatal(err)
	}
	sm.CreateSecret("prod/"+role, fmt.Sprintf(`{"username":%q,"password":%q,"engine":"postgres"}`, role, pw))
	dsn = fmt.Sprintf("postgres://%s:%d/postgres?sslmode=verify-full&sslrootcert=%s&secret_id=prod/%s&secret_endpoint=%s",
		pg.Host(), pg.Port(), pg.CAFile(), role, sm.URL())
	return dsn, sm, func() {
		sm.Close()
		_ = pg.DropRole(context.Background(), role)
	}
}

// Replace sql.Open("postgres", dsn) with sql.Open("pgsecrets", dsn), drop
// the password from the DSN and name the secret.
func Example() {
	dsn, _, cleanup := exampleWorld("orders_app")
	defer cleanup()

	db, err := sql.Open("pgsecrets", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	var user string
	if err := db.QueryRow("SELECT current_user").Scan(&user); err != nil {
		log.Fatal(err)
	}
	fmt.Println("connected as", user)
	// Output: connected as orders_app
}

// Open also sets a connection lifetime derived from secret_ttl.
func ExampleOpen() {
	dsn, _, cleanup := exampleWorld("billing_app")
	defer cleanup()

	db, err := pgsecrets.Open(dsn + "&secret_ttl=15m")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if err := db.Ping(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("ok")
	// Output: ok
}

// A connector with your own logger and your own Secrets Manager client.
func ExampleNewConnector() {
	dsn, sm, cleanup := exampleWorld("reports_app")
	defer cleanup()

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	connector, err := pgsecrets.NewConnector(dsn,
		pgsecrets.WithLogger(logger),
		pgsecrets.WithSecretsManagerClient(sm.Client()), // e.g. secretsmanager.NewFromConfig(yourAWSConfig)
	)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	db.SetConnMaxLifetime(connector.ConnMaxLifetime())

	var n int
	if err := db.QueryRow("SELECT 40 + 2").Scan(&n); err != nil {
		log.Fatal(err)
	}
	fmt.Println(n)
	// Output: 42
}

// Publish the connector's counters with expvar (served at /debug/vars by
// net/http's default mux).
func ExampleConnector_Stats() {
	dsn, _, cleanup := exampleWorld("metrics_app")
	defer cleanup()

	connector, err := pgsecrets.NewConnector(dsn)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	if expvar.Get("pgsecrets") == nil {
		expvar.Publish("pgsecrets", expvar.Func(func() any { return connector.Stats() }))
	}
	if err := db.Ping(); err != nil {
		log.Fatal(err)
	}

	var st pgsecrets.Stats
	if err := json.Unmarshal([]byte(connector.Stats().String()), &st); err != nil {
		log.Fatal(err)
	}
	fmt.Println("store calls:", st.StoreCalls, "breaker:", st.BreakerState)
	// Output: store calls: 1 breaker: closed
}

// Watch the event stream: here, every login and how it ended. A tracer or
// a metrics exporter is such an observer (see the telemetry module).
func ExampleWithObserver() {
	dsn, _, cleanup := exampleWorld("observed_app")
	defer cleanup()

	var mu sync.Mutex
	var seen []string
	watch := pgsecrets.ObserverFunc(func(ctx context.Context, e pgsecrets.Event) context.Context {
		if e.Kind == pgsecrets.KindLoginEnd || e.Kind == pgsecrets.KindServed {
			mu.Lock()
			seen = append(seen, e.Kind.String()+" "+e.Outcome)
			mu.Unlock()
		}
		return ctx
	})
	db, err := pgsecrets.Open(dsn, pgsecrets.WithObserver(watch))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if err := db.Ping(); err != nil {
		log.Fatal(err)
	}
	mu.Lock()
	fmt.Println(strings.Join(seen, "; "))
	mu.Unlock()
	// Output: served waited; login.end ok
}

// ParseDSN splits the secret_* keys from what lib/pq gets; a parsed DSN
// prints with its password redacted.
func ExampleParseDSN() {
	cfg, err := pgsecrets.ParseDSN("postgres://app:hunter2@db.internal/orders?sslmode=verify-full&secret_id=prod/orders&secret_ttl=5m")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(cfg.SecretID, cfg.TTL)
	fmt.Println(cfg)
	// Output:
	// prod/orders 5m0s
	// user=app host=db.internal dbname=orders sslmode=verify-full password=[REDACTED] secret_id=prod/orders secret_ttl=5m
}

func ExampleSecret() {
	pw := pgsecrets.NewSecret("hunter2")
	fmt.Println(pw)
	fmt.Printf("%#v %q\n", pw, pw)
	b, _ := json.Marshal(map[string]any{"password": pw})
	fmt.Println(string(b))
	// Output:
	// [REDACTED]
	// [REDACTED] "[REDACTED]"
	// {"password":"[REDACTED]"}
}

// Refresh picks up a new version at once, for an application told of a
// rotation by something else (an EventBridge rule on RotationSucceeded, a
// deploy hook).
func ExampleConnector_Refresh() {
	dsn, sm, cleanup := exampleWorld("events_app")
	defer cleanup()

	connector, err := pgsecrets.NewConnector(dsn + "&secret_ttl=1h")
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	if err := db.Ping(); err != nil {
		log.Fatal(err)
	}

	// Elsewhere, a new version of the secret is written (same password
	// here, so the database needs no change).
	newVersion, err := sm.PutSecretValue("prod/events_app",
		`{"username":"events_app","password":"example-events_app-pw","engine":"postgres"}`)
	if err != nil {
		log.Fatal(err)
	}

	version, err := connector.Refresh(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("now using the new version:", version == newVersion, connector.Stats().VersionID == newVersion)
	// Output: now using the new version: true true
}

// A secret whose password the database rejects fails at once, with
// lib/pq's error inside.
func ExampleSecretError() {
	dsn, sm, cleanup := exampleWorld("typo_app")
	defer cleanup()
	if _, err := sm.PutSecretValue("prod/typo_app", `{"username":"typo_app","password":"not-the-password"}`); err != nil {
		log.Fatal(err)
	}

	db, err := sql.Open("pgsecrets", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	err = db.Ping()
	var se *pgsecrets.SecretError
	var pqErr *pq.Error
	if errors.As(err, &se) && errors.As(err, &pqErr) {
		fmt.Println(errors.Is(err, pgsecrets.ErrAuthFailed), se.SecretID, se.SQLState, pqErr.Code.Name())
	}
	// A second attempt is answered by the circuit breaker, without I/O.
	fmt.Println(errors.Is(db.Ping(), pgsecrets.ErrCircuitOpen))
	// Output:
	// true prod/typo_app 28P01 invalid_password
	// true
}

// A secret in a file, as a Kubernetes Secret volume, the Secrets Store CSI
// driver or a Vault Agent template writes it: re-read when it changes.
func Example_file() {
	pg := testdb.Current()
	if pg == nil {
		log.Fatal("examples need PostgreSQL: see internal/testdb")
	}
	if err := pg.CreateRole(context.Background(), "example_file_app", "example-file-pw"); err != nil {
		log.Fatal(err)
	}
	defer pg.DropRole(context.Background(), "example_file_app")
	dir, err := os.MkdirTemp("", "pgsecrets-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	file := dir + "/db.json"
	if err := os.WriteFile(file, []byte(`{"username":"example_file_app","password":"example-file-pw"}`), 0o600); err != nil {
		log.Fatal(err)
	}

	db, err := sql.Open("pgsecrets", fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=verify-full sslrootcert=%s secret_provider=file secret_id=%s",
		pg.Host(), pg.Port(), pg.CAFile(), file))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	var user string
	if err := db.QueryRow("SELECT current_user").Scan(&user); err != nil {
		log.Fatal(err)
	}
	fmt.Println("logged in as", user)
	// Output: logged in as example_file_app
}

// A store of your own: a Provider, registered under a name the DSN's
// secret_provider selects, with the DSN keys it reads.
func ExampleRegisterProvider() {
	pgsecrets.RegisterProvider("example-static", func(ctx context.Context, cfg *pgsecrets.Config) (pgsecrets.Provider, error) {
		user, _ := cfg.ProviderParam("secret_example_user")
		return staticProvider{user: user}, nil
	}, "secret_example_user")

	cfg, err := pgsecrets.ParseDSN("host=db secret_provider=example-static secret_id=app secret_example_user=app")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(cfg.Provider)
	_, err = pgsecrets.ParseDSN("host=db secret_provider=nosuch secret_id=app")
	fmt.Println(errors.Is(err, pgsecrets.ErrInvalidDSN))
	// Output:
	// example-static
	// true
}

type staticProvider struct{ user string }

func (p staticProvider) Fetch(ctx context.Context, stage string) (*pgsecrets.Credentials, error) {
	return &pgsecrets.Credentials{Username: p.user, Password: pgsecrets.NewSecret(os.Getenv("APP_DB_PASSWORD"))}, nil
}
