package doctor

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Status is the verdict on one topic.
type Status string

const (
	OK   Status = "OK"
	Info Status = "INFO"
	Warn Status = "WARN"
	Fail Status = "FAIL"
)

// Line is one topic of the report.
type Line struct {
	Status Status `json:"status"`
	Topic  string `json:"topic"`
	Text   string `json:"text"`
	// Hint says how to fix a WARN or FAIL (or what an INFO implies).
	Hint string `json:"hint,omitempty"`
}

// Report is the judged environment.
type Report struct {
	Lines []Line `json:"checks"`
	// Driver is what `mount --driver auto` will use: "kernel", "fuse",
	// or "" when neither can mount here.
	Driver string `json:"driver"`
	// FuseMount is how a FUSE mount is made: "direct" (mount(2) as euid
	// 0) or "fusermount3"; "" when FUSE cannot mount.
	FuseMount string `json:"fuseMount,omitempty"`
	// DriverReason says why.
	DriverReason string `json:"driverReason"`
	Facts        Facts  `json:"facts"`
}

// Verdict is the one sentence the report ends with.
func (r Report) Verdict() string {
	if r.Driver == "" {
		return "mount will fail: " + r.DriverReason
	}
	return "mount --driver auto will use: " + r.Driver + " because " + r.DriverReason
}

// Failed reports whether any topic failed.
func (r Report) Failed() bool {
	for _, l := range r.Lines {
		if l.Status == Fail {
			return true
		}
	}
	return false
}

