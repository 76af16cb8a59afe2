package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/daemon"
	"github.com/layerfs/layerfs/doctor"
	"github.com/layerfs/layerfs/fusefs"
	"github.com/layerfs/layerfs/graph"
	"github.com/layerfs/layerfs/kernel/overlay"
	"github.com/layerfs/layerfs/whiteout"
)

func createCommand() *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "make a writable view on top of an image or layer and print its ID",
		ArgsUsage: "IMAGE|LAYER",
		Flags:     []cli.Flag{&cli.StringFlag{Name: "name", Usage: "a name for the view"}},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("create: want one IMAGE or LAYER")
			}
			s, err := openStore(c)
			if err != nil {
				return err
			}
			v, err := s.CreateView(c.Context, c.Args().First(), graph.CreateViewOptions{Name: c.String("name")})
			if err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, v.ID)
			return nil
		},
	}
}

func viewsCommand() *cli.Command {
	return &cli.Command{
		Name:  "views",
		Usage: "list the views",
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			s, err := openStore(c)
			if err != nil {
				return err
			}
			views, err := s.Views()
			if err != nil {
				return err
			}
			if c.Bool("json") {
				if views == nil {
					views = []*graph.View{}
				}
				return printJSON(c.App.Writer, views)
			}
			mounts, err := s.Mounts()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VIEW ID\tNAME\tPARENT\tMOUNTED AT\tCREATED")
			for _, v := range views {
				at := "-"
				for _, m := range mounts {
					if m.View == v.ID {
						at = m.Target
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.ID[:12], orDash(v.Name), short(v.Parent), at, v.Created.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func rmViewCommand() *cli.Command {
	return &cli.Command{
		Name:      "rm-view",
		Usage:     "remove views and their changes (refused while mounted)",
		ArgsUsage: "VIEW...",
		Action: func(c *cli.Context) error {
			s, err := openStore(c)
			if err != nil {
				return err
			}
			return eachArg(c, "rm-view", func(ref string) (string, error) {
				v, err := s.DeleteView(c.Context, ref)
				if err != nil {
					return "", err
				}
				return v.ID, nil
			})
		},
	}
}

func mountCommand() *cli.Command {
	return &cli.Command{
		Name:  "mount",
		Usage: "mount a view (an image or layer gets a fresh view) with the best driver available",
		Description: `With --driver auto (the default) the kernel overlay driver is used when a
real trial mount passes, the FUSE union otherwise; which one is said on
stderr. The union daemon goes to the background once the mount is ready.
--tmp makes a throwaway view in a new temp dir, prints the dir, and removes
both at umount.`,
		ArgsUsage: "IMAGE|LAYER|VIEW [TARGET]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "driver", Value: "auto", Usage: "auto, kernel or fuse"},
			&cli.BoolFlag{Name: "ro", Usage: "read-only mount of the image or layer (no view)"},
			&cli.BoolFlag{Name: "foreground", Usage: "serve the union in this process until unmounted"},
			&cli.BoolFlag{Name: "tmp", Usage: "throwaway view in a new temp dir (prints its path)"},
			&cli.StringFlag{Name: "name", Usage: "name of the view created for an image or layer"},
			&cli.BoolFlag{Name: "temporary", Hidden: true},
			&cli.BoolFlag{Name: "allow-other", Usage: "let other users use the view, held to the owners and modes it shows (a plain user needs user_allow_other in /etc/fuse.conf)"},
		},
		Action: mountAction,
	}
}

// mountPlan is what to mount where.
type mountPlan struct {
	target string
	view   *graph.View
	layer  string
	dirs   graph.ViewDirs
	ro     bool
	temp   bool
}

func mountAction(c *cli.Context) error {
	tmp := c.Bool("tmp")
	if n := c.NArg(); n < 1 || n > 2 || tmp && n != 1 || !tmp && n != 2 {
		return fmt.Errorf("mount: want IMAGE|LAYER|VIEW TARGET (or --tmp IMAGE|LAYER|VIEW)")
	}
	driver := c.String("driver")
	switch driver {
	case "auto", "kernel", "fuse":
	default:
		return fmt.Errorf("mount: --driver %s: want auto, kernel or fuse", driver)
	}
	s, err := openStore(c)
	if err != nil {
		return err
	}
	ref := c.Args().First()
	p := mountPlan{ro: c.Bool("ro"), temp: tmp || c.Bool("temporary")}
	if tmp {
		if p.target, err = os.MkdirTemp("", "layerfs-view-"); err != nil {
			return fmt.Errorf("mount --tmp: %w", err)
		}
	} else if p.target, err = filepath.Abs(c.Args().Get(1)); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	fail := func(err error) error {
		if tmp {
			os.Remove(p.target)
		}
		return err
	}
	if st, err := os.Stat(p.target); err != nil || !st.IsDir() {
		return fail(fmt.Errorf("mount: target %s is not a directory", p.target))
	}
	if m, err := s.FindMount(p.target); err == nil && m.State != graph.StateUnmounted {
		return fail(fmt.Errorf("mount: %s is already a layerfs mount (%s); layerfs umount it first", p.target, m.State))
	}
	if err := p.resolve(c, s, ref); err != nil {
		return fail(err)
	}
	if c.Bool("allow-other") {
		if err := doctor.CheckAllowOther(); err != nil {
			return fail(p.undo(c, s, err))
		}
	}
	useKernel, why := chooseViewDriver(s, driver, p)
	if !c.Bool("foreground") && daemon.FromEnv() == nil {
		if useKernel {
			fmt.Fprintf(c.App.ErrWriter, "layerfs: using the kernel overlay driver (%s)\n", why)
		} else {
			fmt.Fprintf(c.App.ErrWriter, "layerfs: using the FUSE union driver (%s)\n", why)
		}
	}
	if useKernel {
		err := mountKernel(c, s, p)
		if err == nil {
			fmt.Fprintln(c.App.Writer, p.target)
			return nil
		}
		if driver != "auto" {
			return fail(p.undo(c, s, err))
		}
		// The probe stacks two lowers; a real mount can still be refused
		// (one lower without an upper, say): auto then means the union.
		fmt.Fprintf(c.App.ErrWriter, "layerfs: the kernel refused the mount (%v); using the FUSE union driver\n", err)
	}
	if err := mountFuse(c, s, p); err != nil {
		return fail(err)
	}
	return nil
}

// resolve finds or creates the view (or, read-only, the layer) to mount.
func (p *mountPlan) resolve(c *cli.Context, s *graph.Store, ref string) error {
	if v, err := s.View(ref); err == nil {
		p.view = v
		d, err := s.Dirs(v)
		if err != nil {
			return err
		}
		p.dirs = d
		if p.ro {
			// Read-only, the upper is a lower: nothing reads the
			// work dir, so first link in the names a kernel mount
			// left in its index, as a writable mount does.
			settleView(c, s, v.ID)
			p.dirs = d.ReadOnly()
		}
		return nil
	}
	layer, _, err := s.ResolveBase(ref)
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	if p.ro {
		p.layer = layer.String()
		p.dirs, err = s.LayerDirs(layer)
		return err
	}
	v, err := s.CreateView(c.Context, ref, graph.CreateViewOptions{Name: c.String("name"), Temporary: p.temp})
	if err != nil {
		return err
	}
	p.view = v
	p.dirs, err = s.Dirs(v)
	return err
}

// undo removes what a failed mount made: a temporary view.
func (p *mountPlan) undo(c *cli.Context, s *graph.Store, err error) error {
	if p.view != nil && p.temp {
		s.DeleteView(c.Context, p.view.ID)
	}
	return err
}

func (p *mountPlan) record(s *graph.Store, driver string, pid int) graph.Mount {
	m := graph.Mount{Target: p.target, Driver: driver, PID: pid, ReadOnly: p.ro, Temporary: p.temp, Started: time.Now().UTC()}
	if p.view != nil {
		m.View, m.Layer = p.view.ID, p.view.Parent
	} else {
		m.Layer = digestOf(p.layer)
	}
	return m
}

// chooseViewDriver applies --driver; auto probes the kernel with a real
// trial mount on the store's filesystem.
func chooseViewDriver(s *graph.Store, driver string, p mountPlan) (kernel bool, why string) {
	switch driver {
	case "kernel":
		return true, "--driver kernel"
	case "fuse":
		return false, "--driver fuse"
	}
	if os.Getenv("LAYERFS_KERNEL_PROBE") == "fail" {
		// Lets tests exercise the fallback where the kernel would work.
		return false, "kernel probe forced to fail by LAYERFS_KERNEL_PROBE=fail"
	}
	probe := overlay.Supported(overlay.ProbeOptions{Dir: filepath.Join(s.Root(), "tmp"), Options: kernelViewOptions(s, p), LowersOnly: p.dirs.Upper == ""})
	if probe.OK {
		return true, "kernel overlay probe passed"
	}
	return false, "kernel overlay refused: " + probe.Reason
}

// kernelViewOptions are the kernel overlay options of a view mount
// (overlay.ViewOptions): redirect_dir=on and index=on where the kernel
// allows them, userxattr inside a user namespace or for a store whose
// markers are user.* xattrs. The union reads what these options make the
// kernel write (fusefs: "What the union reads").
func kernelViewOptions(s *graph.Store, p mountPlan) overlay.Options {
	userns := overlay.InUserNamespace() || s.Namespace() == whiteout.User
	o := overlay.ViewOptions(p.dirs.Lowers, p.dirs.Upper, p.dirs.Work, userns)
	o.ReadOnly = p.ro
	return o
}

// mountKernel mounts a view with kernel overlayfs and records the mount
// with the options in effect and the features the kernel went without.
func mountKernel(c *cli.Context, s *graph.Store, p mountPlan) error {
	res, err := overlay.MountView(p.target, kernelViewOptions(s, p))
	if err != nil {
		return fmt.Errorf("mount %s: %w", p.target, err)
	}
	m := p.record(s, "kernel", 0)
	m.KernelOptions = res.SuperOptions
	for _, d := range res.Dropped {
		m.Dropped = append(m.Dropped, d.String())
		fmt.Fprintf(c.App.ErrWriter, "layerfs: kernel overlay without %s\n", d)
	}
	if err := s.AddMount(m); err != nil {
		overlay.Unmount(p.target, true)
		return err
	}
	return nil
}

// settleView runs adoptKernelIndex on the view ref names, if it names one;
// a failure only leaves some names of a hardlink group with the lower's
// data in the upper, so it is a warning.
func settleView(c *cli.Context, s *graph.Store, ref string) {
	v, err := s.View(ref)
	if err != nil {
		return // the command itself says what is wrong with ref
	}
	if err := adoptKernelIndex(c, s, v); err != nil {
		fmt.Fprintf(c.App.ErrWriter, "layerfs: warning: view %s: cannot read the kernel overlay index: %v\n", v.ID[:12], err)
	}
}

// adoptKernelIndex makes a view's upper describe the view alone after the
// kernel driver mounted it with index=on (see fusefs.AdoptKernelIndex), so
// that diff and commit, which read the upper, see every name of a copied-up
// hardlink group. A view mounted right now is left alone.
func adoptKernelIndex(c *cli.Context, s *graph.Store, v *graph.View) error {
	mounts, err := s.Mounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if m.View == v.ID && m.State != graph.StateUnmounted {
			return nil
		}
	}
	d, err := s.Dirs(v)
	if err != nil {
		return err
	}
	return fusefs.AdoptKernelIndex(fusefs.Options{Lowers: d.Lowers, Upper: d.Upper, Work: d.Work,
		XattrNamespace: s.Namespace(), Logger: logger(c)})
}

// kernelIndexReader reads, without writing, the hardlink index of a view
// the kernel driver has mounted right now (fusefs.KernelIndexNames), for
// diff and commit --keep: adoptKernelIndex must leave such a view alone.
func kernelIndexReader(c *cli.Context, s *graph.Store) graph.KernelIndexFunc {
	return func(_ context.Context, d graph.ViewDirs) (map[string]string, error) {
		return fusefs.KernelIndexNames(fusefs.Options{Lowers: d.Lowers, Upper: d.Upper, Work: d.Work,
			XattrNamespace: s.Namespace(), Logger: logger(c)})
	}
}

// mountFuse starts the union daemon (re-executing this command in the
// foreground) or, in the foreground or the daemon itself, serves it.
func mountFuse(c *cli.Context, s *graph.Store, p mountPlan) error {
	notifier := daemon.FromEnv()
	if !c.Bool("foreground") && notifier == nil {
		args := []string{"--store", s.Root()}
		if c.Bool("debug") {
			args = append(args, "--debug")
		}
		ref := p.layer
		if p.view != nil {
			ref = p.view.ID
		}
		args = append(args, "mount", "--foreground", "--driver", "fuse", ref, p.target)
		if p.ro {
			args = append(args, "--ro")
		}
		if p.temp {
			args = append(args, "--temporary")
		}
		if c.Bool("allow-other") {
			args = append(args, "--allow-other")
		}
		logPath, err := s.MountLogPath(p.target)
		if err != nil {
			return p.undo(c, s, err)
		}
		if _, err := daemon.Start(args, nil, logPath); err != nil {
			if !strings.Contains(err.Error(), p.target) {
				err = fmt.Errorf("mount %s: %w", p.target, err)
			}
			return p.undo(c, s, doctor.WithFuseHints(err, p.target))
		}
		fmt.Fprintln(c.App.Writer, p.target)
		return nil
	}
	opts := fusefs.Options{
		Lowers:           p.dirs.Lowers,
		Upper:            p.dirs.Upper,
		Work:             p.dirs.Work,
		LowerOwnerTables: p.dirs.LowerOwnerTables,
		UpperOwnerTable:  p.dirs.UpperOwnerTable,
		ReadOnly:         p.ro,
		XattrNamespace:   s.Namespace(),
		FsName:           "layerfs",
		Debug:            c.Bool("debug"),
		Logger:           logger(c),
		AllowOther:       c.Bool("allow-other"),
	}
	if os.Geteuid() != 0 {
		// Rootless mounts never honour setuid bits or device nodes.
		opts.ExtraMountOptions = append(opts.ExtraMountOptions, "nosuid", "nodev")
	}
	fusefs.TuneGC() // this process now serves the union
	srv, err := fusefs.Mount(p.target, opts)
	if err != nil {
		err = fmt.Errorf("mount %s: %w", p.target, err)
		notifier.Fail(err)
		return err
	}
	fusefs.TuneScheduler() // after Mount: go-fuse has sized its readers
	if err := s.AddMount(p.record(s, "fuse", os.Getpid())); err != nil {
		srv.Unmount()
		notifier.Fail(err)
		return err
	}
	notifier.Ready()
	if notifier == nil {
		fmt.Fprintln(c.App.Writer, p.target)
	}
	log := logger(c)
	daemon.ServeUntilSignal(srv, func(format string, a ...any) { log.Warn(fmt.Sprintf(format, a...)) })
	forgetMount(c, s, p.target)
	return nil
}

// forgetMount drops a mount's table entry, and a temporary mount's view and
// directory with it. Both the daemon (on its way out) and umount call it.
func forgetMount(c *cli.Context, s *graph.Store, target string) {
	m, err := s.FindMount(target)
	if err != nil {
		return
	}
	s.RemoveMount(target)
	if m.Temporary {
		if m.View != "" {
			if _, err := s.DeleteView(c.Context, m.View); err != nil && !errors.Is(err, graph.ErrNotFound) {
				logger(c).Warn("cannot remove temporary view", "view", m.View, "err", err)
			}
		}
		os.Remove(target)
	}
}

func umountCommand() *cli.Command {
	return &cli.Command{
		Name:      "umount",
		Usage:     "unmount a layerfs mount (also one whose daemon died)",
		ArgsUsage: "TARGET|VIEW",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "lazy", Aliases: []string{"l"}, Usage: "detach now, clean up once no longer busy"}},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("umount: want one TARGET or VIEW")
			}
			s, err := openStore(c)
			if err != nil {
				return err
			}
			m, err := s.FindMount(c.Args().First())
			if err != nil {
				return fmt.Errorf("umount: %w", err)
			}
			if m.State != graph.StateUnmounted {
				if err := unmount(m, c.Bool("lazy")); err != nil {
					return fmt.Errorf("umount %s: %w", m.Target, err)
				}
			}
			waitExit(m.PID, 5*time.Second)
			forgetMount(c, s, m.Target)
			if m.Driver == "kernel" && m.View != "" && !m.ReadOnly && !m.Temporary {
				settleView(c, s, m.View)
			}
			return nil
		},
	}
}

