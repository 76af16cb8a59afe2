package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/statoverride"
)

// ownedEntry is one tar entry and what the view must show for it.
type ownedEntry struct {
	hdr  tar.Header
	kind uint32 // S_IFMT
}

func ownedEntries() []ownedEntry {
	mt := time.Date(2024, 3, 4, 5, 6, 7, 0, time.UTC)
	capV1 := string([]byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	return []ownedEntry{
		{tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt}, unix.S_IFDIR},
		{tar.Header{Name: "etc/shadow", Typeflag: tar.TypeReg, Mode: 0o640, Gid: 42, Size: 5, ModTime: mt}, unix.S_IFREG},
		{tar.Header{Name: "home/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt}, unix.S_IFDIR},
		{tar.Header{Name: "home/user/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: 1000, Gid: 1000, ModTime: mt}, unix.S_IFDIR},
		{tar.Header{Name: "home/user/notes", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 1000, Gid: 1000, Size: 5, ModTime: mt}, unix.S_IFREG},
		{tar.Header{Name: "srv/", Typeflag: tar.TypeDir, Mode: 0o1777, Uid: 65534, Gid: 65534, ModTime: mt}, unix.S_IFDIR},
		{tar.Header{Name: "srv/data", Typeflag: tar.TypeReg, Mode: 0o444, Uid: 65534, Gid: 65534, Size: 5, ModTime: mt}, unix.S_IFREG},
		{tar.Header{Name: "usr/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt}, unix.S_IFDIR},
		{tar.Header{Name: "usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt}, unix.S_IFDIR},
		{tar.Header{Name: "usr/bin/sudo", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 5, ModTime: mt}, unix.S_IFREG},
		{tar.Header{Name: "usr/bin/wall", Typeflag: tar.TypeReg, Mode: 0o2755, Gid: 5, Size: 5, ModTime: mt}, unix.S_IFREG},
		{tar.Header{Name: "usr/bin/ping", Typeflag: tar.TypeReg, Mode: 0o755, Size: 5, ModTime: mt, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": capV1}}, unix.S_IFREG},
		{tar.Header{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt}, unix.S_IFDIR},
		{tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mt}, unix.S_IFCHR},
		{tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Mode: 0o660, Gid: 6, Devmajor: 8, Devminor: 0, ModTime: mt}, unix.S_IFBLK},
	}
}

// TestOwnershipAndDevicesKept is the rootless promise: a layer with files
// of several owners, setuid/setgid/sticky bits, a file capability and
// device nodes imports, exports bit for bit, and mounts through the union
// showing every owner, mode and device as the tar has them, for root and
// for a plain user alike.
func TestOwnershipAndDevicesKept(t *testing.T) {
	testutil.NeedRootOrRootlessPass(t)
	entries := ownedEntries()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		must(t, tw.WriteHeader(&h))
		if h.Size > 0 {
			_, err := tw.Write([]byte("data\n"))
			must(t, err)
		}
	}
	must(t, tw.Close())
	layer := buf.Bytes()

	s := newStore(t)
	id := s.ok(layer, "import", "-").lastLine()
	if got := sha256hex([]byte(s.ok(nil, "export", id).stdout)); got != sha256hex(layer) {
		t.Fatalf("export is not the imported tar")
	}
	if os.Geteuid() != 0 {
		// On disk the user owns everything; the tar's owner is recorded.
		var info struct {
			Path string `json:"path"`
		}
		must(t, json.Unmarshal([]byte(s.ok(nil, "inspect", id).stdout), &info))
		st, ok, err := statoverride.Get(filepath.Join(info.Path, "home/user/notes"))
		if err != nil || !ok || st.UID != 1000 || st.GID != 1000 {
			t.Fatalf("home/user/notes: override_stat %+v %v %v, want 1000:1000", st, ok, err)
		}
	}
	s.ok(nil, "check")

	mnt := s.mountView(id, "fuse", "--ro")
	for _, e := range entries {
		p := filepath.Join(mnt, e.hdr.Name)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Errorf("%s: %v", e.hdr.Name, err)
			continue
		}
		if st.Mode&unix.S_IFMT != e.kind || st.Mode&0o7777 != uint32(e.hdr.Mode) {
			t.Errorf("%s: mode %o, want type %o perm %o", e.hdr.Name, st.Mode, e.kind, e.hdr.Mode)
		}
		if st.Uid != uint32(e.hdr.Uid) || st.Gid != uint32(e.hdr.Gid) {
			t.Errorf("%s: owner %d:%d, want %d:%d", e.hdr.Name, st.Uid, st.Gid, e.hdr.Uid, e.hdr.Gid)
		}
		if e.kind == unix.S_IFCHR || e.kind == unix.S_IFBLK {
			if want := unix.Mkdev(uint32(e.hdr.Devmajor), uint32(e.hdr.Devminor)); st.Rdev != want {
				t.Errorf("%s: rdev %d:%d, want %d:%d", e.hdr.Name, unix.Major(st.Rdev), unix.Minor(st.Rdev), e.hdr.Devmajor, e.hdr.Devminor)
			}
		}
		if v, ok := e.hdr.PAXRecords["SCHILY.xattr.security.capability"]; ok {
			if got, err := getxattr(p, "security.capability"); err != nil || got != v {
				t.Errorf("%s: security.capability %q %v, want the tar's", e.hdr.Name, got, err)
			}
		}
	}
	s.ok(nil, "umount", mnt)
}

// TestViewOfOwnTreeWriteCommitExport is the plain user's whole cycle on an
// image whose tree belongs to them (uid and gid of the caller): mount
// through the union (fusermount3 when rootless), write, delete, replace a
// directory, unmount, commit, and export the new layer with OCI whiteouts.
func TestViewOfOwnTreeWriteCommitExport(t *testing.T) {
	testutil.NeedRootOrRootlessPass(t)
	uid, gid := os.Geteuid(), os.Getegid()
	mt := time.Date(2024, 3, 4, 5, 6, 7, 0, time.UTC)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "work/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "work/keep", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5},
		{Name: "work/drop", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5},
		{Name: "work/cache/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "work/cache/old", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5},
	} {
		h.Uid, h.Gid, h.ModTime = uid, gid, mt
		must(t, tw.WriteHeader(h))
		if h.Size > 0 {
			_, err := tw.Write([]byte("data\n"))
			must(t, err)
		}
	}
	must(t, tw.Close())
	s := newStore(t)
	base := s.ok(buf.Bytes(), "import", "-").lastLine()
	view := s.ok(nil, "create", "--name", "mine", base).lastLine()
	mnt := s.mountView("mine", "fuse")
	must(t, os.WriteFile(filepath.Join(mnt, "work/keep"), []byte("changed\n"), 0o644))
	must(t, os.Remove(filepath.Join(mnt, "work/drop")))
	must(t, os.RemoveAll(filepath.Join(mnt, "work/cache")))
	must(t, os.Mkdir(filepath.Join(mnt, "work/cache"), 0o755))
	must(t, os.WriteFile(filepath.Join(mnt, "work/new"), []byte("new\n"), 0o600))
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(mnt, "work/new"), &st))
	if int(st.Uid) != uid {
		t.Fatalf("a new file shows owner %d, want the writer %d", st.Uid, uid)
	}
	s.ok(nil, "umount", mnt)
	if isMounted(mnt) {
		t.Fatal("umount left the view mounted")
	}
	layer := s.ok(nil, "commit", view).lastLine()
	_, got := layerEntries(t, s.ok(nil, "export", layer).stdout)
	for name, want := range map[string]string{"work/keep": "changed\n", "work/.wh.drop": "", "work/cache/.wh..wh..opq": "", "work/new": "new\n"} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("committed layer: %s = %q (present %v), want %q; layer holds %v", name, v, ok, want, got)
		}
	}
	if _, ok := got["work/cache/old"]; ok {
		t.Error("committed layer still holds work/cache/old")
	}
	s.ok(nil, "check")
}
