// Package overlayopts parses the command line of fuse-overlayfs, which
// container tools (containers/storage's mount_program, moby's
// fuse-overlayfs driver, containerd through mount.fuse3) speak, into a
// union mount's options. Both argv forms are accepted:
//
//	layerfs-overlay [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W[,...] MOUNTPOINT
//	layerfs-overlay SOURCE MOUNTPOINT -o OPTIONS      (what mount.fuse3 runs)
//
// Every option fuse-overlayfs takes is accepted with the same meaning, or
// is documented here as accepted and ignored where layerfs has no use for
// it; anything else is refused with an error naming it.
package overlayopts

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/layerfs/layerfs/fusefs"
)

// Driver names which implementation mounts the view.
type Driver string

const (
	// DriverFuse is the userspace union (the default, as fuse-overlayfs).
	DriverFuse Driver = "fuse"
	// DriverKernel mounts kernel overlayfs with the same directories.
	DriverKernel Driver = "kernel"
	// DriverAuto uses the kernel where its probe passes, else the union.
	DriverAuto Driver = "auto"
)

// Command is a parsed command line.
type Command struct {
	Mountpoint string
	// Source is the first argument of the mount.fuse3 form (fuse-overlayfs
	// ignores it; so do we, beyond showing it as the fsname).
	Source     string
	Foreground bool
	Driver     Driver
	// Volatile: fsync and syncfs do nothing (fsync=0 or volatile).
	Volatile bool
	// NoXattrs: the view has no extended attributes (noxattrs=1).
	NoXattrs bool
	Options  fusefs.Options
	// Ignored lists options accepted for compatibility that change nothing.
	Ignored []string
	Help    bool
	Version bool
}

// Parse reads args (without the program name).
func Parse(args []string) (*Command, error) {
	c := &Command{Driver: DriverFuse}
	var positional, opts []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-o":
			if i+1 >= len(args) {
				return nil, fmt.Errorf("-o needs a value")
			}
			opts = append(opts, args[i+1])
			i++
		case strings.HasPrefix(a, "-o"):
			opts = append(opts, a[2:])
		case a == "-f":
			c.Foreground = true
		case a == "-d" || a == "--debug":
			c.Foreground = true
			c.Options.Debug = true
		case a == "-h" || a == "--help":
			c.Help = true
		case a == "-V" || a == "--version":
			c.Version = true
		case a == "--":
			positional = append(positional, args[i+1:]...)
			i = len(args)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			return nil, fmt.Errorf("unknown flag %q", a)
		default:
			positional = append(positional, a)
		}
	}
	if c.Help || c.Version {
		return c, nil
	}
	switch len(positional) {
	case 1:
		c.Mountpoint = positional[0]
	case 2:
		c.Source, c.Mountpoint = positional[0], positional[1]
	default:
		return nil, fmt.Errorf("want MOUNTPOINT (or SOURCE MOUNTPOINT), got %d arguments", len(positional))
	}
	for _, o := range opts {
		for _, kv := range splitEscaped(o, ',') {
			if kv == "" {
				continue
			}
			if err := c.apply(kv); err != nil {
				return nil, err
			}
		}
	}
	if len(c.Options.Lowers) == 0 {
		return nil, fmt.Errorf("no lowerdir given (-o lowerdir=DIR[:DIR...])")
	}
	if (c.Options.Upper == "") != (c.Options.Work == "") {
		return nil, fmt.Errorf("upperdir and workdir must be given together")
	}
	if c.Source != "" && c.Options.FsName == "" {
		c.Options.FsName = c.Source
	}
	return c, nil
}

