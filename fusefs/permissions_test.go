package fusefs

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/internal/userns"
	"github.com/layerfs/layerfs/statoverride"
	"github.com/layerfs/layerfs/whiteout"
)

// mountOptionsOf returns the per-superblock options /proc/self/mountinfo
// lists for mnt.
func mountOptionsOf(t testing.TB, mnt string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == mnt {
			return strings.Split(f[len(f)-1], ",")
		}
	}
	t.Fatalf("%s is not in mountinfo", mnt)
	return nil
}

func hasOption(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}

// TestRootKeepsDefaultPermissions: root of the initial user namespace
// mounts with default_permissions, with or without allow_other.
func TestRootKeepsDefaultPermissions(t *testing.T) {
	needFuse(t)
	testutil.Need(t, userns.PrivilegedRoot(), "needs root in the initial user namespace")
	for _, allowOther := range []bool{false, true} {
		lowers, upper, work := layerDirs(t, 1)
		mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work, AllowOther: allowOther})
		if opts := mountOptionsOf(t, mnt); !hasOption(opts, "default_permissions") {
			t.Errorf("allow_other=%v: mounted with %v, want default_permissions", allowOther, opts)
		}
	}
}

const permsEnv = "FUSEFS_PERMS_DIR"

// TestMounterDecides runs TestMounterDecidesChild as a plain user (uid
// 65534, mounting through fusermount3): a mounter who is not root.
func TestMounterDecides(t *testing.T) {
	needFuse(t)
	testutil.NeedTool(t, "fusermount3")
	testutil.Need(t, unix.Access("/dev/fuse", unix.R_OK|unix.W_OK) == nil, "needs /dev/fuse")
	var st unix.Stat_t
	testutil.Need(t, unix.Stat("/dev/fuse", &st) == nil && st.Mode&0o006 == 0o006, "needs /dev/fuse open to every user (chmod 0666 /dev/fuse, as distributions ship it)")
	base, err := os.MkdirTemp("/tmp", "fusefs-perms-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(base, "fusefs.test")
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(base, "work")
	mustMkdir(t, work)
	if err := os.Chown(work, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o755)
	cmd := exec.Command(exe, "-test.run=^TestMounterDecidesChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), permsEnv+"="+work, "CI=")
	cmd.Dir = work
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestMounterDecidesChild") {
		t.Fatalf("child as uid 65534: %v\n%s", err, out)
	}
}

// TestMounterDecidesChild: without default_permissions the mounter
// writes a file the view shows as read-only and another user's, access(2)
// agrees, exec still needs an execute bit, and a read-only view says EROFS.
func TestMounterDecidesChild(t *testing.T) {
	base := os.Getenv(permsEnv)
	if base == "" {
		t.Skip("run by TestMounterDecides")
	}
	if userns.PrivilegedRoot() {
		t.Fatal("the child runs as root of the initial user namespace")
	}
	l0, up, wk, mnt, romnt := filepath.Join(base, "l0"), filepath.Join(base, "u"), filepath.Join(base, "w"), filepath.Join(base, "m"), filepath.Join(base, "ro")
	for _, d := range []string{l0, up, wk, mnt, romnt} {
		mustMkdir(t, d)
	}
	locked := filepath.Join(l0, "etc/locked")
	mustWrite(t, locked, "v1\n")
	// As a rootless import records it: someone else's, read-only, and a
	// directory only its owner may enter.
	if err := statoverride.Set(locked, statoverride.Stat{UID: 4242, GID: 4242, Mode: unix.S_IFREG | 0o444}); err != nil {
		t.Fatal(err)
	}
	if err := statoverride.Set(filepath.Join(l0, "etc"), statoverride.Stat{UID: 4242, GID: 4242, Mode: unix.S_IFDIR | 0o700}); err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(mnt, Options{Lowers: []string{l0}, Upper: up, Work: wk, XattrNamespace: whiteout.User})
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	defer srv.Unmount()
	if opts := mountOptionsOf(t, mnt); hasOption(opts, "default_permissions") {
		t.Fatalf("mounted with %v: the mounter would be held to the owners shown", opts)
	}
	p := filepath.Join(mnt, "etc/locked")
	for _, tc := range []struct {
		mask uint32
		want error
	}{
		{unix.R_OK, nil}, {unix.W_OK, nil}, {unix.R_OK | unix.W_OK, nil}, {unix.X_OK, unix.EACCES},
	} {
		if err := unix.Access(p, tc.mask); !errors.Is(err, tc.want) && !(err == nil && tc.want == nil) {
			t.Errorf("access(etc/locked, %d) = %v, want %v", tc.mask, err, tc.want)
		}
	}
	if err := unix.Access(filepath.Join(mnt, "etc"), unix.W_OK|unix.X_OK); err != nil {
		t.Errorf("access(etc, W_OK|X_OK) = %v", err)
	}
	if err := os.WriteFile(p, []byte("v2\n"), 0o644); err != nil {
		t.Fatalf("the mounter cannot write a file shown as 4242's and 0444: %v", err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "etc/new"), []byte("n"), 0o644); err != nil {
		t.Fatalf("the mounter cannot create in a directory shown as 4242's and 0700: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil || st.Mode&0o7777 != 0o444 {
		t.Errorf("after the write etc/locked shows mode %o (%v), want the record's 0444", st.Mode&0o7777, err)
	}
	if data, _ := os.ReadFile(filepath.Join(up, "etc/locked")); string(data) != "v2\n" {
		t.Errorf("upper holds %q", data)
	}
	ro, err := Mount(romnt, Options{Lowers: []string{l0}})
	if err != nil {
		t.Fatalf("Mount read-only: %v", err)
	}
	defer ro.Unmount()
	if err := unix.Access(filepath.Join(romnt, "etc/locked"), unix.W_OK); !errors.Is(err, unix.EROFS) {
		t.Errorf("access(W_OK) in a read-only view = %v, want EROFS", err)
	}
}
