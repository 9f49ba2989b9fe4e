package testkit

import (
	"os"
	"testing"
)

// AWSEnv gives the AWS SDK's default chain the static key keyID/secret and
// nothing else for the rest of the test: no region, profile, session
// token, shared files or instance metadata. It also clears the PG*
// variables that would change which server a DSN reaches.
func AWSEnv(tb testing.TB, keyID, secret string) {
	tb.Setenv("AWS_ACCESS_KEY_ID", keyID)
	tb.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	tb.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	tb.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
	tb.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	for _, k := range []string{"AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
		"PGHOST", "PGPORT", "PGUSER", "PGSSLMODE"} {
		tb.Setenv(k, "") // restored after the test
		os.Unsetenv(k)
	}
}
