package vaulttest_test

import (
	"errors"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

func TestKVv2(t *testing.T) {
	t.Parallel()
	s := vaulttest.Start(t)
	data := map[string]any{"username": "app", "port": 5432}
	if v := s.PutKV("secret", "app/db", data); v != 1 {
		t.Fatalf("first PutKV = version %d", v)
	}
	data["username"] = "changed after PutKV" // must not affect the stored copy
	kv := client(t, s, s.RootToken()).KVv2("secret")

	got, err := kv.Get(t.Context(), "app/db")
	if err != nil {
		t.Fatal(err)
	}
	if got.Data["username"] != "app" || got.VersionMetadata == nil || got.VersionMetadata.Version != 1 ||
		got.VersionMetadata.CreatedTime.IsZero() || got.VersionMetadata.Destroyed {
		t.Fatalf("Get = %v, %+v", got.Data, got.VersionMetadata)
	}

	// Writing through the API makes version 2.
	put, err := kv.Put(t.Context(), "app/db", map[string]any{"username": "app2"})
	if err != nil {
		t.Fatal(err)
	}
	if put.VersionMetadata.Version != 2 {
		t.Fatalf("Put = version %d, want 2", put.VersionMetadata.Version)
	}
	if got, err = kv.Get(t.Context(), "app/db"); err != nil || got.Data["username"] != "app2" {
		t.Fatalf("Get after Put = %v, %v", got, err)
	}
	old, err := kv.GetVersion(t.Context(), "app/db", 1)
	if err != nil || old.Data["username"] != "app" || old.VersionMetadata.Version != 1 {
		t.Fatalf("GetVersion(1) = %v, %v", old, err)
	}
	if _, err := kv.GetVersion(t.Context(), "app/db", 3); !errors.Is(err, api.ErrSecretNotFound) {
		t.Fatalf("GetVersion(3): error = %v, want ErrSecretNotFound", err)
	}

	// Check-and-set.
	if _, err := kv.Put(t.Context(), "app/db", map[string]any{"x": 1}, api.WithCheckAndSet(1)); err == nil {
		t.Fatalf("Put with a stale cas succeeded")
	}
	if s.PutKV("secret", "app/db", map[string]any{"x": 2}) != 3 {
		t.Fatalf("PutKV after two versions is not version 3")
	}

	// Missing secrets: 404 {"errors":[]}, which the client reports as not found.
	if _, err := kv.Get(t.Context(), "app/none"); !errors.Is(err, api.ErrSecretNotFound) {
		t.Fatalf("Get of a missing secret: error = %v, want ErrSecretNotFound", err)
	}
	resp, err := client(t, s, s.RootToken()).Logical().ReadRawWithContext(t.Context(), "secret/data/app/none")
	if resp == nil || resp.StatusCode != 404 {
		t.Fatalf("raw read of a missing secret: %v, %v", resp, err)
	}
	re := responseError(t, err, 404)
	if len(re.Errors) != 0 {
		t.Fatalf("missing secret errors = %q, want none", re.Errors)
	}

	// Mounts with slashes, enabled explicitly.
	s.EnableKV("kv/team-a")
	team := client(t, s, s.RootToken()).KVv2("kv/team-a")
	if _, err := team.Put(t.Context(), "db", map[string]any{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	if got, err := team.Get(t.Context(), "db"); err != nil || got.Data["k"] != "v" {
		t.Fatalf("Get from kv/team-a = %v, %v", got, err)
	}
}
