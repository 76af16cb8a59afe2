package fusefs

import (
	"encoding/binary"
	"os"
	"strconv"
	"strings"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// POSIX ACLs. Where the kernel checks permissions (default_permissions),
// the union negotiates FUSE_POSIX_ACL, so the kernel reads
// system.posix_acl_access through getxattr and applies it to every
// permission check, as overlayfs does with its upper's ACLs. The kernel
// then leaves to the file system what a local one does when it creates an
// object: inheriting the parent's default ACL, and applying the umask only
// where there is none (a default ACL overrides it). The union asks for the
// caller's umask (FUSE_DONT_MASK: the kernel sends it rather than
// applying it) and does posix_acl_create's work against the upper copy of
// the parent, which copy-up gave the lower's default ACL.
//
// Copy-up copies the ACL xattrs with the others, so a lower object's ACL
// holds through the view and after copy-up. chmod of an object with an
// ACL updates its mask entry (the upper's file system does it, as the
// mode is set there).

const (
	aclAccessXattr  = "system.posix_acl_access"
	aclDefaultXattr = "system.posix_acl_default"
)

// posixACLMountOptions turns on ACL semantics where the kernel checks
// permissions and xattrs are shown (without default_permissions FUSE would
// force it on; with noxattrs there are no ACLs to read).
func (u *union) posixACLMountOptions(mo *fuse.MountOptions) {
	if !u.opts.kernelPermissions || u.opts.NoXattrs {
		return
	}
	u.acl = true
	mo.EnableAcl = true
	mo.ExtraCapabilities |= fuse.CAP_DONT_MASK
}

// newObject is what a new object gets: its mode, and the ACLs inherited
// from its parent's default ACL (nil: none).
type newObject struct {
	mode         uint32
	access, dflt []byte
}

// newObjectMode works out the mode and ACLs of an object created with
// mode (permission bits as the caller asked) in the upper directory
// parentPath, as posix_acl_create does: with a default ACL there, the new
// object's ACL is that ACL masked by mode (kept only where the mode alone
// cannot say it) and a directory inherits the default ACL itself; without
// one, the umask applies.
func (u *union) newObjectMode(c *call, parentPath string, mode uint32, isDir bool) newObject {
	o := newObject{mode: mode & 07777}
	if !c.hasUmask {
		return o // the kernel masked mode already
	}
	umask := c.umask
	dflt, err := getXattr(parentPath, aclDefaultXattr)
	if err != nil || len(dflt) == 0 {
		o.mode &^= umask & 0o777
		return o
	}
	ents, ok := parseACL(dflt)
	if !ok {
		o.mode &^= umask & 0o777
		return o
	}
	m, equiv := aclCreateMasq(ents, o.mode)
	o.mode = m
	if !equiv {
		o.access = formatACL(ents)
	}
	if isDir {
		o.dflt = dflt
	}
	return o
}

// applyNewObject gives the object at path (or open as fd, if fd >= 0),
// made by the daemon and already chowned, the ACLs and mode of o. The
// daemon's own umask may have masked the mode it was made with: then it
// is set again. Setting an access ACL changes the group bits to its mask,
// which o.mode already reflects.
func (u *union) applyNewObject(path string, fd int, o newObject) error {
	f := fileRef{path: path, fd: fd}
	if o.access != nil {
		if err := f.setxattr(aclAccessXattr, o.access, 0); err != nil {
			return err
		}
	}
	if o.dflt != nil {
		if err := f.setxattr(aclDefaultXattr, o.dflt, 0); err != nil {
			return err
		}
	}
	if o.access == nil && o.mode&u.procUmask&0o777 == 0 {
		return nil
	}
	return f.chmod(o.mode)
}

// processUmask reads this process's umask without changing it (umask(2)
// can only be read by setting it, which would race other goroutines).
func processUmask() uint32 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0o022
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Umask:"); ok {
			if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
				return uint32(m)
			}
		}
	}
	return 0o022
}

// aclEntry is one entry of the xattr form of a POSIX ACL
// (include/uapi/linux/posix_acl_xattr.h).
type aclEntry struct {
	tag, perm uint16
	id        uint32
}

const (
	aclXattrVersion = 2
	aclUserObj      = 0x01
	aclUser         = 0x02
	aclGroupObj     = 0x04
	aclGroup        = 0x08
	aclMask         = 0x10
	aclOther        = 0x20
)

func parseACL(b []byte) ([]aclEntry, bool) {
	if len(b) < 4 || (len(b)-4)%8 != 0 || binary.LittleEndian.Uint32(b) != aclXattrVersion {
		return nil, false
	}
	var out []aclEntry
	for p := b[4:]; len(p) > 0; p = p[8:] {
		out = append(out, aclEntry{
			tag:  binary.LittleEndian.Uint16(p),
			perm: binary.LittleEndian.Uint16(p[2:]),
			id:   binary.LittleEndian.Uint32(p[4:]),
		})
	}
	return out, true
}

func formatACL(ents []aclEntry) []byte {
	b := make([]byte, 4+8*len(ents))
	binary.LittleEndian.PutUint32(b, aclXattrVersion)
	for i, e := range ents {
		p := b[4+8*i:]
		binary.LittleEndian.PutUint16(p, e.tag)
		binary.LittleEndian.PutUint16(p[2:], e.perm)
		binary.LittleEndian.PutUint32(p[4:], e.id)
	}
	return b
}

// aclCreateMasq is the kernel's posix_acl_create_masq: it masks the
// inherited entries (in place) by the permission bits of mode and returns
// the mode the new object gets, and whether the ACL says no more than that
// mode (then no access ACL is stored).
func aclCreateMasq(ents []aclEntry, mode uint32) (uint32, bool) {
	m := mode & 0o777
	equiv := true
	var groupObj, maskObj *aclEntry
	for i := range ents {
		e := &ents[i]
		switch e.tag {
		case aclUserObj:
			e.perm &= uint16(m>>6) & 7
			m &= uint32(e.perm)<<6 | ^uint32(0o700)
		case aclUser, aclGroup:
			equiv = false
		case aclGroupObj:
			groupObj = e
		case aclOther:
			e.perm &= uint16(m) & 7
			m &= uint32(e.perm) | ^uint32(0o007)
		case aclMask:
			maskObj = e
			equiv = false
		}
	}
	switch {
	case maskObj != nil:
		maskObj.perm &= uint16(m>>3) & 7
		m &= uint32(maskObj.perm)<<3 | ^uint32(0o070)
	case groupObj != nil:
		groupObj.perm &= uint16(m>>3) & 7
		m &= uint32(groupObj.perm)<<3 | ^uint32(0o070)
	}
	return mode&^0o777 | m&0o777, equiv
}
