package fusefs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

// TestNoXattrsMount: with NoXattrs the view has no extended attributes
// (every call answers ENOTSUP, fuse-overlayfs's noxattrs=1); without it
// the lower's xattr reads back. Volatile mounts still accept fsync.
func TestNoXattrsMount(t *testing.T) {
	for _, noXattrs := range []bool{false, true} {
		lowers, upper, work := layerDirs(t, 1)
		p := filepath.Join(lowers[0], "f")
		mustWrite(t, p, "x")
		err := unix.Lsetxattr(p, "user.x", []byte("1"), 0)
		testutil.Need(t, err == nil, "needs user xattrs on the test filesystem")
		mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work, NoXattrs: noXattrs, Volatile: true})
		f := filepath.Join(mnt, "f")
		_, gerr := unix.Lgetxattr(f, "user.x", make([]byte, 16))
		_, lerr := unix.Llistxattr(f, make([]byte, 64))
		serr := unix.Lsetxattr(f, "user.y", []byte("2"), 0)
		for op, err := range map[string]error{"getxattr": gerr, "listxattr": lerr, "setxattr": serr} {
			if notsup := errors.Is(err, unix.ENOTSUP); notsup != noXattrs {
				t.Errorf("noxattrs=%v: %s: %v", noXattrs, op, err)
			}
			if !noXattrs && err != nil {
				t.Errorf("%s: %v", op, err)
			}
		}
		fh, err := os.OpenFile(f, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := fh.Sync(); err != nil {
			t.Errorf("fsync on a volatile view: %v", err)
		}
		fh.Close()
	}
}
