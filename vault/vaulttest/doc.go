// Package vaulttest is an in-process fake of the parts of the HashiCorp Vault
// HTTP API that applications use to fetch PostgreSQL credentials: tokens,
// AppRole and Kubernetes logins, the database secrets engine (dynamic and
// static roles) backed by a real PostgreSQL server, leases, and KV version 2.
//
// The server listens on 127.0.0.1 only and speaks the wire format of Vault,
// so the official client (github.com/hashicorp/vault/api) works against it
// unchanged:
//
//	srv := vaulttest.Start(t)
//	srv.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{
//		DB:     adminDB, // a superuser *sql.DB of the test's PostgreSQL
//		TTL:    time.Minute,
//		MaxTTL: 10 * time.Minute,
//		Grants: []string{`GRANT SELECT ON ALL TABLES IN SCHEMA public TO {{name}}`},
//	})
//	cfg := api.DefaultConfig()
//	cfg.Address = srv.URL()
//	client, _ := api.NewClient(cfg)
//	client.SetToken(srv.RootToken())
//	secret, _ := client.Logical().Read("database/creds/app")
//
// Dynamic credentials are real PostgreSQL roles, created when issued and
// dropped when their lease is revoked, expires, or when the token that asked
// for them is revoked or expires, all by the real-time clock, as Vault does.
// That is the point of the package: code that renews leases, rotates
// connection pools or reacts to revoked credentials can be tested against the
// behaviour of PostgreSQL rather than against a mock that always agrees.
//
// Faults (errors, latency, hangs, dropped connections) can be injected per
// operation with [Server.Inject], and every request is counted per operation
// ([Server.Calls]), so tests can check retry and caching behaviour.
//
// Secrets (tokens, passwords, secret IDs, JWTs) never appear in what the
// server logs or in the errors it returns. Passwords are also never sent to
// PostgreSQL in clear text: the server computes the SCRAM-SHA-256 verifier
// itself and stores that, so statement logs of the database stay clean too.
//
// What is not modelled: Vault's full ACL language (policies here are lists of
// path patterns), token hierarchies, response wrapping, KV metadata and
// deletion endpoints, and any storage across restarts.
package vaulttest
