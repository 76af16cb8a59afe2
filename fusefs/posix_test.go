package fusefs

import (
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
)

// skipPosix lists posixtest cases that cannot apply, with the reason.
var skipPosix = map[string]string{}

// TestPosixEmptyStack runs go-fuse's POSIX suite on a union whose lower
// stack is empty: everything lives in the upper.
func TestPosixEmptyStack(t *testing.T) {
	_, upper, work := layerDirs(t, 0)
	mnt := mountT(t, Options{Upper: upper, Work: work})
	runPosix(t, mnt, nil)
}

// TestPosixWithLowers runs the suite in directories that come from two
// lower layers, each holding a "file" the tests overwrite (so they go
// through copy-up) and a name whited out in the top lower.
func TestPosixWithLowers(t *testing.T) {
	lowers, upper, work := layerDirs(t, 2)
	names := posixNames()
	for _, k := range names {
		mustMkdir(t, filepath.Join(lowers[0], k))
		mustMkdir(t, filepath.Join(lowers[1], k))
		if createsFile[k] {
			// The test makes "file" itself and expects a fresh one:
			// it gets the name over a whiteout in the top lower.
			mustWrite(t, filepath.Join(lowers[1], k, "file"), "whited out\n")
			mustWhiteout(t, filepath.Join(lowers[0], k, "file"))
		} else if !listsExactly[k] {
			mustWrite(t, filepath.Join(lowers[0], k, "file"), "from the top lower\n")
			mustWrite(t, filepath.Join(lowers[1], k, "file"), "from the bottom lower, hidden\n")
			mustWrite(t, filepath.Join(lowers[1], k, "gone"), "whited out\n")
			mustWhiteout(t, filepath.Join(lowers[0], k, "gone"))
		}
	}
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	runPosix(t, mnt, func(t *testing.T, sub string) {
		if _, err := os.Lstat(filepath.Join(sub, "gone")); !os.IsNotExist(err) {
			t.Errorf("whited-out name visible: %v", err)
		}
	})
}

// listsExactly: tests that compare a whole directory listing with what
// they created, so their dirs hold no lower files (the dirs themselves
// still come from the lowers).
var listsExactly = map[string]bool{"ReadDirBasic": true, "DirSeek": true, "ReadDirConsistency": true, "RenameOpenDir": true, "Tmpfile": true}

// createsFile: tests that need "file" not to exist beforehand (they check
// the mode WriteFile gives, append to it, or link over its name).
var createsFile = map[string]bool{"AppendWrite": true, "FileBasic": true, "LinkUnlinkRename": true}

func posixNames() []string {
	var names []string
	for k := range posixtest.All {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

func runPosix(t *testing.T, mnt string, after func(*testing.T, string)) {
	for _, k := range posixNames() {
		fn := posixtest.All[k]
		t.Run(k, func(t *testing.T) {
			if why, ok := skipPosix[k]; ok {
				t.Skip(why)
			}
			sub := filepath.Join(mnt, k)
			if err := os.MkdirAll(sub, 0o755); err != nil {
				t.Fatalf("MkdirAll: %v", err)
			}
			fn(t, sub)
			if after != nil {
				after(t, sub)
			}
		})
	}
}

// TestPosixXAttrLargeTmpfs runs XAttrLarge where the backing filesystem
// takes 8 KiB xattrs (tmpfs; ext4 without ea_inode answers ENOSPC and the
// test skips itself in the runs above).
func TestPosixXAttrLargeTmpfs(t *testing.T) {
	needFuse(t)
	st, err := os.Stat("/dev/shm")
	if err != nil || !st.IsDir() {
		t.Skip("no /dev/shm")
	}
	base, err := os.MkdirTemp("/dev/shm", "fusefs-test-")
	if err != nil {
		t.Skip("cannot write /dev/shm")
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	lower, upper, work := filepath.Join(base, "l"), filepath.Join(base, "u"), filepath.Join(base, "w")
	for _, d := range []string{lower, upper, work} {
		mustMkdir(t, d)
	}
	mnt := mountT(t, Options{Lowers: []string{lower}, Upper: upper, Work: work})
	posixtest.XAttrLarge(t, mnt)
}
