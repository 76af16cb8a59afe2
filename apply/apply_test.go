package apply

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/whiteout"
)

// capNetBindService is a VFS_CAP_REVISION_2 security.capability value
// granting cap_net_bind_service (bit 10) permitted and effective.
func capNetBindService() string {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000000|1)
	binary.LittleEndian.PutUint32(b[4:], 1<<10)
	return string(b)
}

func TestEntryTypes(t *testing.T) {
	testutil.NeedRoot(t)
	mt := time.Unix(1_700_000_000, 123_456_789)
	at := time.Unix(1_650_000_000, 987_654_321)
	capv := capNetBindService()
	ents := []ent{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o750, Uid: 1000, Gid: 1001, ModTime: mt, Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "d/suid", Mode: 0o4755, Uid: 1234, Gid: 5678, ModTime: mt, AccessTime: at, Format: tar.FormatPAX}, body: "#!/bin/sh\n"},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "sgid", Mode: 0o2711, Uid: 7, Gid: 8, ModTime: mt, Format: tar.FormatPAX}, body: "x"},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "sticky", Mode: 0o1777, ModTime: mt, Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "empty", Mode: 0o600, Uid: 2, Gid: 3, ModTime: mt, Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "caps", Mode: 0o755, ModTime: mt, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": capv, "SCHILY.xattr.user.note": "hello"}}, body: "bin"},
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "link", Linkname: "/d/suid", Uid: 33, Gid: 44, ModTime: mt, Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "d/hard", Linkname: "d/suid"}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "fifo", Mode: 0o640, Uid: 5, Gid: 6, ModTime: mt, Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mt, Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "blk", Mode: 0o660, Gid: 6, Devmajor: 7, Devminor: 200, ModTime: mt, Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "global", PAXRecords: map[string]string{"comment": "ignored"}}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: strings.Repeat("long/", 40) + "name", Mode: 0o644, ModTime: mt, Format: tar.FormatPAX}, body: "deep"},
		// Deprecated Xattrs field only, as some writers build headers.
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "oldx", Mode: 0o644, ModTime: mt, Xattrs: map[string]string{"user.old": "v"}}, body: "o"},
	}
	s := newSandbox(t)
	data := buildTar(t, ents...)
	dc := &drainCheck{src: tar.NewReader(bytes.NewReader(data))}
	res, err := Apply(context.Background(), dc, s.layer, Options{})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	s.checkOutside(t)
	if len(dc.violation) > 0 {
		t.Errorf("Next called before content was read to EOF for %v", dc.violation)
	}
	if want := len(ents) - 1; res.Entries != want {
		t.Errorf("Entries = %d, want %d", res.Entries, want)
	}
	if want := int64(len("#!/bin/sh\n") + 1 + 3 + 4 + 1); res.Size != want {
		t.Errorf("Size = %d, want %d", res.Size, want)
	}

	mts := unix.Timespec{Sec: mt.Unix(), Nsec: int64(mt.Nanosecond())}
	// Before anything reads the files (relatime would move atime).
	if st := lstat(t, filepath.Join(s.layer, "d/suid")); st.Atim != (unix.Timespec{Sec: at.Unix(), Nsec: int64(at.Nanosecond())}) {
		t.Errorf("atime of d/suid = %v, want the header's %v", st.Atim, at)
	}
	if st := lstat(t, filepath.Join(s.layer, "sgid")); st.Atim != mts {
		t.Errorf("atime of sgid = %v, want mtime %v when the tar has none", st.Atim, mts)
	}

	tests := []struct {
		path     string
		ifmt     uint32
		perm     uint32
		uid, gid uint32
		rdev     uint64
		data     string
	}{
		{"d", unix.S_IFDIR, 0o750, 1000, 1001, 0, ""},
		{"d/suid", unix.S_IFREG, 0o4755, 1234, 5678, 0, "#!/bin/sh\n"},
		{"sgid", unix.S_IFREG, 0o2711, 7, 8, 0, "x"},
		{"sticky", unix.S_IFDIR, 0o1777, 0, 0, 0, ""},
		{"empty", unix.S_IFREG, 0o600, 2, 3, 0, ""},
		{"caps", unix.S_IFREG, 0o755, 0, 0, 0, "bin"},
		{"link", unix.S_IFLNK, 0o777, 33, 44, 0, ""},
		{"fifo", unix.S_IFIFO, 0o640, 5, 6, 0, ""},
		{"null", unix.S_IFCHR, 0o666, 0, 0, unix.Mkdev(1, 3), ""},
		{"blk", unix.S_IFBLK, 0o660, 0, 6, unix.Mkdev(7, 200), ""},
		{strings.Repeat("long/", 40) + "name", unix.S_IFREG, 0o644, 0, 0, 0, "deep"},
	}
	for _, tt := range tests {
		t.Run(tt.path[:min(len(tt.path), 20)], func(t *testing.T) {
			p := filepath.Join(s.layer, tt.path)
			st := lstat(t, p)
			if st.Mode&unix.S_IFMT != tt.ifmt {
				t.Errorf("type %o, want %o", st.Mode&unix.S_IFMT, tt.ifmt)
			}
			if st.Mode&0o7777 != tt.perm {
				t.Errorf("perm %04o, want %04o", st.Mode&0o7777, tt.perm)
			}
			if st.Uid != tt.uid || st.Gid != tt.gid {
				t.Errorf("owner %d:%d, want %d:%d", st.Uid, st.Gid, tt.uid, tt.gid)
			}
			if st.Rdev != tt.rdev {
				t.Errorf("rdev %x, want %x", st.Rdev, tt.rdev)
			}
			if st.Mtim != mts {
				t.Errorf("mtime %v, want %v", st.Mtim, mts)
			}
			if tt.ifmt == unix.S_IFREG {
				b, err := os.ReadFile(p)
				if err != nil || string(b) != tt.data {
					t.Errorf("content %q (%v), want %q", b, err, tt.data)
				}
			}
		})
	}

	if got, err := os.Readlink(filepath.Join(s.layer, "link")); err != nil || got != "/d/suid" {
		t.Errorf("link -> %q (%v)", got, err)
	}
	a, b := lstat(t, filepath.Join(s.layer, "d/suid")), lstat(t, filepath.Join(s.layer, "d/hard"))
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hardlink: inodes %d/%d nlink %d, want one inode with 2 links", a.Ino, b.Ino, a.Nlink)
	}
	if v, ok := getxattr(t, filepath.Join(s.layer, "caps"), "security.capability"); !ok || v != capv {
		t.Errorf("security.capability = %x (present %v), want %x", v, ok, capv)
	}
	if v, _ := getxattr(t, filepath.Join(s.layer, "caps"), "user.note"); v != "hello" {
		t.Errorf("user.note = %q", v)
	}
	if v, _ := getxattr(t, filepath.Join(s.layer, "oldx"), "user.old"); v != "v" {
		t.Errorf("user.old from hdr.Xattrs = %q", v)
	}
	if _, err := os.Lstat(filepath.Join(s.layer, "global")); !os.IsNotExist(err) {
		t.Errorf("global header materialized: %v", err)
	}
}

