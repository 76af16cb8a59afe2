package fusefs

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

// TestCreatePaths checks both ways of making an object (straight in the
// upper when the daemon's own IDs are the caller's, through the work dir
// otherwise or over a whiteout) give what a native create would: owner,
// set-group-ID inheritance, nothing left behind in the work dir.
func TestCreatePaths(t *testing.T) {
	lowers, upper, work := layerDirs(t, 1)
	mustMkdir(t, filepath.Join(lowers[0], "open"))
	mustMkdir(t, filepath.Join(lowers[0], "sgid"))
	mustWrite(t, filepath.Join(lowers[0], "open", "gone"), "lower")
	for _, d := range []string{"open", "sgid"} {
		os.Chmod(filepath.Join(lowers[0], d), 0o777)
	}
	os.Chown(filepath.Join(lowers[0], "sgid"), 0, 4321)
	unix.Chmod(filepath.Join(lowers[0], "sgid"), 0o2777) // os.Chmod drops set-ID bits given as octal
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work, AllowOther: true})
	os.Chmod(filepath.Dir(mnt), 0o755) // let the other user reach the view
	var sg unix.Stat_t
	if err := unix.Stat(filepath.Join(mnt, "sgid"), &sg); err != nil || sg.Gid != 4321 || sg.Mode&unix.S_ISGID == 0 {
		t.Fatalf("sgid dir in the view: gid %d mode %o, %v", sg.Gid, sg.Mode, err)
	}
	if err := os.Remove(filepath.Join(mnt, "open", "gone")); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		uid        uint32
		cmd        []string // run as uid:uid in the view (this binary: a helper job, see runHelper)
		path       string
		wantUID    uint32
		wantGID    uint32
		wantSetgid bool
	}{
		{"root file", 0, []string{"touch", "open/a"}, "open/a", 0, 0, false},
		{"root dir", 0, []string{"mkdir", "open/d"}, "open/d", 0, 0, false},
		{"other user file", 1234, []string{"touch", "open/b"}, "open/b", 1234, 1234, false},
		{"other user dir", 1234, []string{"mkdir", "open/e"}, "open/e", 1234, 1234, false},
		{"root file in setgid dir", 0, []string{"touch", "sgid/a"}, "sgid/a", 0, 4321, false},
		{"root dir in setgid dir", 0, []string{"mkdir", "sgid/d"}, "sgid/d", 0, 4321, true},
		{"other user file in setgid dir", 1234, []string{"touch", "sgid/b"}, "sgid/b", 1234, 4321, false},
		{"other user dir in setgid dir", 1234, []string{"mkdir", "sgid/e"}, "sgid/e", 1234, 4321, true},
		{"root file over a whiteout", 0, []string{"touch", "open/gone"}, "open/gone", 0, 0, false},
		{"other user O_TMPFILE, linked in", 1234, []string{"tmpfile-link", "open", "t"}, "open/t", 1234, 1234, false},
		{"other user O_TMPFILE in setgid dir", 1234, []string{"tmpfile-link", "sgid", "t"}, "sgid/t", 1234, 4321, false},
	}
	helper := testutil.SharedTestBinary(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := commandIn(mnt, tc.cmd[0], tc.cmd[1:]...)
			if !isProgram(tc.cmd[0]) {
				cmd = commandIn(mnt, helper, tc.cmd[1:]...)
				cmd.Env = append(os.Environ(), helperEnv+"="+tc.cmd[0])
			}
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: tc.uid, Gid: tc.uid, Groups: []uint32{}}}
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%v as %d: %v\n%s", tc.cmd, tc.uid, err, out)
			}
			for _, root := range []string{mnt, upper} {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(root, tc.path), &st); err != nil {
					t.Fatalf("lstat in %s: %v", root, err)
				}
				if st.Uid != tc.wantUID || st.Gid != tc.wantGID {
					t.Errorf("%s in %s: owner %d:%d, want %d:%d", tc.path, root, st.Uid, st.Gid, tc.wantUID, tc.wantGID)
				}
				if got := st.Mode&unix.S_ISGID != 0; got != tc.wantSetgid {
					t.Errorf("%s in %s: set-group-ID %v, want %v", tc.path, root, got, tc.wantSetgid)
				}
			}
			left, err := os.ReadDir(filepath.Join(work, "layerfs", "tmp"))
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			if len(left) != 0 {
				t.Errorf("work dir keeps %d temporary objects", len(left))
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "open", "gone")); err != nil || len(b) != 0 {
		t.Errorf("file made over a whiteout reads %q, %v; want it empty", b, err)
	}
}

// isProgram reports whether name is a program on PATH (else a helper job).
func isProgram(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}