// unmount detaches a mount: directly as root, through fusermount3 for a
// user's FUSE mount.
func unmount(m *graph.Mount, lazy bool) error {
	flags := 0
	if lazy {
		flags = unix.MNT_DETACH
	}
	err := unix.Unmount(m.Target, flags)
	if errors.Is(err, unix.EPERM) && m.Driver == "fuse" {
		args := []string{"-u"}
		if lazy {
			args = append(args, "-z")
		}
		out, ferr := exec.Command("fusermount3", append(args, m.Target)...).CombinedOutput()
		if ferr != nil {
			msg := strings.TrimSpace(string(out))
			if strings.Contains(msg, "busy") {
				return fmt.Errorf("target is busy: a process has a file open or its working directory there (close it, or umount --lazy)")
			}
			return fmt.Errorf("fusermount3 -u: %v: %s", ferr, msg)
		}
		return nil
	}
	switch {
	case err == nil, errors.Is(err, unix.EINVAL):
		return nil // EINVAL: not a mount point any more
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("target is busy: a process has a file open or its working directory there (close it, or umount --lazy)")
	}
	return err
}

// waitExit waits for a daemon to exit after its mount went away.
func waitExit(pid int, limit time.Duration) {
	if pid <= 0 {
		return
	}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if unix.Kill(pid, 0) != nil || exited(pid) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// exited reports whether pid has exited and waits to be reaped (a zombie):
// the daemon's parent is gone, and whoever adopted it (init, a container's
// pid 1, a subreaper) may take its time to reap it.
func exited(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// "pid (comm) S ...": the state follows the last ')'.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	return stat[i+2] == 'Z' || stat[i+2] == 'X'
}

func mountsCommand() *cli.Command {
	return &cli.Command{
		Name:  "mounts",
		Usage: "list layerfs mounts, noticing those whose daemon died",
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			s, err := openStore(c)
			if err != nil {
				return err
			}
			mounts, err := s.Mounts()
			if err != nil {
				return err
			}
			if c.Bool("json") {
				if mounts == nil {
					mounts = []graph.Mount{}
				}
				return printJSON(c.App.Writer, mounts)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TARGET\tVIEW\tDRIVER\tPID\tSTATE")
			for _, m := range mounts {
				view := "(read-only " + short(m.Layer) + ")"
				if m.View != "" {
					view = m.View[:12]
				}
				state := m.State
				if state == graph.StateDead {
					state = "dead: daemon gone, run layerfs umount"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", m.Target, view, m.Driver, m.PID, state)
			}
			return tw.Flush()
		},
	}
}

func digestOf(s string) digest.Digest { return digest.Digest(s) }

func diffCommand() *cli.Command {
	return &cli.Command{
		Name:      "diff",
		Usage:     "list a view's changes as A (added), C (changed) and D (deleted) lines",
		ArgsUsage: "VIEW",
		Flags:     []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("diff: want one VIEW")
			}
			s, err := openStore(c)
			if err != nil {
				return err
			}
			settleView(c, s, c.Args().First())
			_, list, err := s.DiffWithOptions(c.Context, c.Args().First(), graph.DiffOptions{KernelIndex: kernelIndexReader(c, s)})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				type change struct {
					Kind string `json:"kind"`
					Path string `json:"path"`
				}
				out := []change{}
				for _, ch := range list {
					out = append(out, change{string(ch.Kind), ch.Path})
				}
				return printJSON(c.App.Writer, out)
			}
			for _, ch := range list {
				fmt.Fprintln(c.App.Writer, ch)
			}
			return nil
		},
	}
}