// Assess judges the facts.
func Assess(f Facts) Report {
	r := Report{Facts: f}
	add := func(s Status, topic, text, hint string) {
		r.Lines = append(r.Lines, Line{Status: s, Topic: topic, Text: text, Hint: hint})
	}
	root := f.EUID == 0
	privileged := root && f.InitialNamespace

	// Who we are.
	switch {
	case privileged && !f.SysAdmin:
		add(Warn, "identity", fmt.Sprintf("euid 0 (%s) in the initial user namespace but without CAP_SYS_ADMIN (a container?): no mounts, no trusted.* xattrs", f.UserName),
			"docker/podman: --cap-add SYS_ADMIN (with --security-opt apparmor=unconfined where AppArmor confines containers); see docs/dev-containers.md")
	case privileged:
		add(OK, "identity", fmt.Sprintf("euid 0 (%s) in the initial user namespace: privileged (real ownership, devices, trusted.* xattrs)", f.UserName), "")
	case f.InitialNamespace:
		add(Info, "identity", fmt.Sprintf("uid %d (%s), not root, initial user namespace: rootless", f.EUID, f.UserName),
			"owners and modes a plain user cannot set are kept in user.containers.override_stat and shown by the FUSE union")
	default:
		text := fmt.Sprintf("euid %d in a user namespace (uid %d, %s, outside), uid map %s", f.EUID, f.HostUID, f.HostUser, formatMap(f.UIDMap))
		if mapped(f.UIDMap) <= 1 {
			add(Warn, "identity", text+": one id mapped",
				"files owned by other ids show as nobody (65534) and cannot be chowned to; a user namespace with a full subordinate range (newuidmap, /etc/subuid) keeps real ownership")
		} else {
			add(OK, "identity", text+fmt.Sprintf(": %d ids mapped", mapped(f.UIDMap)), "")
		}
	}

	// The store.
	st := f.Store
	where := st.Path
	if !st.Exists {
		where += " (will be created)"
	}
	if st.Writable {
		add(OK, "store", fmt.Sprintf("%s on %s, writable, %s xattr namespace", where, st.Filesystem, st.Namespace), "")
	} else {
		add(Fail, "store", fmt.Sprintf("%s: cannot write in %s: %s", where, st.TestedIn, st.WritableErr),
			"name a store you can write with --store DIR or LAYERFS_STORE=DIR")
	}
	if st.Writable {
		if st.UserXattr {
			add(OK, "xattrs", "user.* xattrs work on the store's filesystem", "")
		} else {
			s := Warn
			if st.Namespace == "user" {
				s = Fail // ownership and opaque markers live there
			}
			add(s, "xattrs", "user.* xattrs refused on "+st.Filesystem+": "+st.UserXattrErr,
				"put the store on a filesystem with user xattrs (ext4, xfs, btrfs, tmpfs >= 6.6): rootless ownership and opaque dirs are kept in them")
		}
		if st.TrustedXattrTried {
			if st.TrustedXattr {
				add(OK, "xattrs", "trusted.* xattrs work on the store's filesystem", "")
			} else {
				s := Warn
				if st.Namespace == "trusted" {
					s = Fail
				}
				hint := "opaque directories of a privileged store are marked with trusted.overlay.opaque: use a local filesystem (ext4, xfs, btrfs)"
				if !f.SysAdmin {
					hint = "trusted.* xattrs need CAP_SYS_ADMIN: --cap-add SYS_ADMIN, or a store made inside a user namespace (unshare -Urm), whose markers are user.*"
				}
				add(s, "xattrs", "trusted.* xattrs refused: "+st.TrustedXattrErr, hint)
			}
		}
	}

	// Kernel overlayfs.
	mode := "overlay"
	if f.Kernel.OverlayUserXattr {
		mode = "overlay with userxattr"
	}
	if f.Kernel.OverlayOK {
		add(OK, "kernel", fmt.Sprintf("Linux %s: a trial %s mount in %s passed", f.Kernel.Release, mode, st.TestedIn), "")
	} else {
		hint := ""
		switch {
		case !root && f.InitialNamespace:
			hint = "a plain user cannot mount overlayfs; inside `unshare -Urm` (or a user namespace with a subordinate range) the kernel mounts it with userxattr. The FUSE union needs neither"
		case !f.InitialNamespace:
			hint = "kernel overlayfs in a user namespace needs Linux >= 5.11 and an upper on a filesystem that allows it (not overlayfs or FUSE)"
		case !f.SysAdmin:
			hint = "mounting needs CAP_SYS_ADMIN (--cap-add SYS_ADMIN), or a user namespace of its own (unshare -Urm, Linux >= 5.11)"
		default:
			hint = "the FUSE union is used instead"
		}
		add(Warn, "kernel", fmt.Sprintf("Linux %s: trial %s mount refused: %s", f.Kernel.Release, mode, f.Kernel.OverlayReason), hint)
	}

	// FUSE.
	fu := f.Fuse
	fuseNeeded := !f.Kernel.OverlayOK
	failOrWarn := func(needed bool) Status {
		if needed {
			return Fail
		}
		return Warn
	}
	if fu.DevFuse {
		add(OK, "fuse", "/dev/fuse opens read-write", "")
	} else {
		add(failOrWarn(fuseNeeded), "fuse", "/dev/fuse cannot be opened read-write: "+fu.DevFuseErr,
			"as root: modprobe fuse; chmod 0666 /dev/fuse (as distributions ship it); in a container: --device /dev/fuse")
	}
	switch {
	case root && f.SysAdmin:
		add(Info, "fusermount3", "not needed: as euid 0 layerfs mounts FUSE directly", "")
	case root && !f.BoundingSysAdmin:
		add(failOrWarn(fuseNeeded), "fusermount3", "euid 0 without CAP_SYS_ADMIN, and not in the bounding set either: neither a direct FUSE mount nor fusermount3 can mount",
			"give the container CAP_SYS_ADMIN (--cap-add SYS_ADMIN), or run layerfs in a user namespace of its own (unshare -Urm) where seccomp allows it")
	case fu.Fusermount == "":
		add(failOrWarn(fuseNeeded), "fusermount3", "not on PATH: a plain user cannot mount FUSE without it",
			"install fuse3 (apt-get install fuse3, dnf install fuse3)")
	case !fu.FusermountSetuid:
		add(failOrWarn(fuseNeeded), "fusermount3", fu.Fusermount+" is not setuid root",
			"chmod u+s "+fu.Fusermount+" (as root; packages install it so); inside a user namespace root's files are not root's")
	case f.NoNewPrivs:
		add(failOrWarn(fuseNeeded), "fusermount3", fu.Fusermount+" is setuid root, but no_new_privs is set: setuid gains nothing here",
			"start the container or session without no-new-privileges (--security-opt no-new-privileges sets it)")
	case !f.BoundingSysAdmin:
		add(failOrWarn(fuseNeeded), "fusermount3", fu.Fusermount+" is setuid root, but CAP_SYS_ADMIN is not in the bounding set: it cannot mount",
			"a container dropped CAP_SYS_ADMIN: --cap-add SYS_ADMIN (docker, podman)")
	default:
		add(OK, "fusermount3", fu.Fusermount+" is setuid root", "")
	}
	switch {
	case privileged:
		add(Info, "allow_other", "--allow-other works for root", "")
	case root:
		add(Info, "allow_other", "--allow-other works, but a FUSE mount made in a user namespace only answers processes inside that namespace", "")
	case fu.AllowOther:
		add(OK, "allow_other", "user_allow_other is set in /etc/fuse.conf: --allow-other works", "")
	default:
		add(Info, "allow_other", "user_allow_other is not set in /etc/fuse.conf: views are yours alone; --allow-other is refused",
			"add a line `user_allow_other` to /etc/fuse.conf (as root) to share views with other users")
	}
	switch {
	case !root:
		add(Info, "mount options", "your mounts are nosuid,nodev", "setuid bits are shown but not honoured; device nodes do not open")
	case !privileged:
		add(Info, "mount options", "mounts made in a user namespace are nodev (the kernel's rule); setuid bits only reach ids mapped in the namespace", "")
	}
	maj, min, kerr := KernelVersion(f.Kernel.Release)
	switch {
	case kerr != nil:
		add(Info, "passthrough", "unknown kernel version: "+kerr.Error(), "")
	case !AtLeast(maj, min, 6, 9):
		add(Info, "passthrough", "FUSE passthrough needs Linux >= 6.9, this is "+f.Kernel.Release, "reads and writes go through the daemon")
	case !privileged || !f.SysAdmin:
		add(Info, "passthrough", "FUSE passthrough needs root with CAP_SYS_ADMIN in the initial user namespace (the kernel answers EPERM otherwise)", "reads and writes go through the daemon: caching keeps the union fast")
	default:
		add(OK, "passthrough", "FUSE passthrough possible (root, Linux "+f.Kernel.Release+"): upper file I/O bypasses the daemon", "")
	}

	// Subordinate IDs.
	if privileged {
		add(Info, "subids", "not needed as root", "")
	} else if !f.InitialNamespace && mapped(f.UIDMap) > 1 {
		add(OK, "subids", fmt.Sprintf("already in a user namespace with %d ids mapped", mapped(f.UIDMap)), "")
	} else {
		sub := f.SubIDs
		if len(sub.SubUID) > 0 && len(sub.SubGID) > 0 {
			add(OK, "subids", fmt.Sprintf("/etc/subuid %s, /etc/subgid %s for %s", formatSub(sub.SubUID), formatSub(sub.SubGID), f.HostUser), "")
		} else {
			add(Warn, "subids", "no /etc/subuid and /etc/subgid ranges for "+f.HostUser,
				fmt.Sprintf("as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 %s (needed for a user namespace with real ownership)", f.HostUser))
		}
		switch {
		case sub.NewUIDMap == "" || sub.NewGIDMap == "":
			add(Warn, "subids", "newuidmap/newgidmap not on PATH", "install uidmap (apt-get install uidmap; shadow-utils elsewhere)")
		case !sub.NewUIDMapPrivileged || !sub.NewGIDMapPrivileged:
			add(Warn, "subids", "newuidmap/newgidmap are neither setuid root nor carry file capabilities", "reinstall uidmap, or chmod u+s "+sub.NewUIDMap+" "+sub.NewGIDMap)
		default:
			add(OK, "subids", "newuidmap and newgidmap are installed and privileged", "")
		}
	}

	r.Driver, r.FuseMount, r.DriverReason = decide(f)
	return r
}

