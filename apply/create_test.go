package apply

import (
	"archive/tar"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

// defaultACL is the xattr form of the default ACL u::rwx,g::---,o::---:
// files created below it get no group or other permissions, whatever
// the umask.
func defaultACL() string {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range []struct {
		tag, perm uint16
	}{{0x01, 7}, {0x04, 0}, {0x20, 0}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, 0xffffffff)
	}
	return string(b)
}

// TestCreatedFilesGetTheirModesAndOwners checks the shortcuts of
// creation (no fchmod or fchown where openat already gets it right)
// where openat would get it wrong: a umask that strips bits, a setgid
// directory that hands down its group, a default ACL, owners other than
// the caller.
func TestCreatedFilesGetTheirModesAndOwners(t *testing.T) {
	testutil.NeedRoot(t)
	file := func(name string, mode int64, uid, gid int) ent {
		return ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: uid, Gid: gid, Format: tar.FormatPAX}, body: "x"}
	}
	sgid := ent{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "sg/", Mode: 0o2775, Gid: 50}}
	acl := ent{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "acl/", Mode: 0o755, Format: tar.FormatPAX,
		PAXRecords: map[string]string{paxXattrPrefix + aclDefaultXattr: defaultACL()}}}
	ents := []ent{
		file("plain", 0o644, 0, 0), file("exec", 0o755, 0, 0), file("ro", 0o444, 0, 0), file("private", 0o600, 0, 0),
		file("wide", 0o666, 0, 0), file("owned", 0o644, 7, 8), file("suid", 0o4755, 0, 0),
		sgid, file("sg/root", 0o644, 0, 0), file("sg/other", 0o644, 3, 50),
		acl, file("acl/f", 0o644, 0, 0), file("acl/g", 0o640, 0, 0),
	}
	data := buildTar(t, ents...)
	for _, umask := range []int{0o022, 0, 0o077} {
		t.Run(fmt.Sprintf("umask%03o", umask), func(t *testing.T) {
			old := syscall.Umask(umask)
			defer syscall.Umask(old)
			s := newSandbox(t)
			if _, err := applyBytes(t, data, s.layer, Options{}); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if _, err := unix.Getxattr(filepath.Join(s.layer, "acl"), aclDefaultXattr, nil); err != nil {
				t.Logf("no default ACL on acl/ (%v): that case is not checked", err)
			}
			for _, e := range ents {
				if e.hdr.Typeflag != tar.TypeReg {
					continue
				}
				st := lstat(t, filepath.Join(s.layer, e.hdr.Name))
				if got, want := st.Mode&0o7777, uint32(e.hdr.Mode); got != want {
					t.Errorf("%s: mode %04o, want %04o", e.hdr.Name, got, want)
				}
				if int(st.Uid) != e.hdr.Uid || int(st.Gid) != e.hdr.Gid {
					t.Errorf("%s: owner %d:%d, want %d:%d", e.hdr.Name, st.Uid, st.Gid, e.hdr.Uid, e.hdr.Gid)
				}
			}
		})
	}
}
