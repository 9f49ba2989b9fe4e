package pgsecrets

import "github.com/pgsecrets/pgsecrets/internal/registry"

// The providers (secret_provider, provider.go) and the engines
// (secret_driver, internal/engine) are two sets of one shape
// (internal/registry): the same refusal of a duplicate, the same error for
// a name nobody registered.

// unknownName is the DSN error for a name nobody registered in s.
func unknownName[T any](s *registry.Set[T], name string) error {
	return &DSNError{Key: s.Key(), Msg: s.Unknown(name)}
}
