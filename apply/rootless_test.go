package apply

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/statoverride"
	"github.com/layerfs/layerfs/whiteout"
)

// TestRootless runs the rootless mode as root: nothing may be chowned, the
// tar's metadata must be in override_stat, disk modes manageable.
func TestRootless(t *testing.T) {
	testutil.NeedRoot(t)
	mt := time.Unix(1_700_000_000, 42)
	h := func(typ byte, name string, mode int64, uid, gid int) tar.Header {
		return tar.Header{Typeflag: typ, Name: name, Mode: mode, Uid: uid, Gid: gid, ModTime: mt, Format: tar.FormatPAX}
	}
	null := h(tar.TypeChar, "dev/null", 0o666, 0, 0)
	null.Devmajor, null.Devminor = 1, 3
	sda := h(tar.TypeBlock, "dev/sda", 0o660, 0, 6)
	sda.Devmajor, sda.Devminor = 8, 0
	wdev := h(tar.TypeChar, "dev/wh", 0o000, 0, 0)
	link := h(tar.TypeSymlink, "dev/stdout", 0o777, 5, 5)
	link.Linkname = "/proc/self/fd/1"
	ents := []ent{
		{hdr: h(tar.TypeDir, "ro/", 0o555, 100, 200)},
		{hdr: h(tar.TypeReg, "ro/suid", 0o4711, 1000, 1000), body: "x"},
		{hdr: h(tar.TypeReg, "ro/noread", 0o000, 3, 4), body: "y"},
		{hdr: h(tar.TypeDir, "sticky", 0o1777, 0, 0)},
		{hdr: h(tar.TypeFifo, "fifo", 0o644, 7, 8)},
		{hdr: null}, {hdr: sda}, {hdr: wdev}, {hdr: link},
		{hdr: h(tar.TypeReg, "implicit/child", 0o644, 0, 0), body: "c"},
		{hdr: h(tar.TypeReg, "sticky/.wh.gone", 0o644, 0, 0)},
		{hdr: h(tar.TypeReg, "ro/.wh..wh..opq", 0o644, 0, 0)},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "ro/suid-link", Linkname: "ro/suid"}},
	}
	s := newSandbox(t)
	if _, err := applyBytes(t, buildTar(t, ents...), s.layer, Options{Rootless: true, OpaqueNamespace: whiteout.User}); err != nil {
		t.Fatal(err)
	}
	s.checkOutside(t)
	tests := []struct {
		path     string
		diskType uint32
		diskPerm uint32
		override string // "" = must have none
	}{
		{"ro", unix.S_IFDIR, 0o755, "100:200:0555:dir"},
		{"ro/suid", unix.S_IFREG, 0o711, "1000:1000:04711:file"},
		{"ro/noread", unix.S_IFREG, 0o600, "3:4:00:file"},
		{"sticky", unix.S_IFDIR, 0o777, "0:0:01777:dir"},
		{"fifo", unix.S_IFIFO, 0o644, ""}, // Linux refuses user.* xattrs on FIFOs
		{"dev/null", unix.S_IFREG, 0o600, "0:0:0666:char-1-3"},
		{"dev/sda", unix.S_IFREG, 0o600, "0:6:0660:block-8-0"},
		{"dev/wh", unix.S_IFCHR, 0o600, ""}, // nor on devices
		{"dev/stdout", unix.S_IFLNK, 0o777, ""},
		{"implicit", unix.S_IFDIR, 0o755, "0:0:0755:dir"},
		{"sticky/gone", unix.S_IFCHR, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			p := filepath.Join(s.layer, tt.path)
			st := lstat(t, p)
			if st.Mode&unix.S_IFMT != tt.diskType || st.Mode&0o7777 != tt.diskPerm {
				t.Errorf("on disk: mode %o, want type %o perm %04o", st.Mode, tt.diskType, tt.diskPerm)
			}
			if st.Uid != 0 || st.Gid != 0 {
				t.Errorf("on disk owner %d:%d, want the caller's 0:0 (nothing chowned)", st.Uid, st.Gid)
			}
			if tt.diskType != unix.S_IFLNK && st.Mtim != (unix.Timespec{Sec: mt.Unix(), Nsec: 42}) && tt.path != "implicit" && tt.path != "sticky/gone" {
				t.Errorf("mtime %v, want %v", st.Mtim, mt)
			}
			if tt.diskType == unix.S_IFREG && strings.HasPrefix(tt.path, "dev/") && st.Size != 0 {
				t.Errorf("device placeholder has %d bytes", st.Size)
			}
			if tt.diskType == unix.S_IFLNK {
				return
			}
			v, ok := getxattr(t, p, statoverride.Xattr)
			if tt.override == "" {
				if ok {
					t.Errorf("unexpected %s=%q", statoverride.Xattr, v)
				}
				return
			}
			if !ok {
				t.Fatalf("no %s", statoverride.Xattr)
			}
			got, err := statoverride.Parse(v)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := statoverride.Parse(tt.override)
			if got != want {
				t.Errorf("override %q = %+v, want %q = %+v", v, got, tt.override, want)
			}
		})
	}
	if v, ok := getxattr(t, filepath.Join(s.layer, "ro"), whiteout.User.OpaqueXattr()); !ok || v != "y" {
		t.Errorf("ro not opaque in the user namespace: %q %v", v, ok)
	}
	if a, b := lstat(t, filepath.Join(s.layer, "ro/suid")), lstat(t, filepath.Join(s.layer, "ro/suid-link")); a.Ino != b.Ino {
		t.Errorf("hardlink broken in rootless mode")
	}
}

