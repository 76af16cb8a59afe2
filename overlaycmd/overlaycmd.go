// Package overlaycmd is layerfs-overlay, the fuse-overlayfs-compatible
// mount program (docs/layerfs-overlay.md): it parses fuse-overlayfs's
// command line (package overlayopts), mounts the union (package fusefs) or
// kernel overlayfs, goes to the background once the mount is ready and
// serves it. Its own binary (cmd/layerfs-overlay) holds nothing else, so a
// daemon per container costs no memory for the rest of layerfs; the
// layerfs binary answers to the name too.
package overlaycmd

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/layerfs/layerfs/daemon"
	"github.com/layerfs/layerfs/doctor"
	"github.com/layerfs/layerfs/fusefs"
	"github.com/layerfs/layerfs/kernel/overlay"
	"github.com/layerfs/layerfs/overlayopts"
)

// Name is the program's name: the layerfs binary, invoked by it (a
// symlink), speaks fuse-overlayfs's command line too.
const Name = "layerfs-overlay"

const usage = `usage: layerfs-overlay [-f] [-d] -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR][,OPTION...] MOUNTPOINT
       layerfs-overlay SOURCE MOUNTPOINT -o OPTIONS     (as mount -t fuse.layerfs-overlay runs it)

A drop-in for fuse-overlayfs: mounts the layerfs union of the lower
directories (top first) with the upper and work directories, goes to the
background once the mount is ready, and is unmounted with umount or
fusermount3 -u. Without upperdir the view is read-only.

Options (fuse-overlayfs's, same meaning): lowerdir (\: escapes a colon),
upperdir, workdir, uidmapping=C:H:N[:C:H:N...], gidmapping, squash_to_root,
squash_to_uid=N, squash_to_gid=N, xattr_permissions=0|1|2, timeout=SECS,
fsync=0, volatile, noxattrs=1, redirect_dir=..., debug, ro, rw, allow_other,
suid, nosuid, dev, nodev, exec, noexec, noatime, lazytime (and the other
generic mount options). Accepted and ignored: fast_ino, threaded, writeback,
static_nlink, noacl, plugins. layerfs adds driver=fuse|kernel|auto and
passthrough=0|1.

  -f   stay in the foreground
  -d   debug: log every request, stay in the foreground
`

// Main runs layerfs-overlay with args (without the program name) and
// returns its exit status.
func Main(args []string, stderr io.Writer) int {
	c, err := overlayopts.Parse(args)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n\n%s", Name, err, usage)
		return 2
	}
	if c.Help {
		fmt.Fprint(stderr, usage)
		return 0
	}
	if c.Version {
		fmt.Fprintf(stderr, "%s (layerfs)\n", Name)
		return 0
	}
	if err := serveOverlay(c, args, stderr); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", Name, err)
		return 1
	}
	return 0
}

func serveOverlay(c *overlayopts.Command, args []string, stderr io.Writer) error {
	notifier := daemon.FromEnv()
	if !c.Foreground && notifier == nil && c.Driver != overlayopts.DriverKernel {
		// Check what can be checked before going to the background, so
		// the common mistakes are reported by the command itself.
		if err := checkDirs(c); err != nil {
			return err
		}
		if c.Options.AllowOther {
			if err := doctor.CheckAllowOther(); err != nil {
				return err
			}
		}
		if _, err := daemon.Start(args, nil, ""); err != nil {
			return doctor.WithFuseHints(err, c.Mountpoint)
		}
		return nil
	}
	level := slog.LevelWarn
	if c.Options.Debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	useKernel, why := chooseDriver(c)
	if c.Driver == overlayopts.DriverAuto {
		log.Info("driver chosen", "kernel", useKernel, "why", why)
	}
	if useKernel {
		// The kernel keeps the mount: nothing to serve. MountView, as
		// `layerfs mount` does: an upper indexed against other inodes
		// is mounted again without the index.
		res, err := overlay.MountView(c.Mountpoint, kernelOptions(c))
		if err != nil {
			err = fmt.Errorf("kernel overlay mount of %s: %w", c.Mountpoint, err)
			notifier.Fail(err)
			return err
		}
		log.Debug("kernel overlay mounted", "options", res.Options, "kernel", res.SuperOptions)
		for _, d := range res.Dropped {
			log.Warn("kernel overlay without "+d.Feature, "why", d.Reason)
		}
		notifier.Ready()
		return nil
	}
	opts := c.Options
	if os.Geteuid() == 0 {
		// As fuse-overlayfs does for root (a rootless container
		// runtime runs it as root of its user namespace): the
		// container's other users must reach their root filesystem,
		// held to its owners and modes.
		opts.AllowOther = true
	}
	opts.Logger = log
	opts.Volatile = c.Volatile
	opts.NoXattrs = c.NoXattrs
	fusefs.TuneGC() // this process now serves the union
	srv, err := fusefs.Mount(c.Mountpoint, opts)
	if err != nil {
		notifier.Fail(err)
		return err
	}
	fusefs.TuneScheduler() // after Mount: go-fuse has sized its readers
	notifier.Ready()
	daemon.ServeUntilSignal(srv, func(format string, a ...any) { log.Warn(fmt.Sprintf(format, a...)) })
	return nil
}

// chooseDriver decides between the kernel and the union for c.Driver, and
// says why.
func chooseDriver(c *overlayopts.Command) (kernel bool, why string) {
	switch c.Driver {
	case overlayopts.DriverKernel:
		return true, "driver=kernel"
	case overlayopts.DriverFuse:
		return false, "driver=fuse"
	}
	dir := c.Options.Upper
	if dir == "" {
		dir = os.TempDir()
	}
	probe := overlay.Supported(overlay.ProbeOptions{Dir: filepath.Dir(dir), Options: kernelOptions(c), LowersOnly: c.Options.Upper == ""})
	if probe.OK {
		return true, "the kernel overlay probe passed"
	}
	return false, probe.Reason
}

// kernelOptions maps the command onto kernel overlayfs with the options
// of a `layerfs mount` view (overlay.ViewOptions): redirect_dir=on and
// index=on (with nfs_export=off, so a module default of nfs_export=Y does
// not index every copy-up) where the kernel allows them, userxattr inside
// a user namespace; then the command's own mount options.
func kernelOptions(c *overlayopts.Command) overlay.Options {
	o := c.Options
	ko := overlay.ViewOptions(o.Lowers, o.Upper, o.Work, overlay.InUserNamespace())
	ko.ReadOnly = o.ReadOnly
	ko.ExtraOptions = append(ko.ExtraOptions, o.ExtraMountOptions...)
	if c.Volatile && o.Upper != "" {
		ko.ExtraOptions = append(ko.ExtraOptions, "volatile")
	}
	return ko
}

// checkDirs reports missing directories by name.
func checkDirs(c *overlayopts.Command) error {
	check := func(what, dir string) error {
		st, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("%s %s: %w", what, dir, err)
		}
		if !st.IsDir() {
			return fmt.Errorf("%s %s: not a directory", what, dir)
		}
		return nil
	}
	for _, l := range c.Options.Lowers {
		if err := check("lowerdir", l); err != nil {
			return err
		}
	}
	if c.Options.Upper != "" {
		if err := check("upperdir", c.Options.Upper); err != nil {
			return err
		}
		if err := check("workdir", c.Options.Work); err != nil {
			return err
		}
	}
	return check("mountpoint", c.Mountpoint)
}

// InvokedAs reports whether argv0 names the overlay program.
func InvokedAs(argv0 string) bool { return filepath.Base(argv0) == Name }
