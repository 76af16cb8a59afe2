package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

// overlayDirs makes two lowers (with a whiteout and an opaque dir in the
// top one), an upper, a work dir and a mount point.
func overlayDirs(t *testing.T) (lower1, lower2, upper, work, mnt string) {
	t.Helper()
	testutil.NeedRootOrRootlessPass(t)
	base := t.TempDir()
	lower1, lower2 = filepath.Join(base, "l1"), filepath.Join(base, "l2")
	upper, work, mnt = filepath.Join(base, "u"), filepath.Join(base, "w"), filepath.Join(base, "m")
	for _, d := range []string{lower1, lower2, upper, work, mnt, filepath.Join(lower2, "dir"), filepath.Join(lower1, "dir")} {
		must(t, os.MkdirAll(d, 0o755))
	}
	must(t, os.WriteFile(filepath.Join(lower2, "base"), []byte("from lower2\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(lower2, "gone"), []byte("hidden by a whiteout\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(lower2, "dir/old"), []byte("hidden by opacity\n"), 0o644))
	// A plain user may make 0/0 whiteouts (Linux >= 5.8) but not trusted.*
	// xattrs: rootless layers mark opaque dirs as user.overlay.opaque.
	must(t, unix.Mknod(filepath.Join(lower1, "gone"), unix.S_IFCHR, 0))
	must(t, unix.Setxattr(filepath.Join(lower1, "dir"), opaqueXattr(), []byte("y"), 0))
	must(t, os.WriteFile(filepath.Join(lower1, "dir/new"), []byte("top\n"), 0o644))
	return
}

// opaqueXattr is the opaque marker a layer made by this user carries.
func opaqueXattr() string {
	if os.Geteuid() == 0 {
		return "trusted.overlay.opaque"
	}
	return "user.overlay.opaque"
}

// unmountOnCleanup makes sure no mount outlives the test, even a failed one.
func unmountOnCleanup(t *testing.T, mnt string) {
	t.Cleanup(func() {
		for i := 0; i < 50 && isMounted(mnt); i++ {
			if detach(mnt, false) != nil {
				time.Sleep(20 * time.Millisecond)
			}
		}
		if isMounted(mnt) {
			detach(mnt, true)
		}
	})
}

// detach unmounts mnt: with umount(2) where allowed, else (a plain user's
// FUSE mount) with fusermount3.
func detach(mnt string, lazy bool) error {
	flags := 0
	if lazy {
		flags = unix.MNT_DETACH
	}
	err := unix.Unmount(mnt, flags)
	if err == nil || os.Geteuid() == 0 {
		return err
	}
	args := []string{"-u"}
	if lazy {
		args = append(args, "-z")
	}
	if out, ferr := exec.Command("fusermount3", append(args, mnt)...).CombinedOutput(); ferr != nil {
		return fmt.Errorf("fusermount3 %v: %v: %s", args, ferr, out)
	}
	return nil
}

func isMounted(mnt string) bool {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && f[1] == mnt {
			return true
		}
	}
	return false
}

func overlayBinary() string { return filepath.Join(filepath.Dir(binPath), "layerfs-overlay") }

func checkUnionView(t *testing.T, mnt string) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(mnt, "base"))
	if err != nil || string(got) != "from lower2\n" {
		t.Fatalf("base: %q %v", got, err)
	}
	for _, hidden := range []string{"gone", "dir/old"} {
		if _, err := os.Lstat(filepath.Join(mnt, hidden)); !os.IsNotExist(err) {
			t.Fatalf("%s should be hidden: %v", hidden, err)
		}
	}
	if _, err := os.Stat(filepath.Join(mnt, "dir/new")); err != nil {
		t.Fatal(err)
	}
}

func TestLayerfsOverlayFuseOverlayfsCommandLine(t *testing.T) {
	l1, l2, upper, work, mnt := overlayDirs(t)
	unmountOnCleanup(t, mnt)
	out, err := exec.Command(overlayBinary(), "-o", "lowerdir="+l1+":"+l2+",upperdir="+upper+",workdir="+work+",fast_ino=1", mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("layerfs-overlay: %v: %s", err, out)
	}
	// The command returned: the view must be usable now, not eventually.
	if !isMounted(mnt) {
		t.Fatal("layerfs-overlay returned before the mount was ready")
	}
	checkUnionView(t, mnt)
	must(t, os.WriteFile(filepath.Join(mnt, "written"), []byte("to upper\n"), 0o644))
	if got, err := os.ReadFile(filepath.Join(upper, "written")); err != nil || string(got) != "to upper\n" {
		t.Fatalf("write did not land in the upper: %q %v", got, err)
	}
	must(t, os.Remove(filepath.Join(mnt, "base")))
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(upper, "base"), &st))
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Fatalf("removing a lower file left mode %o rdev %d in the upper, want a 0/0 whiteout", st.Mode, st.Rdev)
	}
	if out, err := exec.Command("fusermount3", "-u", mnt).CombinedOutput(); err != nil {
		t.Fatalf("fusermount3 -u: %v: %s", err, out)
	}
	waitGone(t, "layerfs-overlay", mnt)
}

// waitGone waits for the daemon serving mnt to exit after an unmount.
func waitGone(t *testing.T, name, mnt string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := exec.Command("pgrep", "-f", name+".*"+mnt).Output()
		if len(strings.TrimSpace(string(out))) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the %s daemon for %s is still running after unmount", name, mnt)
}

