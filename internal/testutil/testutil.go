// Package testutil holds the few helpers every test package shares: how to
// say a capability is missing, how a test says whether it needs root or
// also runs in the rootless pass, and how to find tools the tests drive.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
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

// RootlessEnv is the variable that marks the rootless pass of a suite
// (scripts/test-rootless.sh sets it when it runs the tests as a plain user).
const RootlessEnv = "LAYERFS_TEST_ROOTLESS"

// RootlessPass reports whether this is the rootless pass: the suite run
// again as a plain user to prove layerfs works without privileges.
func RootlessPass() bool { return os.Getenv(RootlessEnv) == "1" }

// NeedRootOrRootlessPass is for tests that must work with and without
// privileges: they run as root, and as a plain user in the rootless pass.
// A rootless pass that is in fact root fails: it would prove nothing. Out
// of either (a plain `go test` as a user) they are skipped as NeedRoot
// skips.
func NeedRootOrRootlessPass(t testing.TB) {
	t.Helper()
	if RootlessPass() {
		if os.Geteuid() == 0 {
			t.Fatalf("%s=1 but running as root: the rootless pass must run as a plain user", RootlessEnv)
		}
		return
	}
	NeedRoot(t)
}

// NeedRootOnly is for tests whose point needs root (device nodes, files
// owned by other users, kernel overlay mounts without a user namespace):
// the rootless pass skips them with why, whatever CI says; otherwise they
// need root as NeedRoot does.
func NeedRootOnly(t testing.TB, why string) {
	t.Helper()
	if RootlessPass() {
		t.Skipf("rootless pass: needs root: %s", why)
	}
	NeedRoot(t)
}

// NeedRootlessPass is for tests whose point is a plain user's view of
// something only such a user has (their own subordinate ID range, their
// own user namespaces): they run in the rootless pass only, and the root
// pass skips them with why, whatever CI says.
func NeedRootlessPass(t testing.TB, why string) {
	t.Helper()
	if !RootlessPass() {
		t.Skipf("runs in the rootless pass only: %s", why)
	}
	NeedRootOrRootlessPass(t)
}

// NeedTool needs a program on PATH and returns its path.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Need(t, err == nil, name+" is not installed (make test installs it)")
	return p
}

// SharedTestBinary copies the running test binary where every user may
// run it (go test builds it in a directory only its user reaches): for
// helper processes run as other users.
func SharedTestBinary(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, filepath.Base(os.Args[0]))
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}