func TestDirTimesSetAfterContents(t *testing.T) {
	testutil.NeedRoot(t)
	d1 := time.Unix(1_000_000_000, 111)
	d2 := time.Unix(1_100_000_000, 222)
	root := time.Unix(900_000_000, 333)
	ents := []ent{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o711, ModTime: root, Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "./a/", Mode: 0o755, ModTime: d1, Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "./a/b/", Mode: 0o755, ModTime: d2, Format: tar.FormatPAX}},
		reg("a/b/f", "data"),
		reg("a/g", "data"),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: ".wh.gone"}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "a/b/.wh.gone"}},
		reg("top", "x"),
	}
	s := newSandbox(t)
	if _, err := applyBytes(t, buildTar(t, ents...), s.layer, Options{}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path string
		want time.Time
		perm uint32
	}{{"", root, 0o711}, {"a", d1, 0o755}, {"a/b", d2, 0o755}} {
		st := lstat(t, filepath.Join(s.layer, tt.path))
		if st.Mtim != (unix.Timespec{Sec: tt.want.Unix(), Nsec: int64(tt.want.Nanosecond())}) {
			t.Errorf("%q mtime = %v, want %v", tt.path, st.Mtim, tt.want)
		}
		if st.Mode&0o7777 != tt.perm {
			t.Errorf("%q perm = %o, want %o", tt.path, st.Mode&0o7777, tt.perm)
		}
	}
	s.checkOutside(t)
}

