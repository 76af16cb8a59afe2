package fusefs

import (
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/userns"
)

// Who checks permissions in a view.
//
// Root in the initial user namespace, and anyone mounting with AllowOther,
// gets default_permissions: the kernel checks every access against the
// owners and modes the view presents, so other users are held to them (and
// so is the mounter). Anyone else mounts without it: FUSE then lets only
// processes with the mounter's own uid and gid in at all, and for those the
// daemon's credentials on the upper and lower directories decide, as for
// any file of theirs. A plain user's view of a root-owned image (`ls -ln`
// shows uid 0, from user.containers.override_stat) is thus theirs to change
// throughout, as root's is inside a rootless container; fuse-overlayfs gets
// the same effect by running as root of the container's user namespace.
// Access (access(2), chdir) then answers from the same credentials.

// kernelChecksPermissions is the rule above.
func kernelChecksPermissions(o *Options) bool { return o.AllowOther || userns.PrivilegedRoot() }

// permissionMountOptions are the mount options the rule asks for.
func permissionMountOptions(o *Options) []string {
	if o.kernelPermissions {
		return []string{"default_permissions"}
	}
	return nil
}

// access answers access(2) and chdir when the kernel leaves them to the
// union (no default_permissions): what the daemon may do with the object
// on disk. Writing a lower object means copying it up, which needs only to
// read it (the copy is the daemon's); executing a file needs an execute
// bit in the mode shown, as the kernel asks of exec, and the daemon to read
// the file.
func (n *node) access(mask uint32) syscall.Errno {
	u := n.u
	if mask&unix.W_OK != 0 && u.readOnly {
		return syscall.EROFS
	}
	if u.opts.kernelPermissions {
		return 0
	}
	l, errno := n.where()
	if errno != 0 {
		return errno
	}
	var attr fuse.Attr
	if errno := n.getattr(nil, &attr); errno != 0 {
		return errno
	}
	want := mask & (unix.R_OK | unix.W_OK | unix.X_OK)
	if want&unix.W_OK != 0 && !l.upper {
		want = want&^unix.W_OK | unix.R_OK
	}
	if want&unix.X_OK != 0 && attr.Mode&unix.S_IFMT != unix.S_IFDIR {
		if attr.Mode&0o111 == 0 {
			return syscall.EACCES
		}
		want = want&^unix.X_OK | unix.R_OK
	}
	if want == 0 {
		return 0
	}
	return toErrno(unix.Faccessat(unix.AT_FDCWD, l.path(), want, unix.AT_EACCESS))
}
