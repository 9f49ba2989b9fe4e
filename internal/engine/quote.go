package engine

import (
	"strings"
	"unicode"
)

// Quote quotes a key=value DSN value the way libpq's conninfo parser
// reads it, for both engines' DSNs: a value with white space (any, not
// only a space: pgx splits on every kind), a quote, a backslash or an
// equals sign is quoted, so that a value from a secret cannot add keys of
// its own.
func Quote(v string) string {
	if v != "" && !strings.ContainsFunc(v, func(r rune) bool {
		return unicode.IsSpace(r) || r == '\'' || r == '\\' || r == '='
	}) {
		return v
	}
	var b strings.Builder
	b.WriteByte('\'')
	for i := 0; i < len(v); i++ { // bytewise: keeps invalid UTF-8 as is
		if v[i] == '\'' || v[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('\'')
	return b.String()
}
