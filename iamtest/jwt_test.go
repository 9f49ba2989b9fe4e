package iamtest

import (
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"testing"
)

// A signed JWT verifies with its key and decodes; another key, a changed
// claim or a changed algorithm does not.
func TestJWTRoundTrip(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := signJWT(key, "k1", map[string]any{"aud": "db", "exp": 42})
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		Aud string `json:"aud"`
		Exp int64  `json:"exp"`
	}
	kid, err := verifyJWT(tok, &key.PublicKey, &claims)
	if err != nil || kid != "k1" || claims.Aud != "db" || claims.Exp != 42 {
		t.Fatalf("verify = %q, %+v, %v", kid, claims, err)
	}
	if _, err := verifyJWT(tok, &other.PublicKey, &claims); err == nil {
		t.Error("a token verified with another key")
	}
	parts := strings.Split(tok, ".")
	forged := parts[0] + "." + b64.EncodeToString([]byte(`{"aud":"db","exp":99}`)) + "." + parts[2]
	if _, err := verifyJWT(forged, &key.PublicKey, &claims); err == nil {
		t.Error("a token with changed claims verified")
	}
	none := b64.EncodeToString([]byte(`{"alg":"none"}`)) + "." + parts[1] + "."
	if _, err := verifyJWT(none, &key.PublicKey, &claims); err == nil {
		t.Error("an unsigned token verified")
	}
}
