package doctor

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// FuseBlockers says what keeps this process from making a FUSE mount on
// target, in words a user can act on: for the error of a failed mount.
// It probes only what is cheap (no trial mount); nil when it finds nothing.
func FuseBlockers(target string) []string {
	f := Facts{EUID: os.Geteuid(), Fuse: gatherFuse()}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		if ps, err := ParseProcStatus(string(b)); err == nil {
			f.SysAdmin, f.BoundingSysAdmin, f.NoNewPrivs = SysAdmin(ps.CapEff), SysAdmin(ps.CapBnd), ps.NoNewPrivs
		}
	}
	if p, err := exec.LookPath("fusermount3"); err == nil {
		f.Fuse.Fusermount, f.Fuse.FusermountSetuid = p, setuidRoot(p)
	}
	mp := mountPoint{writable: unix.Access(target, unix.W_OK) == nil}
	var st unix.Stat_t
	if unix.Stat(target, &st) == nil {
		mp.stickyNotOwned = st.Mode&unix.S_ISVTX != 0 && int(st.Uid) != os.Getuid()
	}
	return fuseBlockers(f, target, mp)
}

// mountPoint is what fusermount3 checks of a mount point.
type mountPoint struct {
	writable bool
	// stickyNotOwned: a sticky directory (like /tmp itself) owned by
	// someone else, which fusermount3 refuses even when writable.
	stickyNotOwned bool
}

func fuseBlockers(f Facts, target string, mp mountPoint) []string {
	var out []string
	if !f.Fuse.DevFuse {
		out = append(out, "/dev/fuse cannot be opened read-write ("+f.Fuse.DevFuseErr+"): as root, modprobe fuse and chmod 0666 /dev/fuse; in a container, --device /dev/fuse")
	}
	if f.EUID == 0 && f.SysAdmin {
		return out
	}
	switch {
	case f.Fuse.Fusermount == "":
		out = append(out, "fusermount3 is not on PATH: install fuse3")
	case !f.Fuse.FusermountSetuid:
		out = append(out, f.Fuse.Fusermount+" is not setuid root (chmod u+s as root; inside a user namespace root's setuid programs do not work)")
	case f.NoNewPrivs:
		out = append(out, "no_new_privs is set, so setuid fusermount3 gains nothing (no-new-privileges container or session)")
	case !f.BoundingSysAdmin:
		out = append(out, "CAP_SYS_ADMIN is not in the bounding set, so setuid fusermount3 cannot mount (a container without --cap-add SYS_ADMIN)")
	}
	switch {
	case f.EUID == 0:
	case !mp.writable:
		out = append(out, "you cannot write to the mount point "+target+": fusermount3 mounts only on directories the user may write to (uid "+strconv.Itoa(f.EUID)+")")
	case mp.stickyNotOwned:
		out = append(out, "the mount point "+target+" is not owned by you: fusermount3 refuses a sticky directory (like /tmp itself) that another user owns; mount on a directory of your own")
	}
	return out
}

// WithFuseHints adds to a failed FUSE mount at target what FuseBlockers
// finds in the way (no /dev/fuse, no setuid fusermount3, a mount point the
// user cannot write, no CAP_SYS_ADMIN in a container).
func WithFuseHints(err error, target string) error {
	hints := FuseBlockers(target)
	if len(hints) == 0 {
		return err
	}
	return fmt.Errorf("%w\n  because: %s\n  (layerfs doctor tells more)", err, strings.Join(hints, "\n  because: "))
}

// CheckAllowOther refuses allow_other up front where fusermount3 would: a
// plain user may share a FUSE mount only when /etc/fuse.conf says
// user_allow_other. Root, and root of a user namespace (which mounts FUSE
// itself), need nothing.
func CheckAllowOther() error {
	if os.Geteuid() == 0 {
		return nil
	}
	if data, err := os.ReadFile("/etc/fuse.conf"); err == nil && FuseConfAllowsOther(string(data)) {
		return nil
	}
	return errors.New("allow other users: fusermount3 lets a plain user share a mount only when /etc/fuse.conf holds the line user_allow_other; add it as root, or leave the view yours alone (without --allow-other)")
}
