package overlay

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/whiteout"
)

// helperEnv selects TestUserNamespaceHelper in a re-executed test binary.
const helperEnv = "LAYERFS_OVERLAY_USERNS_HELPER"

// TestUserNamespace runs TestUserNamespaceHelper inside `unshare -Urm`: a Go
// process is multithreaded from the start and cannot enter a new user
// namespace itself.
func TestUserNamespace(t *testing.T) {
	testutil.NeedRoot(t)
	unshare := testutil.NeedTool(t, "unshare")
	args := []string{"-Urm", os.Args[0], "-test.run=^TestUserNamespaceHelper$", "-test.count=1"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.Command(unshare, args...)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, err := cmd.CombinedOutput()
	if testing.Verbose() || err != nil {
		t.Logf("helper output:\n%s", out)
	}
	if err != nil {
		t.Fatalf("helper in a user namespace: %v", err)
	}
	if !strings.Contains(string(out), "PASS") {
		t.Fatal("the helper did not run")
	}
}

// TestUserNamespaceHelper runs only inside the namespace TestUserNamespace
// makes; the mount namespace dies with it, so no mount can outlive it.
func TestUserNamespaceHelper(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("runs only as TestUserNamespace's helper")
	}
	if !InUserNamespace() {
		t.Fatal("helper runs outside a user namespace")
	}

	t.Run("probe-userxattr", func(t *testing.T) {
		s := Supported(ProbeOptions{Dir: t.TempDir(), Options: Options{UserXattr: true, RedirectDir: true, Index: true}})
		if !s.OK {
			t.Fatalf("userxattr probe failed: %s", s.Reason)
		}
		var dropped []string
		for _, d := range s.Result.Dropped {
			dropped = append(dropped, d.Feature)
			t.Logf("dropped %s", d)
		}
		// redirect_dir=on conflicts with userxattr; index needs file
		// handles, which the kernel gives only with CAP_DAC_READ_SEARCH in
		// the initial namespace.
		if !slices.Equal(dropped, []string{"redirect_dir=on", "index=on"}) {
			t.Errorf("dropped %q, want redirect_dir=on and index=on", dropped)
		}
	})

	t.Run("probe-without-userxattr", func(t *testing.T) {
		s := Supported(ProbeOptions{Dir: t.TempDir()})
		t.Logf("%+v", s)
		if s.OK {
			t.Fatal("probe without userxattr passes in a user namespace, where trusted.* cannot be written")
		}
		if !strings.Contains(s.Reason, "userxattr") {
			t.Errorf("reason does not point at userxattr: %s", s.Reason)
		}
	})

	t.Run("stack", func(t *testing.T) {
		for _, m := range []Method{MethodAuto, MethodMountData, MethodShortLinks} {
			t.Run(m.String(), func(t *testing.T) {
				s := newStack(t, t.TempDir(), whiteout.User)
				mountT(t, s.mount, Options{Lowers: s.lowers, Upper: s.upper, Work: s.work, UserXattr: true, Method: m})
				checkStack(t, s)
				// No redirect_dir: a lower directory rename answers EXDEV
				// (tools then copy), and nothing is half done.
				err := os.Rename(filepath.Join(s.mount, "tree"), filepath.Join(s.mount, "moved"))
				if !errors.Is(err, syscall.EXDEV) {
					t.Errorf("rename of a lower dir without redirect_dir: %v, want EXDEV", err)
				}
				if got := readFile(t, filepath.Join(s.mount, "tree", "leaf")); got != "bottom" {
					t.Errorf("tree/leaf = %q", got)
				}
			})
		}
	})

	t.Run("300-lowers", func(t *testing.T) {
		for _, m := range []Method{MethodAuto, MethodShortLinks} {
			t.Run(m.String(), func(t *testing.T) {
				lowers, dir := deepStack(t, 300)
				upper, work, mnt := mkdirs(t, dir, "u"), mkdirs(t, dir, "w"), mkdirs(t, dir, "m")
				res := mountT(t, mnt, Options{Lowers: lowers, Upper: upper, Work: work, UserXattr: true, Method: m})
				if m == MethodAuto && res.Method != MethodFsconfig {
					t.Errorf("auto chose %v", res.Method)
				}
				if got := readFile(t, filepath.Join(mnt, "shared")); got != "0" {
					t.Errorf("shared = %q", got)
				}
				if got := readFile(t, filepath.Join(mnt, "f299")); got != "299" {
					t.Errorf("f299 = %q", got)
				}
			})
		}
	})

	t.Run("unmount-busy", func(t *testing.T) {
		s := newStack(t, t.TempDir(), whiteout.User)
		mountT(t, s.mount, Options{Lowers: s.lowers, Upper: s.upper, Work: s.work, UserXattr: true})
		f, err := os.Open(filepath.Join(s.mount, "kept"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := Unmount(s.mount, false); !errors.Is(err, ErrBusy) {
			t.Errorf("busy unmount: %v, want ErrBusy", err)
		}
		if err := Unmount(s.mount, true); err != nil {
			t.Errorf("lazy unmount: %v", err)
		}
		if err := Unmount(s.mount, false); !errors.Is(err, ErrNotMounted) {
			t.Errorf("second unmount: %v, want ErrNotMounted", err)
		}
	})
}
