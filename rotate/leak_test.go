package rotate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/rotate"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// No password of any version, nor the admin's, appears in what the
// rotation side logs or returns, on success and on every kind of failure.
func TestRotationLeaksNothing(t *testing.T) {
	w := newWorld(t, nil)
	adminARN := w.admin()
	_, adminPW, _ := w.sm.Version(adminARN, rotate.StageCurrent)
	var printed []string
	note := func(v any, err error) {
		printed = append(printed, fmt.Sprintf("%+v", v))
		if err != nil {
			printed = append(printed, err.Error(), fmt.Sprintf("%#v", err))
		}
	}
	ctx := context.Background()
	single := w.rotator(rotate.Options{Probes: []string{"SELECT * FROM no_such_table"}})
	_, res, err := single.Rotate(ctx, w.secretID) // the probe fails testSecret
	note(res, err)
	if err == nil {
		t.Fatal("a failing probe passed")
	}
	_, res, err = w.rotator(rotate.Options{}).Resume(ctx, w.secretID)
	note(res, err)
	rb, err := w.rotator(rotate.Options{}).Rollback(ctx, w.secretID, true)
	note(rb, err)
	note(w.rotator(rotate.Options{}).Check(ctx, w.secretID, time.Now()), nil)

	// Alternating with a wrong admin password; then the store failing.
	w.changeCurrent(map[string]any{"masterarn": adminARN})
	var admin map[string]any
	json.Unmarshal([]byte(adminPW), &admin)
	admin["password"] = "wrong-" + admin["password"].(string)
	b, _ := json.Marshal(admin)
	w.sm.PutSecretValue(adminARN, string(b))
	_, res, err = w.rotator(rotate.Options{Strategy: rotate.AlternatingUsers}).Rotate(ctx, w.secretID)
	note(res, err)
	if err == nil || !strings.Contains(err.Error(), "admin") {
		t.Errorf("wrong admin password: %v", err)
	}
	w.sm.Inject("PutSecretValue", smtest.Fault{Kind: smtest.Fail})
	_, res, err = w.rotator(rotate.Options{}).Rotate(ctx, w.secretID)
	note(res, err)

	all := strings.Join(printed, "\n") + w.logs.String()
	secrets := []string{admin["password"].(string)}
	for id := range w.sm.Stages(w.secretID) {
		if v, ok := w.value(id); ok {
			secrets = append(secrets, v["password"].(string))
		}
	}
	json.Unmarshal([]byte(adminPW), &admin)
	secrets = append(secrets, admin["password"].(string))
	for _, s := range secrets {
		if strings.Contains(all, s) {
			t.Errorf("a password (%d bytes) was printed", len(s))
		}
	}
}