// decide mirrors `layerfs mount --driver auto`: kernel when the trial
// mount passed, else the union when FUSE can mount.
func decide(f Facts) (driver, fuseMount, why string) {
	root := f.EUID == 0
	// fusefs mounts directly as euid 0 and falls back to fusermount3,
	// which can only mount when setuid can raise CAP_SYS_ADMIN.
	viaFusermount := f.Fuse.Fusermount != "" && f.Fuse.FusermountSetuid && f.BoundingSysAdmin && !f.NoNewPrivs
	switch {
	case f.Fuse.DevFuse && root && f.SysAdmin:
		fuseMount = "direct"
	case f.Fuse.DevFuse && viaFusermount:
		fuseMount = "fusermount3"
	}
	if f.Kernel.OverlayOK {
		mode := "overlay"
		if f.Kernel.OverlayUserXattr {
			mode = "overlay with userxattr"
		}
		return "kernel", fuseMount, "a trial " + mode + " mount on the store's filesystem passed"
	}
	refused := "the kernel refused overlayfs"
	if !root && f.InitialNamespace {
		refused = "a plain user cannot mount overlayfs"
	}
	switch fuseMount {
	case "direct":
		return "fuse", fuseMount, refused + "; the FUSE union mounts /dev/fuse directly (euid 0)"
	case "fusermount3":
		return "fuse", fuseMount, refused + "; the FUSE union mounts through setuid fusermount3"
	}
	var missing []string
	if !f.Fuse.DevFuse {
		missing = append(missing, "/dev/fuse is not usable")
	}
	switch {
	case root && f.SysAdmin:
	case f.Fuse.Fusermount == "" || !f.Fuse.FusermountSetuid:
		missing = append(missing, "no setuid fusermount3")
	case f.NoNewPrivs:
		missing = append(missing, "no_new_privs keeps setuid fusermount3 from mounting")
	case !f.BoundingSysAdmin:
		missing = append(missing, "no CAP_SYS_ADMIN for a direct mount or for setuid fusermount3")
	}
	return "", "", refused + " and FUSE cannot mount (" + strings.Join(missing, ", ") + ")"
}

func mapped(m []IDRange) uint64 {
	var n uint64
	for _, r := range m {
		n += uint64(r.Count)
	}
	return n
}

func formatMap(m []IDRange) string {
	if len(m) == 0 {
		return "(none)"
	}
	var parts []string
	for _, r := range m {
		parts = append(parts, fmt.Sprintf("%d->%d (%d)", r.Inside, r.Outside, r.Count))
	}
	return strings.Join(parts, ", ")
}

func formatSub(s []SubIDRange) string {
	var parts []string
	for _, r := range s {
		parts = append(parts, fmt.Sprintf("%d-%d", r.Start, uint64(r.Start)+uint64(r.Count)-1))
	}
	return strings.Join(parts, ",")
}

// Render writes the report as one screen of text.
func Render(w io.Writer, r Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, l := range r.Lines {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", l.Status, l.Topic, l.Text)
		if l.Hint != "" && l.Status != OK {
			fmt.Fprintf(tw, "\t\t  -> %s\n", l.Hint)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%s\n", r.Verdict())
	return err
}