func TestImplicitParentsAndRepeatedDirs(t *testing.T) {
	testutil.NeedRoot(t)
	t2 := time.Unix(1_234_567_890, 5)
	ents := []ent{
		reg("x/y/z", "deep"),
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "r", Mode: 0o700, Uid: 9}},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "./r/", Mode: 0o755, Uid: 10, ModTime: t2, Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "x", Mode: 0o751, ModTime: t2, Format: tar.FormatPAX}},
	}
	s := newSandbox(t)
	old := unix.Umask(0o077)
	_, err := applyBytes(t, buildTar(t, ents...), s.layer, Options{})
	unix.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	xy := lstat(t, filepath.Join(s.layer, "x/y"))
	if xy.Mode != unix.S_IFDIR|0o755 || xy.Uid != 0 || xy.Gid != 0 {
		t.Errorf("implicit x/y: mode %o owner %d:%d, want dir 0755 0:0 despite umask 077", xy.Mode, xy.Uid, xy.Gid)
	}
	if time.Since(time.Unix(xy.Mtim.Unix())) > time.Hour {
		t.Errorf("implicit x/y got an mtime %v the tar never gave it", xy.Mtim)
	}
	x := lstat(t, filepath.Join(s.layer, "x"))
	if x.Mode != unix.S_IFDIR|0o751 || x.Mtim.Sec != t2.Unix() || x.Mtim.Nsec != 5 {
		t.Errorf("x named after its implicit creation: mode %o mtime %v", x.Mode, x.Mtim)
	}
	r := lstat(t, filepath.Join(s.layer, "r"))
	if r.Mode != unix.S_IFDIR|0o755 || r.Uid != 10 || r.Mtim.Sec != t2.Unix() {
		t.Errorf("repeated dir r: mode %o uid %d mtime %v, want the later entry's", r.Mode, r.Uid, r.Mtim)
	}
}

