package smtest

import (
	"crypto/rand"
	"encoding/binary"
	"strings"
)

// Punctuation is the set of punctuation characters GetRandomPassword uses,
// as AWS documents it. ExcludePunctuation removes exactly these.
const Punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"

const (
	lowerChars = "abcdefghijklmnopqrstuvwxyz"
	upperChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	digitChars = "0123456789"
)

type passwordSpec struct {
	length             int
	excludeCharacters  string
	excludeNumbers     bool
	excludePunctuation bool
	excludeUppercase   bool
	excludeLowercase   bool
	includeSpace       bool
	requireEach        bool
}

// randomPassword makes a password as GetRandomPassword does. A character
// type all of whose characters are in excludeCharacters counts as excluded,
// so that requireEach cannot ask for a character that may not appear.
func randomPassword(spec passwordSpec) (string, *Error) {
	var classes []string
	add := func(excluded bool, chars string) {
		if excluded {
			return
		}
		var b strings.Builder
		for _, c := range chars {
			if !strings.ContainsRune(spec.excludeCharacters, c) {
				b.WriteRune(c)
			}
		}
		if b.Len() > 0 {
			classes = append(classes, b.String())
		}
	}
	add(spec.excludeLowercase, lowerChars)
	add(spec.excludeUppercase, upperChars)
	add(spec.excludeNumbers, digitChars)
	add(spec.excludePunctuation, Punctuation)
	add(!spec.includeSpace, " ")
	if len(classes) == 0 {
		return "", errInvalidParam("The password can't be generated because every character type is excluded.")
	}
	if spec.requireEach && spec.length < len(classes) {
		return "", errInvalidParam("Password length is too short based on the required types.")
	}
	pool := strings.Join(classes, "")
	out := make([]byte, 0, spec.length)
	if spec.requireEach {
		for _, c := range classes {
			out = append(out, c[randIndex(len(c))])
		}
	}
	for len(out) < spec.length {
		out = append(out, pool[randIndex(len(pool))])
	}
	// Without shuffling, the required characters would always lead, in
	// type order, which a caller could come to rely on.
	for i := len(out) - 1; i > 0; i-- {
		j := randIndex(i + 1)
		out[i], out[j] = out[j], out[i]
	}
	return string(out), nil
}

// randIndex returns a uniformly distributed index below n from crypto/rand;
// values in the incomplete last block are rejected to avoid modulo bias.
func randIndex(n int) int {
	limit := ^uint32(0) - ^uint32(0)%uint32(n)
	var b [4]byte
	for {
		rand.Read(b[:])
		if v := binary.LittleEndian.Uint32(b[:]); v < limit {
			return int(v % uint32(n))
		}
	}
}