func (c *Command) apply(kv string) error {
	key, value, hasValue := strings.Cut(kv, "=")
	needValue := func() error {
		if !hasValue || value == "" {
			return fmt.Errorf("option %s needs a value", key)
		}
		return nil
	}
	boolValue := func() (bool, error) {
		if !hasValue {
			return true, nil
		}
		switch value {
		case "1", "true", "yes", "on":
			return true, nil
		case "0", "false", "no", "off":
			return false, nil
		}
		return false, fmt.Errorf("option %s=%s: want 0 or 1", key, value)
	}
	o := &c.Options
	switch key {
	case "lowerdir":
		if err := needValue(); err != nil {
			return err
		}
		for _, d := range splitEscaped(value, ':') {
			if d == "" {
				return fmt.Errorf("lowerdir=%s has an empty entry", value)
			}
			o.Lowers = append(o.Lowers, unescape(d))
		}
	case "upperdir":
		if err := needValue(); err != nil {
			return err
		}
		o.Upper = unescape(value)
	case "workdir":
		if err := needValue(); err != nil {
			return err
		}
		o.Work = unescape(value)
	case "uidmapping", "gidmapping":
		if err := needValue(); err != nil {
			return err
		}
		m, err := parseMapping(value)
		if err != nil {
			return fmt.Errorf("option %s: %w", key, err)
		}
		if key == "uidmapping" {
			o.UIDMap = append(o.UIDMap, m...)
		} else {
			o.GIDMap = append(o.GIDMap, m...)
		}
	case "squash_to_root":
		zero := uint32(0)
		o.SquashUID, o.SquashGID = &zero, &zero
	case "squash_to_uid", "squash_to_gid":
		if err := needValue(); err != nil {
			return err
		}
		n, err := strconv.ParseUint(value, 10, 32)
		if err != nil {
			return fmt.Errorf("option %s=%s: not an id", key, value)
		}
		id := uint32(n)
		if key == "squash_to_uid" {
			o.SquashUID = &id
		} else {
			o.SquashGID = &id
		}
	case "xattr_permissions":
		// fuse-overlayfs: 0 off, 1 privileged, 2 user.containers.override_stat.
		// layerfs always presents user.containers.override_stat where a
		// file has it, so every value is accepted.
		switch value {
		case "0", "1", "2":
		default:
			return fmt.Errorf("option xattr_permissions=%s: want 0, 1 or 2", value)
		}
	case "timeout":
		if err := needValue(); err != nil {
			return err
		}
		secs, err := strconv.ParseFloat(value, 64)
		if err != nil || secs < 0 {
			return fmt.Errorf("option timeout=%s: want seconds", value)
		}
		o.Timeout = time.Duration(secs * float64(time.Second))
		if o.Timeout == 0 {
			// fuse-overlayfs's timeout=0 means no caching; keep it tiny.
			o.Timeout = time.Nanosecond
		}
	case "fsync":
		on, err := boolValue()
		if err != nil {
			return err
		}
		c.Volatile = !on
	case "volatile":
		c.Volatile = true
	case "noxattrs":
		on, err := boolValue()
		if err != nil {
			return err
		}
		c.NoXattrs = on
	case "redirect_dir":
		// Lower-directory renames always work in layerfs (it writes
		// overlayfs's redirect xattr); every value is accepted.
	case "debug":
		o.Debug = true
	case "ro":
		o.ReadOnly = true
	case "rw":
		o.ReadOnly = false
	case "allow_other":
		o.AllowOther = true
	case "passthrough":
		// layerfs's own: FUSE passthrough (on by default where the
		// kernel and privileges allow it).
		on, err := boolValue()
		if err != nil {
			return err
		}
		o.NoPassthrough = !on
	case "layerfs_driver", "driver":
		switch Driver(value) {
		case DriverFuse, DriverKernel, DriverAuto:
			c.Driver = Driver(value)
		default:
			return fmt.Errorf("option %s=%s: want fuse, kernel or auto", key, value)
		}
	case "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime",
		"relatime", "norelatime", "strictatime", "nostrictatime", "lazytime", "nolazytime",
		"diratime", "nodiratime", "sync", "async", "dirsync", "context", "fscontext",
		"defcontext", "rootcontext":
		o.ExtraMountOptions = append(o.ExtraMountOptions, kv)
	case "fsname":
		if err := needValue(); err != nil {
			return err
		}
		o.FsName = unescape(value)
	case "fast_ino", "threaded", "writeback", "static_nlink", "noacl", "plugins",
		"default_permissions", "max_write", "max_read", "subtype", "auto_unmount",
		"nonempty", "noauto", "auto", "user", "nouser", "users", "_netdev", "nofail", "defaults":
		// Accepted for compatibility: layerfs is always threaded, checks
		// permissions like the kernel, and reads st_nlink from the lowers;
		// mount(8) bookkeeping options mean nothing to the daemon.
		c.Ignored = append(c.Ignored, key)
	default:
		return fmt.Errorf("unknown option %q", kv)
	}
	return nil
}

// parseMapping reads fuse-overlayfs's CONTAINER:HOST:SIZE[:CONTAINER:HOST:SIZE...].
func parseMapping(v string) ([]fusefs.IDMap, error) {
	f := strings.Split(v, ":")
	if len(f)%3 != 0 {
		return nil, fmt.Errorf("%q: want CONTAINER:HOST:SIZE triples", v)
	}
	var out []fusefs.IDMap
	for i := 0; i < len(f); i += 3 {
		var n [3]uint32
		for j := 0; j < 3; j++ {
			x, err := strconv.ParseUint(f[i+j], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("%q: %q is not a number", v, f[i+j])
			}
			n[j] = uint32(x)
		}
		if n[2] == 0 {
			return nil, fmt.Errorf("%q: a range of size 0", v)
		}
		out = append(out, fusefs.IDMap{ContainerID: n[0], HostID: n[1], Size: n[2]})
	}
	return out, nil
}

// splitEscaped splits s at sep, except where sep is escaped with a
// backslash. Escapes are kept: a part may be split again (options at ',',
// then lowerdir at ':'); unescape the final values.
func splitEscaped(s string, sep byte) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s):
			cur.WriteByte('\\')
			cur.WriteByte(s[i+1])
			i++
		case s[i] == sep:
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(s[i])
		}
	}
	return append(parts, cur.String())
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