func TestWhiteouts(t *testing.T) {
	testutil.NeedRoot(t)
	wh := func(name string) ent { return ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}} }
	tests := []struct {
		name       string
		ents       []ent
		whiteouts  []string // must be 0/0 char devices
		real       []string // must exist and not be whiteouts
		absent     []string
		opaqueDirs []string
	}{
		{name: "plain", ents: []ent{wh(".wh.gone"), dirE("d"), wh("d/.wh.sub")},
			whiteouts: []string{"gone", "d/sub"}, absent: []string{".wh.gone", "d/.wh.sub"}},
		{name: "implicit parent", ents: []ent{wh("p/q/.wh.x")}, whiteouts: []string{"p/q/x"}},
		{name: "real entry after whiteout wins", ents: []ent{wh(".wh.f"), reg("f", "real")}, real: []string{"f"}, absent: []string{".wh.f"}},
		{name: "real entry before whiteout wins", ents: []ent{reg("f", "real"), wh(".wh.f")}, real: []string{"f"}},
		{name: "real dir via child wins", ents: []ent{wh(".wh.d"), reg("d/child", "c")}, real: []string{"d", "d/child"}},
		{name: "opaque marker", ents: []ent{dirE("o"), wh("o/.wh..wh..opq"), reg("o/kept", "k")},
			opaqueDirs: []string{"o"}, real: []string{"o/kept"}, absent: []string{"o/.wh..wh..opq"}},
		{name: "opaque marker implicit dir", ents: []ent{wh("i/.wh..wh..opq")}, opaqueDirs: []string{"i"}},
		{name: "opaque root", ents: []ent{wh(".wh..wh..opq")}, opaqueDirs: []string{""}},
		{name: "opaque xattr in tar", ents: []ent{{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "t", Mode: 0o755,
			PAXRecords: map[string]string{"SCHILY.xattr.trusted.overlay.opaque": "y"}}}}, opaqueDirs: []string{"t"}},
		{name: "user opaque xattr in tar", ents: []ent{{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "u", Mode: 0o755,
			PAXRecords: map[string]string{"SCHILY.xattr.user.overlay.opaque": "y"}}}}, opaqueDirs: []string{"u"}},
	}
	for _, ns := range []whiteout.Namespace{whiteout.Trusted, whiteout.User} {
		for _, tt := range tests {
			t.Run(ns.String()+"/"+tt.name, func(t *testing.T) {
				s := newSandbox(t)
				if _, err := applyBytes(t, buildTar(t, tt.ents...), s.layer, Options{OpaqueNamespace: ns}); err != nil {
					t.Fatal(err)
				}
				s.checkOutside(t)
				for _, w := range tt.whiteouts {
					if st := lstat(t, filepath.Join(s.layer, w)); !whiteout.IsWhiteoutStat(&st) {
						t.Errorf("%s: mode %o rdev %d, want a 0/0 char device", w, st.Mode, st.Rdev)
					}
				}
				for _, r := range tt.real {
					if st := lstat(t, filepath.Join(s.layer, r)); whiteout.IsWhiteoutStat(&st) {
						t.Errorf("%s is a whiteout; the real entry must win", r)
					}
				}
				for _, a := range tt.absent {
					if _, err := os.Lstat(filepath.Join(s.layer, a)); !os.IsNotExist(err) {
						t.Errorf("%s exists (%v)", a, err)
					}
				}
				for _, d := range tt.opaqueDirs {
					p := filepath.Join(s.layer, d)
					if v, ok := getxattr(t, p, ns.OpaqueXattr()); !ok || v != "y" {
						t.Errorf("%q: %s = %q (%v), want y", d, ns.OpaqueXattr(), v, ok)
					}
					other := whiteout.User
					if ns == whiteout.User {
						other = whiteout.Trusted
					}
					if _, ok := getxattr(t, p, other.OpaqueXattr()); ok {
						t.Errorf("%q: %s set; only %s was asked for", d, other.OpaqueXattr(), ns.OpaqueXattr())
					}
				}
			})
		}
	}
}

func TestPrivateXattrsSkippedWithWarning(t *testing.T) {
	testutil.NeedRoot(t)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ents := []ent{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "d", Mode: 0o755, PAXRecords: map[string]string{
			"SCHILY.xattr.trusted.overlay.redirect":      "/x",
			"SCHILY.xattr.user.containers.override_stat": "0:0:0777",
			"SCHILY.xattr.user.keep":                     "yes",
		}}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644, PAXRecords: map[string]string{
			"SCHILY.xattr.trusted.overlay.opaque": "y", // opaque on a file means nothing
		}}},
	}
	s := newSandbox(t)
	if _, err := applyBytes(t, buildTar(t, ents...), s.layer, Options{Logger: log}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, xattr string }{
		{"d", "trusted.overlay.redirect"}, {"d", "user.containers.override_stat"}, {"f", "trusted.overlay.opaque"},
	} {
		if _, ok := getxattr(t, filepath.Join(s.layer, c.path), c.xattr); ok {
			t.Errorf("%s: private xattr %s was written", c.path, c.xattr)
		}
		if !strings.Contains(logs.String(), "entry="+c.path) || !strings.Contains(logs.String(), "xattr="+c.xattr) {
			t.Errorf("no warning naming %s and %s in:\n%s", c.path, c.xattr, logs.String())
		}
	}
	if v, _ := getxattr(t, filepath.Join(s.layer, "d"), "user.keep"); v != "yes" {
		t.Errorf("ordinary xattr user.keep = %q", v)
	}
}