// TestLayerfsAnswersAsOverlay: the layerfs binary run as layerfs-overlay
// (a symlink) is the mount program too.
func TestLayerfsAnswersAsOverlay(t *testing.T) {
	cmd := exec.Command(binPath, "--version")
	cmd.Args[0] = "layerfs-overlay"
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "layerfs-overlay (layerfs)") {
		t.Fatalf("layerfs as layerfs-overlay --version: %v: %s", err, out)
	}
}

func TestLayerfsOverlayThroughMountFuse3(t *testing.T) {
	testutil.NeedRootOnly(t, "installs the program into /usr/local/bin and mounts with mount(8)")
	testutil.NeedTool(t, "mount.fuse3")
	l1, l2, upper, work, mnt := overlayDirs(t)
	// mount(8) runs mount.fuse3 with a fixed PATH: the program must be in
	// a system bin dir. Install it there for the test and remove it after.
	dst := "/usr/local/bin/layerfs-overlay"
	if _, err := os.Lstat(dst); err == nil {
		t.Fatalf("%s exists already; refusing to replace it", dst)
	}
	must(t, os.Symlink(overlayBinary(), dst))
	t.Cleanup(func() { os.Remove(dst) })
	unmountOnCleanup(t, mnt)
	out, err := exec.Command("mount", "-t", "fuse.layerfs-overlay", "layerfs-test", mnt,
		"-o", "lowerdir="+l1+":"+l2+",upperdir="+upper+",workdir="+work+",nodev").CombinedOutput()
	if err != nil {
		t.Fatalf("mount -t fuse.layerfs-overlay: %v: %s", err, out)
	}
	checkUnionView(t, mnt)
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v: %s", err, out)
	}
	waitGone(t, "layerfs-overlay", mnt)
}

func TestLayerfsOverlayRefusesBadInput(t *testing.T) {
	_, l2, _, _, mnt := overlayDirs(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown option", []string{"-o", "lowerdir=" + l2 + ",frobnicate", mnt}, `unknown option "frobnicate"`},
		{"missing lower", []string{"-o", "lowerdir=/nonexistent/lower", mnt}, "/nonexistent/lower"},
		{"no mountpoint", []string{"-o", "lowerdir=" + l2}, "MOUNTPOINT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := exec.Command(overlayBinary(), tc.args...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("err %v, output %q; want failure mentioning %q", err, out, tc.want)
			}
			if isMounted(mnt) {
				t.Fatal("a refused command mounted anyway")
			}
		})
	}
}

func TestLayerfsOverlayReadOnlyWithoutUpper(t *testing.T) {
	l1, l2, _, _, mnt := overlayDirs(t)
	unmountOnCleanup(t, mnt)
	if out, err := exec.Command(overlayBinary(), "-o", "lowerdir="+l1+":"+l2, mnt).CombinedOutput(); err != nil {
		t.Fatalf("layerfs-overlay: %v: %s", err, out)
	}
	checkUnionView(t, mnt)
	err := os.WriteFile(filepath.Join(mnt, "x"), []byte("x"), 0o644)
	if err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("write to a view without upper: %v, want EROFS", err)
	}
	// SIGTERM to the daemon unmounts cleanly.
	out, _ := exec.Command("pgrep", "-f", "layerfs-overlay.*"+mnt).Output()
	pids := strings.Fields(string(out))
	if len(pids) != 1 {
		t.Fatalf("want one daemon, found %q", pids)
	}
	must(t, exec.Command("kill", "-TERM", pids[0]).Run())
	deadline := time.Now().Add(5 * time.Second)
	for isMounted(mnt) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if isMounted(mnt) {
		t.Fatal("SIGTERM did not unmount the view")
	}
}

func TestLayerfsOverlayKernelAndAutoDrivers(t *testing.T) {
	for _, driver := range []string{"kernel", "auto"} {
		t.Run(driver, func(t *testing.T) {
			if driver == "kernel" {
				testutil.NeedRootOnly(t, "kernel overlayfs outside a user namespace")
			}
			l1, l2, upper, work, mnt := overlayDirs(t)
			unmountOnCleanup(t, mnt)
			out, err := exec.Command(overlayBinary(), "-o", "lowerdir="+l1+":"+l2+",upperdir="+upper+",workdir="+work+",driver="+driver, mnt).CombinedOutput()
			if err != nil {
				t.Fatalf("layerfs-overlay driver=%s: %v: %s", driver, err, out)
			}
			data, _ := os.ReadFile("/proc/self/mounts")
			if os.Geteuid() == 0 {
				if !strings.Contains(string(data), " "+mnt+" overlay ") {
					t.Fatalf("driver=%s as root on a local disk should mount kernel overlayfs; mounts:\n%s", driver, data)
				}
			} else if !strings.Contains(string(data), " "+mnt+" fuse.") {
				t.Fatalf("driver=auto as a plain user must fall back to the FUSE union; mounts:\n%s", data)
			}
			checkUnionView(t, mnt)
			must(t, detach(mnt, false))
			if os.Geteuid() != 0 {
				waitGone(t, "layerfs-overlay", mnt)
			}
		})
	}
}
