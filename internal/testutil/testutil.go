// Package testutil holds the few helpers every test package shares: how to
// say a capability is missing, and how to find tools the tests drive.
package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (.ci/run sets CI=true), where
// every capability the suite needs is installed and a skip would hide a
// failure.
func InCI() bool { return os.Getenv("CI") != "" }

// Need skips the test when ok is false, with reason, except in CI, where a
// missing capability is a failure: CI must run every test.
func Need(t testing.TB, ok bool, reason string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("required capability missing in CI: %s", reason)
	}
	t.Skipf("skipped: %s", reason)
}

// NeedRoot needs euid 0.
func NeedRoot(t testing.TB) {
	t.Helper()
	Need(t, os.Geteuid() == 0, "needs root")
}

// NeedTool needs a program on PATH and returns its path.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Need(t, err == nil, name+" is not installed (make test installs it)")
	return p
}