func TestHardlinks(t *testing.T) {
	testutil.NeedRoot(t)
	s := newSandbox(t)
	ents := []ent{
		reg("f", "shared"),
		hardlinkE("./g", "./f"),
		hardlinkE("sub/h", "g"),
		// A symlink pointing outside: the hardlink is a second name of
		// the symlink itself, never of what it points to.
		symlinkE("s", s.outside+"/canary"),
		hardlinkE("s2", "s"),
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "p", Mode: 0o644}},
		hardlinkE("p2", "p"),
	}
	if _, err := applyBytes(t, buildTar(t, ents...), s.layer, Options{}); err != nil {
		t.Fatal(err)
	}
	s.checkOutside(t)
	for _, group := range [][]string{{"f", "g", "sub/h"}, {"s", "s2"}, {"p", "p2"}} {
		first := lstat(t, filepath.Join(s.layer, group[0]))
		if int(first.Nlink) != len(group) {
			t.Errorf("%s: nlink %d, want %d", group[0], first.Nlink, len(group))
		}
		for _, n := range group[1:] {
			if st := lstat(t, filepath.Join(s.layer, n)); st.Ino != first.Ino {
				t.Errorf("%s: inode %d, want %s's %d", n, st.Ino, group[0], first.Ino)
			}
		}
	}
	if st := lstat(t, filepath.Join(s.layer, "s2")); st.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("hardlink to a symlink is not a symlink: mode %o", st.Mode)
	}
}

