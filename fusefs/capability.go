package fusefs

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/statoverride"
)

// A file capability that a rootless store kept under
// statoverride.CapabilityXattr (the applier could not set the real one) is
// security.capability in the view: getxattr and listxattr show it under
// that name, exec through a mount that honours it sees it, removexattr
// (which the kernel sends when the file is written or chowned) removes it,
// copy-up copies it as it copies every xattr, and a commit writes it back
// as security.capability. The kept name itself never shows (it is private:
// whiteout.IsPrivateXattr), so it cannot be set through the view either.
// A real security.capability on the object wins over a kept one.

// capabilityGetxattr answers getxattr of security.capability; ok is false
// for every other name.
func (n *node) capabilityGetxattr(attr string, dest []byte) (sz uint32, errno syscall.Errno, ok bool) {
	if attr != statoverride.SecurityCapability {
		return 0, 0, false
	}
	n.mu.Lock()
	none := n.upperNoRecords
	n.mu.Unlock()
	if none {
		return 0, syscall.ENODATA, true
	}
	sz, errno = n.storedXattr(attr, dest)
	if errno == syscall.ENODATA {
		sz, errno = n.storedXattr(statoverride.CapabilityXattr, dest)
	}
	return sz, errno, true
}

// storedCapabilityName is the xattr that removing attr from the object at
// path must remove: the kept capability when security.capability shows
// only that (the kernel removes it when the file is written or chowned).
func storedCapabilityName(path, attr string) string {
	if attr != statoverride.SecurityCapability {
		return attr
	}
	f := pathRef(path)
	if _, err := f.getxattr(attr, nil); !errors.Is(err, unix.ENODATA) {
		return attr
	}
	if _, err := f.getxattr(statoverride.CapabilityXattr, nil); err == nil {
		return statoverride.CapabilityXattr
	}
	return attr
}

// presentCapability renames a kept capability in a list of xattr names to
// security.capability, unless the real one is listed too.
func presentCapability(names []string) []string {
	kept, real := -1, false
	for i, nm := range names {
		switch nm {
		case statoverride.CapabilityXattr:
			kept = i
		case statoverride.SecurityCapability:
			real = true
		}
	}
	if kept < 0 || real {
		return names
	}
	out := append([]string{}, names...)
	out[kept] = statoverride.SecurityCapability
	return out
}