// TestRootlessSpecialOwners: symlinks and FIFOs cannot carry the
// override_stat xattr, so a rootless apply hands back their records by
// name (hardlinks to them included), and warns about none of them.
func TestRootlessSpecialOwners(t *testing.T) {
	testutil.NeedRoot(t)
	sym := func(name, target string, uid, gid int) ent {
		return ent{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, Uid: uid, Gid: gid}}
	}
	fifo := func(name string, mode int64, uid, gid int) ent {
		return ent{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: name, Mode: mode, Uid: uid, Gid: gid}}
	}
	hard := func(name, target string) ent {
		return ent{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Uid: 1, Gid: 1}}
	}
	for _, tc := range []struct {
		name string
		ents []ent
		want map[string]string // name -> record; nil: no table
	}{
		{"owners 0, 1000 and 65534",
			[]ent{sym("bin/sh", "busybox", 0, 0), sym("home/u/link", "/etc", 1000, 1000), sym("nobody", "x", 65534, 65534),
				fifo("run/initctl", 0o600, 0, 0), fifo("home/u/fifo", 0o2644, 1000, 1000), fifo("tmp/p", 0o1777, 65534, 65534)},
			map[string]string{"bin/sh": "0:0:0777:symlink", "home/u/link": "1000:1000:0777:symlink", "nobody": "65534:65534:0777:symlink",
				"run/initctl": "0:0:0600:pipe", "home/u/fifo": "1000:1000:02644:pipe", "tmp/p": "65534:65534:01777:pipe"}},
		{"odd symlink mode is kept",
			[]ent{{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "l", Linkname: "t", Mode: 0o755, Uid: 3, Gid: 4}}},
			map[string]string{"l": "3:4:0755:symlink"}},
		{"hardlinks to a symlink and a FIFO take the target's record",
			[]ent{sym("a/l", "t", 1000, 100), fifo("a/f", 0o640, 7, 8), hard("b/l2", "a/l"), hard("b/f2", "./a/f")},
			map[string]string{"a/l": "1000:100:0777:symlink", "a/f": "7:8:0640:pipe", "b/l2": "1000:100:0777:symlink", "b/f2": "7:8:0640:pipe"}},
		{"names are cleaned; a whiteout of a name keeps its record",
			[]ent{sym("./y", "t", 5, 5), reg(".wh.y", ""), reg(".wh.other", "")},
			map[string]string{"y": "5:5:0777:symlink"}},
		{"files, dirs and devices need no table",
			[]ent{{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "d", Mode: 0o755, Uid: 9}}, reg("d/f", "x"),
				{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "null", Mode: 0o666, Devmajor: 1, Devminor: 3}}},
			nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			s := newSandbox(t)
			res, err := applyBytes(t, buildTar(t, tc.ents...), s.layer, Options{Rootless: true, OpaqueNamespace: whiteout.User,
				Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == nil {
				if res.SpecialOwners != nil {
					t.Errorf("SpecialOwners = %v, want none", res.SpecialOwners)
				}
			} else {
				got := map[string]string{}
				for p, rec := range res.SpecialOwners {
					got[p] = statoverride.Format(rec)
				}
				if fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Errorf("SpecialOwners = %v\nwant            %v", got, tc.want)
				}
			}
			if strings.Contains(logs.String(), "lost") {
				t.Errorf("warned of a loss:\n%s", logs.String())
			}
			// Every name in the table is what it says it is, on disk.
			for p, rec := range res.SpecialOwners {
				if st := lstat(t, filepath.Join(s.layer, p)); st.Mode&unix.S_IFMT != rec.Mode&unix.S_IFMT {
					t.Errorf("%s: on disk type %o, record %o", p, st.Mode&unix.S_IFMT, rec.Mode&unix.S_IFMT)
				}
			}
			// Root applies give the objects their owners: no table.
			s2 := newSandbox(t)
			if res, err := applyBytes(t, buildTar(t, tc.ents...), s2.layer, Options{OpaqueNamespace: whiteout.Trusted}); err != nil || res.SpecialOwners != nil {
				t.Errorf("privileged apply: SpecialOwners %v, err %v; want none", res.SpecialOwners, err)
			}
		})
	}
}

