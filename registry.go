package pgsecrets

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// namedSet is a set of named factories filled by init functions, as
// sql.Register fills database/sql's drivers: the providers
// (secret_provider) and the engines (secret_driver) are two of them.
type namedSet[T any] struct {
	what string // "provider", "engine": for panics and errors
	key  string // the DSN key that names an entry
	// imports names the packages outside the core module that register
	// an entry, for the error of a DSN that asks for one not imported.
	imports map[string]string

	mu sync.RWMutex
	m  map[string]T
}

func newNamedSet[T any](what, key string, imports map[string]string) *namedSet[T] {
	return &namedSet[T]{what: what, key: key, imports: imports, m: map[string]T{}}
}

// add registers v as name; it panics on a duplicate, as sql.Register does.
func (r *namedSet[T]) add(name string, v T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.m[name]; dup {
		panic(fmt.Sprintf("pgsecrets: %s %q registered twice", r.what, name))
	}
	r.m[name] = v
}

func (r *namedSet[T]) lookup(name string) (T, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	v, ok := r.m[name]
	return v, ok
}

// find returns the first registered name, in order, whose entry matches.
func (r *namedSet[T]) find(match func(T) bool) string {
	for _, n := range r.names() {
		if v, ok := r.lookup(n); ok && match(v) {
			return n
		}
	}
	return ""
}

// names returns the registered names, sorted.
func (r *namedSet[T]) names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.m))
	for n := range r.m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// unknown is the DSN error for a name nobody registered.
func (r *namedSet[T]) unknown(name string) error {
	msg := fmt.Sprintf("%q is not a registered %s; registered: %s", name, r.what, strings.Join(r.names(), ", "))
	if imp, ok := r.imports[name]; ok {
		msg += fmt.Sprintf(`; add import _ %q to the program to register it`, imp)
	}
	return &DSNError{Key: r.key, Msg: msg}
}