func TestHostile(t *testing.T) {
	testutil.NeedRoot(t)
	type tc struct {
		name   string
		ents   func(s *sandbox) []ent
		raw    bool   // hand headers over as is, not through archive/tar
		entry  string // the error must name it
		unsafe bool   // the error must wrap ErrUnsafeName
	}
	fixed := func(e ...ent) func(*sandbox) []ent { return func(*sandbox) []ent { return e } }
	tests := []tc{
		{name: "absolute", ents: fixed(reg("/abs", "x")), entry: "/abs", unsafe: true},
		{name: "dotdot", ents: fixed(reg("../../outside/canary", "pwned")), entry: "../../outside/canary", unsafe: true},
		{name: "dotdot inside", ents: fixed(reg("a/../../x", "x")), entry: "a/../../x", unsafe: true},
		{name: "dotdot dir", ents: fixed(dirE("../escape")), entry: "../escape", unsafe: true},
		{name: "NUL", raw: true, ents: fixed(reg("a\x00b", "x")), entry: `a\x00b`, unsafe: true},
		{name: "empty", raw: true, ents: fixed(reg("", "x")), entry: `""`, unsafe: true},
		{name: "file through absolute symlink", ents: func(s *sandbox) []ent {
			return []ent{symlinkE("s", s.outside), reg("s/canary", "pwned")}
		}, entry: "s/canary", unsafe: true},
		{name: "file through relative symlink", ents: fixed(symlinkE("s", "../../outside"), reg("s/new", "pwned")), entry: "s/new", unsafe: true},
		{name: "dir through symlink", ents: fixed(symlinkE("s", "../../outside"), dirE("s/newdir")), entry: "s/newdir", unsafe: true},
		{name: "deep through symlink", ents: fixed(dirE("d"), symlinkE("d/s", "/"), reg("d/s/tmp/x", "pwned")), entry: "d/s/tmp/x", unsafe: true},
		{name: "symlink to dot", ents: fixed(symlinkE("s", "."), reg("s/x", "x")), entry: "s/x", unsafe: true},
		{name: "whiteout through symlink", ents: fixed(symlinkE("s", "../../outside"), reg("s/.wh.canary", "")), entry: "s/.wh.canary", unsafe: true},
		{name: "opaque through symlink", ents: fixed(symlinkE("s", "../../outside"), reg("s/.wh..wh..opq", "")), entry: "s/.wh..wh..opq", unsafe: true},
		{name: "hardlink dotdot", ents: fixed(hardlinkE("h", "../../outside/canary")), entry: "h", unsafe: true},
		{name: "hardlink absolute", ents: func(s *sandbox) []ent { return []ent{hardlinkE("h", s.outside+"/canary")} }, entry: "h", unsafe: true},
		{name: "hardlink through symlink", ents: fixed(symlinkE("s", "../../outside"), hardlinkE("h", "s/canary")), entry: "h", unsafe: true},
		{name: "hardlink through abs symlink", ents: func(s *sandbox) []ent {
			return []ent{symlinkE("s", s.outside), hardlinkE("h", "s/canary")}
		}, entry: "h", unsafe: true},
		{name: "hardlink to dir", ents: fixed(dirE("d"), hardlinkE("h", "d")), entry: "h", unsafe: true},
		{name: "hardlink to implicit dir", ents: fixed(reg("d/f", "x"), hardlinkE("h", "d")), entry: "h", unsafe: true},
		{name: "hardlink forward", ents: fixed(hardlinkE("h", "later"), reg("later", "x")), entry: "h", unsafe: true},
		{name: "hardlink to itself", ents: fixed(hardlinkE("h", "h")), entry: "h", unsafe: true},
		{name: "hardlink to whiteout", ents: fixed(reg(".wh.x", ""), hardlinkE("h", ".wh.x")), entry: "h", unsafe: true},
		{name: "hardlink to root", ents: fixed(hardlinkE("h", "./")), entry: "h", unsafe: true},
		{name: "symlink then file", ents: fixed(symlinkE("s", "../../outside/canary"), reg("s", "pwned")), entry: "s"},
		{name: "symlink then dir", ents: fixed(symlinkE("s", "../../outside"), dirE("s")), entry: "s"},
		{name: "file twice", ents: fixed(reg("f", "1"), reg("./f", "2")), entry: "./f"},
		{name: "dir then file", ents: fixed(dirE("d"), reg("d", "x")), entry: "d"},
		{name: "file then dir", ents: fixed(reg("d", "x"), dirE("d/")), entry: "d/"},
		{name: "implicit dir then file", ents: fixed(reg("d/x", "x"), reg("d", "x")), entry: "d"},
		{name: "whiteout twice", ents: fixed(reg(".wh.x", ""), reg(".wh.x", "")), entry: ".wh.x"},
		{name: "whiteout with data", ents: fixed(reg(".wh.x", "data")), entry: ".wh.x"},
		{name: "opaque with data", ents: fixed(reg("d/.wh..wh..opq", "data")), entry: "d/.wh..wh..opq"},
		{name: "aufs meta", ents: fixed(reg(".wh..wh.plnk", "")), entry: ".wh..wh.plnk"},
		{name: "whiteout of dotdot", ents: fixed(reg("d/.wh...", "")), entry: "d/.wh...", unsafe: true},
		{name: "whiteout-named dir", ents: fixed(reg(".wh.x/y", "z")), entry: ".wh.x/y", unsafe: true},
		{name: "root as file", ents: fixed(reg(".", "x")), entry: `"."`},
		{name: "file over hardlink", ents: fixed(reg("f", "x"), hardlinkE("g", "f"), reg("g", "y")), entry: "g"},
		{name: "negative uid", raw: true, ents: fixed(ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "u", Uid: -1}}), entry: "u"},
		{name: "child of a file", ents: fixed(reg("f", "x"), reg("f/x", "y")), entry: "f/x"},
		{name: "child of a fifo", ents: fixed(ent{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "p"}}, dirE("p/d")), entry: "p/d"},
		{name: "device number too big", ents: fixed(ent{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "c", Devmajor: 4096, Devminor: 1}}), entry: "c"},
		{name: "symlink chain inside", ents: fixed(dirE("b"), symlinkE("a", "b"), reg("a/x", "y")), entry: "a/x", unsafe: true},
		{name: "unknown type", ents: fixed(ent{hdr: tar.Header{Typeflag: 'Z', Name: "z"}}), entry: "z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSandbox(t)
			ents := tt.ents(s)
			var src Source
			if tt.raw {
				src = &fakeSource{ents: ents}
			} else {
				src = tar.NewReader(bytes.NewReader(buildTar(t, ents...)))
			}
			_, err := Apply(context.Background(), src, s.layer, Options{})
			if err == nil {
				t.Fatalf("Apply succeeded; tree: %v", listTree(t, s.layer))
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tt.entry) {
				t.Errorf("error %q does not name entry %s", err, tt.entry)
			}
			if tt.unsafe && !errors.Is(err, ErrUnsafeName) {
				t.Errorf("error %q does not wrap ErrUnsafeName", err)
			}
			s.checkOutside(t)
		})
	}
}

