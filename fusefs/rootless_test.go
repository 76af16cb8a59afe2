package fusefs

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/whiteout"
)

const rootlessEnv = "FUSEFS_ROOTLESS_DIR"

// TestRootless re-runs the POSIX suite and the whiteout checks inside
// `unshare -Urm` (a user namespace: trusted.* xattrs, FUSE passthrough and
// chown to unmapped IDs are refused there), so the union must write user.*
// metadata and still pass. The daemon keeps the real uid 0 mapped: this VM's
// /dev/fuse is root-only.
func TestRootless(t *testing.T) {
	needFuse(t)
	unshare := testutil.NeedTool(t, "unshare")
	base, err := os.MkdirTemp("/tmp", "fusefs-rootless-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o777)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// A copy of the test binary: the namespace sees the same files.
	exe := filepath.Join(base, "fusefs.test")
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(unshare, "-Urm", exe, "-test.run=^TestRootlessChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), rootlessEnv+"="+base, "CI=")
	cmd.Dir = base
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestRootlessChild") {
		t.Fatalf("rootless run: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "--- SKIP: TestRootlessChild (") {
		t.Fatalf("rootless run skipped:\n%s", out)
	}
	t.Logf("%s", lastLines(string(out), 8))
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// TestRootlessChild is TestRootless's inside half.
func TestRootlessChild(t *testing.T) {
	base := os.Getenv(rootlessEnv)
	if base == "" {
		t.Skip("run by TestRootless")
	}
	dirs := map[string]string{}
	for _, d := range []string{"l0", "l1", "u", "w", "m", "u2", "w2", "m2"} {
		dirs[d] = filepath.Join(base, d)
		mustMkdir(t, dirs[d])
	}
	mustWrite(t, filepath.Join(dirs["l1"], "d/old"), "old")
	mustWrite(t, filepath.Join(dirs["l1"], "f"), "f")
	opts := Options{Lowers: []string{dirs["l0"], dirs["l1"]}, Upper: dirs["u"], Work: dirs["w"], XattrNamespace: whiteout.User}
	mnt := dirs["m"]
	srv, err := Mount(mnt, opts)
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	defer srv.Unmount()
	if err := os.Remove(filepath.Join(mnt, "f")); err != nil {
		t.Fatal(err)
	}
	st := lstat(t, filepath.Join(dirs["u"], "f"))
	if !whiteout.IsWhiteoutDevice(st.Mode, st.Rdev) {
		if _, err := os.Lstat(filepath.Join(dirs["u"], ".wh.f")); err != nil {
			t.Errorf("no whiteout for f in the upper")
		}
	}
	if err := os.RemoveAll(filepath.Join(mnt, "d")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(mnt, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if v, err := getXattr(filepath.Join(dirs["u"], "d"), "user.overlay.opaque"); err != nil || string(v) != "y" {
		t.Errorf("user.overlay.opaque = %q, %v", v, err)
	}
	if got := names(t, filepath.Join(mnt, "d")); len(got) != 0 {
		t.Errorf("opaque dir shows %v", got)
	}
	if err := os.WriteFile(filepath.Join(mnt, "d/new"), []byte("n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(mnt, "d"), filepath.Join(mnt, "e")); err != nil {
		t.Fatal(err)
	}
	// Kernel overlayfs with userxattr reads what we wrote.
	srv.Unmount()
	kmnt := filepath.Join(base, "k")
	mustMkdir(t, kmnt)
	kw := filepath.Join(base, "kw")
	mustMkdir(t, kw)
	if err := unix.Mount("overlay", kmnt, "overlay", 0, "lowerdir="+dirs["l0"]+":"+dirs["l1"]+",upperdir="+dirs["u"]+",workdir="+kw+",userxattr"); err == nil {
		if got := strings.Join(names(t, kmnt), " "); got != "e" {
			t.Errorf("kernel overlay (userxattr) of the union's upper shows %q, want e", got)
		}
		if got := strings.Join(names(t, filepath.Join(kmnt, "e")), " "); got != "new" {
			t.Errorf("kernel overlay shows e/ as %q", got)
		}
		unix.Unmount(kmnt, unix.MNT_DETACH)
	} else {
		t.Logf("kernel overlay in the user namespace: %v (not compared)", err)
	}
	// The POSIX suite over lowers, unprivileged.
	for _, k := range posixNames() {
		mustMkdir(t, filepath.Join(dirs["l0"], "posix", k))
	}
	srv2, err := Mount(dirs["m2"], Options{Lowers: []string{dirs["l0"], dirs["l1"]}, Upper: dirs["u2"], Work: dirs["w2"], XattrNamespace: whiteout.User})
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	defer srv2.Unmount()
	runPosix(t, filepath.Join(dirs["m2"], "posix"), nil)
}