func commitCommand() *cli.Command {
	return &cli.Command{
		Name:  "commit",
		Usage: "register a view's changes as a new layer on its layer and print the chain ID",
		Description: `The view then sits on the new layer with an empty upper (--keep leaves it as
it was). A mounted view can be committed with --keep: its upper is read in
place and the commit only stands if nothing changed while it was read (it
starts over otherwise), so the layer is the upper as it was at one instant.`,
		ArgsUsage: "VIEW",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "name", Usage: "also record an image NAME:TAG with the new layer on top"},
			&cli.StringFlag{Name: "message", Aliases: []string{"m"}, Usage: "history comment of the image"},
			&cli.BoolFlag{Name: "keep", Usage: "leave the view's upper as it is"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("commit: want one VIEW")
			}
			s, err := openStore(c)
			if err != nil {
				return err
			}
			settleView(c, s, c.Args().First())
			l, img, err := s.Commit(c.Context, c.Args().First(), graph.CommitOptions{
				Name: c.String("name"), Message: c.String("message"), Keep: c.Bool("keep"),
				KernelIndex: kernelIndexReader(c, s)})
			if err != nil {
				return err
			}
			if img != nil {
				fmt.Fprintf(c.App.ErrWriter, "image %s: %s\n", img.Names[0], img.ID)
			}
			fmt.Fprintln(c.App.Writer, l.ChainID)
			return nil
		},
	}
}