// TestRootlessXattrPolicy checks which xattr failures are warnings: a
// user.* xattr on a symlink is skipped, trusted/security EPERM is skipped
// only when rootless.
func TestRootlessXattrPolicy(t *testing.T) {
	testutil.NeedRoot(t)
	var logs bytes.Buffer
	ents := []ent{
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "l", Linkname: "t", PAXRecords: map[string]string{"SCHILY.xattr.user.x": "1"}}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644, PAXRecords: map[string]string{"SCHILY.xattr.trusted.mine": "1"}}, body: "f"},
	}
	s := newSandbox(t)
	if _, err := applyBytes(t, buildTar(t, ents...), s.layer, Options{Rootless: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "entry=l") || !strings.Contains(logs.String(), "xattr=user.x") {
		t.Errorf("no warning for user.x on symlink l:\n%s", logs.String())
	}
	// As root the trusted xattr is simply written.
	if v, _ := getxattr(t, filepath.Join(s.layer, "f"), "trusted.mine"); v != "1" {
		t.Errorf("trusted.mine = %q", v)
	}
}

// TestRootlessUnprivileged applies as a real unprivileged user (a child
// process with uid 65534) and checks the EPERM paths: no mknod of devices,
// 0/0 whiteouts still made, security.capability kept under
// statoverride.CapabilityXattr.
func TestRootlessUnprivileged(t *testing.T) {
	testutil.NeedRoot(t)
	s := newSandbox(t)
	// The child must be able to reach and write the layer dir.
	for _, d := range []string{filepath.Dir(s.base), s.base, filepath.Dir(s.layer)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(s.layer, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	sda := tar.Header{Typeflag: tar.TypeBlock, Name: "sda", Mode: 0o660, Devmajor: 8}
	ents := []ent{
		{hdr: sda},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "ping", Mode: 0o4755,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": capNetBindService()}}, body: "p"},
		reg(".wh.gone", ""),
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "ro", Mode: 0o500}},
		reg("ro/inside", "i"),
	}
	work := t.TempDir()
	for _, d := range []string{filepath.Dir(work), work} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tarPath := filepath.Join(work, "l.tar")
	if err := os.WriteFile(tarPath, buildTar(t, ents...), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := unprivileged(t, tarPath, s.layer)
	if err != nil {
		t.Fatalf("unprivileged apply: %v\n%s", err, out)
	}
	if strings.Contains(out, "security.capability") {
		t.Errorf("security.capability reported as lost:\n%s", out)
	}
	ping := filepath.Join(s.layer, "ping")
	if v, ok := getxattr(t, ping, statoverride.CapabilityXattr); !ok || v != capNetBindService() {
		t.Errorf("ping: %s = %q (present %v), want the tar's capability", statoverride.CapabilityXattr, v, ok)
	}
	if v, ok := getxattr(t, ping, statoverride.SecurityCapability); ok {
		t.Errorf("ping: an unprivileged apply set %s = %q", statoverride.SecurityCapability, v)
	}
	if st := lstat(t, filepath.Join(s.layer, "sda")); st.Mode&unix.S_IFMT != unix.S_IFREG || st.Uid != 65534 {
		t.Errorf("sda: mode %o uid %d, want a placeholder file owned by the caller", st.Mode, st.Uid)
	}
	if st := lstat(t, filepath.Join(s.layer, "gone")); !whiteout.IsWhiteoutStat(&st) {
		t.Errorf("gone: mode %o, want a 0/0 whiteout", st.Mode)
	}
	if v, _ := getxattr(t, filepath.Join(s.layer, "ping"), statoverride.Xattr); v != "0:0:04755:file" {
		t.Errorf("ping override = %q", v)
	}
	if st := lstat(t, filepath.Join(s.layer, "ro")); st.Mode&0o777 != 0o700 {
		t.Errorf("ro on disk %o, want 0700 so the store owner can manage it", st.Mode&0o777)
	}
	s.checkOutside(t)
}

// childEnv carries "TAR:DIR" to the test binary re-run as an unprivileged
// applier by TestMain.
const childEnv = "APPLY_TEST_UNPRIVILEGED_CHILD"

func TestMain(m *testing.M) {
	if v := os.Getenv(childEnv); v != "" {
		os.Exit(unprivilegedChild(v))
	}
	os.Exit(m.Run())
}

func unprivilegedChild(v string) int {
	tarPath, dir, _ := strings.Cut(v, ":")
	f, err := os.Open(tarPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer f.Close()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	_, err = Apply(context.Background(), tar.NewReader(f), dir, Options{Rootless: true, OpaqueNamespace: whiteout.User, Logger: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// unprivileged runs Apply in a copy of the test binary as uid/gid 65534.
func unprivileged(t *testing.T, tarPath, dir string) (string, error) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(filepath.Dir(tarPath), "apply.test")
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	out.Close()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), childEnv+"="+tarPath+":"+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	b, err := cmd.CombinedOutput()
	return string(b), err
}
