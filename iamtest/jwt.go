package iamtest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
)

// The JSON Web Tokens the issuers sign and check (RFC 7519, RS256 only):
// an Entra access token, a Google service account's assertion.

var b64 = base64.RawURLEncoding

// signJWT returns header.claims.signature, signed with key under RS256.
// kid, if set, names the key in the header.
func signJWT(key *rsa.PrivateKey, kid string, claims any) (string, error) {
	header := map[string]string{"alg": "RS256", "typ": "JWT"}
	if kid != "" {
		header["kid"] = kid
	}
	h, err := json.Marshal(header)
	if err != nil {
		return "", err
	}
	c, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signing := b64.EncodeToString(h) + "." + b64.EncodeToString(c)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return signing + "." + b64.EncodeToString(sig), nil
}

// errJWT says a token is not a JWT signed by the expected key; it never
// carries a part of the token.
var errJWT = errors.New("not an RS256 JWT signed by the expected key")

// verifyJWT checks that token is an RS256 JWT signed by pub and decodes
// its header's kid and its claims into claims.
func verifyJWT(token string, pub *rsa.PublicKey, claims any) (kid string, err error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", errJWT
	}
	h, err := b64.DecodeString(parts[0])
	if err != nil {
		return "", errJWT
	}
	var header struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if json.Unmarshal(h, &header) != nil || header.Alg != "RS256" {
		return "", errJWT
	}
	sig, err := b64.DecodeString(parts[2])
	if err != nil {
		return "", errJWT
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig) != nil {
		return "", errJWT
	}
	c, err := b64.DecodeString(parts[1])
	if err != nil || json.Unmarshal(c, claims) != nil {
		return "", errJWT
	}
	return header.Kid, nil
}
