// Package vault registers the "vault" secret provider with pgsecrets.
package vault
