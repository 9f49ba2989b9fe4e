package pgsecrets

import (
	"context"
	"fmt"
	"os"
	"sync"
)

// keyUsernameEnv is the env provider's own DSN key.
const keyUsernameEnv = "secret_username_env"

func init() {
	RegisterProvider("env", newEnvProvider, keyUsernameEnv)
}

// newEnvProvider is the env factory (secret_provider=env), for local
// development and for moving an application off a hard-coded password one
// step at a time: secret_id is the name of the environment variable that
// holds the password, and the username comes from the variable named by
// secret_username_env, else from the DSN's user. A DSN with neither is
// rejected here.
//
// There is no rotation: a process's environment is fixed when it starts,
// so a new password reaches the driver only with a restart, unless the
// process changes its own environment (os.Setenv). The variables are read
// at every fetch (once per secret_ttl, and at once after an
// authentication failure), so such a change is picked up like a rotation.
func newEnvProvider(_ context.Context, cfg *Config) (Provider, error) {
	p := &envProvider{secretID: cfg.SecretID, passwordVar: cfg.SecretID}
	if v, ok := cfg.ProviderParam(keyUsernameEnv); ok {
		if v == "" {
			return nil, &DSNError{Key: keyUsernameEnv, Msg: "must name the environment variable that holds the username"}
		}
		p.usernameVar = v
	} else if u, ok := cfg.param("user"); ok && u != "" {
		p.username = u
	} else {
		return nil, &DSNError{Key: keyUsernameEnv, Msg: "secret_provider=env needs a username: set " + keyUsernameEnv +
			" to the name of the environment variable that holds it, or user= in the DSN"}
	}
	return p, nil
}

// envProvider reads the password (and maybe the username) from the
// process environment.
type envProvider struct {
	secretID    string
	passwordVar string
	usernameVar string // "" when the username is fixed
	username    string // from the DSN's user=

	mu   sync.Mutex
	last *Credentials // returned again while the variables are unchanged
}

// CacheKey implements CacheKeyer. secret_id (the password variable) is
// part of the cache key already; connectors that take the username from
// different places must not share credentials.
func (p *envProvider) CacheKey() string {
	if p.usernameVar != "" {
		return "user-env:" + p.usernameVar
	}
	return "user:" + p.username
}

// Fetch reads the variables.
func (p *envProvider) Fetch(_ context.Context, stage string) (*Credentials, error) {
	pw, err := p.lookup(stage, p.passwordVar, "password")
	if err != nil {
		return nil, err
	}
	user := p.username
	if p.usernameVar != "" {
		if user, err = p.lookup(stage, p.usernameVar, "username"); err != nil {
			return nil, err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.last; c != nil && c.Username == user && c.Password.Reveal() == pw && c.Stage == stage {
		return c, nil
	}
	// The version id lets logs show that the value changed without
	// showing it (see contentVersion).
	version := contentVersion(fmt.Appendf(nil, "%d\x00%s\x00%s", len(user), user, pw))
	p.last = &Credentials{Username: user, Password: NewSecret(pw), VersionID: version, Stage: stage}
	return p.last, nil
}

// lookup returns a variable's value; unset and empty are the same, since
// an empty password or username cannot log in.
func (p *envProvider) lookup(stage, name, what string) (string, error) {
	if v := os.Getenv(name); v != "" {
		return v, nil
	}
	return "", &SecretError{Kind: ErrSecretNotFound, SecretID: p.secretID, Stage: stage,
		Detail: fmt.Sprintf("environment variable %s (the %s) is not set or empty", name, what),
		Hint:   "set it in the process's environment before it starts; secret_provider=env reads secret_id as the password variable's name and " + keyUsernameEnv + " as the username variable's"}
}
