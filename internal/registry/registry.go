// Package registry is the one shape of pgsecrets' named registries: the
// providers (secret_provider) and the engines (secret_driver) are sets of
// factories filled by init functions, as sql.Register fills database/sql's
// drivers.
package registry

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Set maps names to factories.
type Set[T any] struct {
	what string // "provider", "engine": for panics and errors
	key  string // the DSN key that names an entry
	// imports names the packages outside the core module that register an
	// entry, for the error of a DSN that asks for one not imported.
	imports map[string]string

	mu sync.RWMutex
	m  map[string]T
}

// New returns an empty set of what (for messages), named by the DSN key
// key; imports maps names registered outside the core to their package.
func New[T any](what, key string, imports map[string]string) *Set[T] {
	return &Set[T]{what: what, key: key, imports: imports, m: map[string]T{}}
}

// Key is the DSN key that names an entry.
func (s *Set[T]) Key() string { return s.key }

// Add registers v as name; it panics on an empty or duplicate name, as
// sql.Register does.
func (s *Set[T]) Add(name string, v T) {
	if name == "" {
		panic(fmt.Sprintf("pgsecrets: a %s needs a name", s.what))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.m[name]; dup {
		panic(fmt.Sprintf("pgsecrets: %s %q registered twice", s.what, name))
	}
	s.m[name] = v
}

// Lookup returns the entry registered as name.
func (s *Set[T]) Lookup(name string) (T, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.m[name]
	return v, ok
}

// Find returns the first registered name, in order, whose entry matches.
func (s *Set[T]) Find(match func(T) bool) string {
	for _, n := range s.Names() {
		if v, ok := s.Lookup(n); ok && match(v) {
			return n
		}
	}
	return ""
}

// Names returns the registered names, sorted.
func (s *Set[T]) Names() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	names := make([]string, 0, len(s.m))
	for n := range s.m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Unknown says that nobody registered name, what is registered, and which
// import would register it if it is known.
func (s *Set[T]) Unknown(name string) string {
	msg := fmt.Sprintf("%q is not a registered %s; registered: %s", name, s.what, strings.Join(s.Names(), ", "))
	if imp, ok := s.imports[name]; ok {
		msg += fmt.Sprintf(`; add import _ %q to the program to register it`, imp)
	}
	return msg
}
