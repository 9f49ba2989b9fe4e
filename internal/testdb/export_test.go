package testdb

// HBAConf exposes the pg_hba.conf text for tests.
var HBAConf = hbaConf

// SetPickPort replaces the port chooser and returns a function restoring it.
func SetPickPort(f func() (int, error)) (restore func()) {
	old := pickPort
	pickPort = f
	return func() { pickPort = old }
}

// FreePort is the real port chooser.
var FreePort = freePort
