package pgsecrets

import (
	"context"
	"sync/atomic"
)

var fileReads, fileFetches atomic.Int64

func init() {
	testHookFileRead = func() { fileReads.Add(1) }
	testHookFileFetch = func() { fileFetches.Add(1) }
}

// FileReads is how many times file providers read content (not the stats
// of unchanged files) in this process.
func FileReads() int64 { return fileReads.Load() }

// FileFetches is how many times file providers' Fetch got past its lock.
func FileFetches() int64 { return fileFetches.Load() }

// FileVersionID is the version id a file provider gives a JSON file with
// this content, so tests can tell which content is in use.
func FileVersionID(content string) string { return contentVersion([]byte(content)) }

// NewProviderForTest builds the provider a DSN names, as NewConnector would,
// for tests that call Fetch directly.
func NewProviderForTest(dsn string) (Provider, *Config, error) {
	cfg, err := ParseDSN(dsn)
	if err != nil {
		return nil, nil, err
	}
	info, _ := lookupProvider(cfg.Provider)
	p, err := info.factory(context.Background(), cfg)
	return p, cfg, err
}