func TestCorruptStreams(t *testing.T) {
	testutil.NeedRoot(t)
	good := buildTar(t, dirE("usr/"), dirE("usr/bin/"), reg("usr/bin/x", strings.Repeat("A", 10000)), reg("after", "y"))
	// The header of usr/bin/x is the third 512-byte block.
	var hugeHdr bytes.Buffer
	if err := tar.NewWriter(&hugeHdr).WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "huge", Size: 1 << 40, Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	hugeHdr.Write(make([]byte, 4096))
	tests := []struct {
		name string
		data []byte
		want []string
	}{
		{"truncated in content", good[:3*512+5000], []string{"apply usr/bin/x", "unexpected EOF"}},
		{"truncated in header", good[:512+100], []string{"usr/", "unexpected EOF"}},
		{"absurd size", hugeHdr.Bytes(), []string{"apply huge", "unexpected EOF"}},
		{"corrupt checksum", func() []byte {
			b := slices.Clone(good)
			b[2*512+148] ^= 0x55 // checksum field of usr/bin/x
			return b
		}(), []string{"usr/bin/", tar.ErrHeader.Error()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSandbox(t)
			_, err := applyBytes(t, tt.data, s.layer, Options{})
			if err == nil {
				t.Fatal("Apply succeeded on a broken stream")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			s.checkOutside(t)
		})
	}
}

func TestContextCancelled(t *testing.T) {
	s := newSandbox(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Apply(ctx, tar.NewReader(bytes.NewReader(buildTar(t, reg("f", "x")))), s.layer, Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if names := listTree(t, s.layer); len(names) != 0 {
		t.Errorf("entries applied after cancel: %v", names)
	}
}

func TestCleanName(t *testing.T) {
	tests := []struct {
		in, want string
		bad      bool
	}{
		{in: "x", want: "x"}, {in: "./x", want: "x"}, {in: "x/", want: "x"}, {in: ".//a//b/./c/", want: "a/b/c"},
		{in: ".", want: ""}, {in: "./", want: ""}, {in: "a/.wh.b", want: "a/.wh.b"}, {in: ".wh.a/", want: ".wh.a"},
		{in: "", bad: true}, {in: "/x", bad: true}, {in: "..", bad: true}, {in: "a/../b", bad: true},
		{in: "a/..", bad: true}, {in: "a\x00", bad: true}, {in: ".wh.a/b", bad: true}, {in: "x/.wh..wh..opq/y", bad: true},
		{in: "...", want: "..."}, {in: "..a/b..", want: "..a/b.."},
	}
	for _, tt := range tests {
		got, err := cleanName(tt.in)
		if tt.bad != (err != nil) || got != tt.want {
			t.Errorf("cleanName(%q) = %q, %v; want %q, bad=%v", tt.in, got, err, tt.want, tt.bad)
		}
	}
}

// TestLegacyTypes feeds headers archive/tar passes through from old or
// GNU-specific archives.
func TestLegacyTypes(t *testing.T) {
	testutil.NeedRoot(t)
	s := newSandbox(t)
	src := &fakeSource{ents: []ent{
		{hdr: tar.Header{Typeflag: tar.TypeRegA, Name: "olddir/", Mode: 0o750}},
		{hdr: tar.Header{Typeflag: tar.TypeRegA, Name: "olddir/oldfile", Mode: 0o640, Size: 3}, body: "old"},
		{hdr: tar.Header{Typeflag: tar.TypeCont, Name: "contiguous", Mode: 0o600, Size: 4}, body: "cont"},
		{hdr: tar.Header{Typeflag: 'D', Name: "dumpdir/", Mode: 0o700, Size: 9}, body: "Yfoo\x00\x00abc"},
		{hdr: tar.Header{Typeflag: tar.TypeRegA, Name: "olddir/", Mode: 0o755}},
	}}
	if _, err := Apply(context.Background(), src, s.layer, Options{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		mode uint32
		data string
	}{
		{"olddir", unix.S_IFDIR | 0o755, ""},
		{"olddir/oldfile", unix.S_IFREG | 0o640, "old"},
		{"contiguous", unix.S_IFREG | 0o600, "cont"},
		{"dumpdir", unix.S_IFDIR | 0o700, ""},
	} {
		p := filepath.Join(s.layer, c.path)
		if st := lstat(t, p); st.Mode != c.mode {
			t.Errorf("%s: mode %o, want %o", c.path, st.Mode, c.mode)
		}
		if c.data != "" {
			if b, _ := os.ReadFile(p); string(b) != c.data {
				t.Errorf("%s: content %q, want %q", c.path, b, c.data)
			}
		}
	}
	if src.r.Len() != 0 {
		t.Errorf("last entry's content not read")
	}
}

func TestChmodNoFollowRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	err = chmodNoFollow(dfd, "link", 0o777)
	var u unix.Utsname
	unix.Uname(&u)
	if st := lstat(t, target); st.Mode&0o777 != 0o644 {
		// Only kernels without fchmodat2 (< 6.6) may follow.
		t.Logf("kernel %s", unix.ByteSliceToString(u.Release[:]))
		t.Errorf("chmod followed the symlink: target mode %o (err %v)", st.Mode&0o777, err)
	}
	if err == nil {
		t.Errorf("chmodNoFollow on a symlink succeeded")
	}
	if err := chmodNoFollow(dfd, "target", 0o600); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, target); st.Mode&0o777 != 0o600 {
		t.Errorf("target mode %o, want 0600", st.Mode&0o777)
	}
}

// TestConcurrentSymlinkSwap goes beyond the tar threat model: another
// process keeps swapping a directory of the layer for a symlink to the
// outside while Apply fills it. Apply may fail; it must never write
// outside.
func TestConcurrentSymlinkSwap(t *testing.T) {
	testutil.NeedRoot(t)
	s := newSandbox(t)
	ents := []ent{dirE("d")}
	for i := 0; i < 400; i++ {
		ents = append(ents, reg(fmt.Sprintf("d/f%03d", i), "x"),
			ent{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: fmt.Sprintf("d/p%03d", i), Mode: 0o777, Uid: 4321}},
			dirE(fmt.Sprintf("d/sub%03d", i)))
	}
	data := buildTar(t, ents...)
	d, moved := filepath.Join(s.layer, "d"), filepath.Join(s.layer, "moved")
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		swaps := 0
		for {
			select {
			case <-stop:
				done <- swaps
				return
			default:
			}
			if os.Rename(d, moved) == nil {
				if os.Symlink(s.outside, d) == nil {
					swaps++
					os.Remove(d)
				}
				os.Rename(moved, d)
			}
			// Swap single names too: a FIFO for a symlink to the canary.
			for i := 0; i < 400; i += 37 {
				p := filepath.Join(d, fmt.Sprintf("p%03d", i))
				if os.Remove(p) == nil {
					os.Symlink(filepath.Join(s.outside, "canary"), p)
				}
			}
		}
	}()
	_, err := Apply(context.Background(), tar.NewReader(bytes.NewReader(data)), s.layer, Options{})
	close(stop)
	swaps := <-done
	t.Logf("apply under attack: err=%v, %d directory swaps", err, swaps)
	s.checkOutside(t)
}

// cancelAfter cancels its context when the n-th entry is asked for.
type cancelAfter struct {
	Source
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Next() (*tar.Header, error) {
	if c.n--; c.n == 0 {
		c.cancel()
	}
	return c.Source.Next()
}

func TestContextCancelledBetweenEntries(t *testing.T) {
	s := newSandbox(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := &cancelAfter{Source: tar.NewReader(bytes.NewReader(buildTar(t, reg("one", "1"), reg("two", "2"), reg("three", "3")))), n: 2, cancel: cancel}
	res, err := Apply(ctx, src, s.layer, Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	// "two" was already handed out when the cancel came; "three" never is.
	if got := listTree(t, s.layer); !slices.Equal(got, []string{"one", "two"}) || res.Entries != 2 {
		t.Errorf("applied %v (%d entries), want [one two]", got, res.Entries)
	}
}
