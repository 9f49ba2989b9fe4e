package vaulttest_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// An application logs in with AppRole and reads a KV secret, with no
// PostgreSQL involved.
func Example() {
	srv := vaulttest.NewServer()
	defer srv.Close()
	srv.PutKV("secret", "app/config", map[string]any{"dbname": "orders"})
	srv.SetPolicy("app", "secret/data/app/*")
	srv.AddAppRole("approle", "app", "my-role-id", "my-secret-id",
		vaulttest.TokenOptions{TTL: time.Hour, Renewable: true, Policies: []string{"app"}})

	cfg := api.DefaultConfig()
	cfg.Address = srv.URL()
	client, err := api.NewClient(cfg)
	if err != nil {
		panic(err)
	}
	client.ClearToken()
	login, err := client.Logical().Write("auth/approle/login", map[string]any{
		"role_id": "my-role-id", "secret_id": "my-secret-id",
	})
	if err != nil {
		panic(err)
	}
	client.SetToken(login.Auth.ClientToken)

	kv, err := client.KVv2("secret").Get(context.Background(), "app/config")
	if err != nil {
		panic(err)
	}
	fmt.Println(kv.Data["dbname"], kv.VersionMetadata.Version)
	fmt.Println("logins:", srv.Logins("approle"))
	// Output:
	// orders 1
	// logins: 1
}

// Injected faults and counters test how a client copes with an outage.
func ExampleServer_Inject() {
	srv := vaulttest.NewServer()
	defer srv.Close()
	srv.PutKV("secret", "app", map[string]any{"k": "v"})

	cfg := api.DefaultConfig()
	cfg.Address = srv.URL()
	cfg.MaxRetries = 0
	client, _ := api.NewClient(cfg)
	client.SetToken(srv.RootToken())

	remove := srv.Inject(vaulttest.OpKVRead, vaulttest.Fault{Kind: vaulttest.FaultError})
	_, err := client.KVv2("secret").Get(context.Background(), "app")
	var re *api.ResponseError
	if errors.As(err, &re) {
		fmt.Println(re.StatusCode, re.Errors)
	}
	remove()
	_, err = client.KVv2("secret").Get(context.Background(), "app")
	fmt.Println(err, srv.Calls(vaulttest.OpKVRead))
	// Output:
	// 503 [Vault is sealed]
	// <nil> 2
}
