// Package viewtest gives a Go test a fresh writable view of an image, a
// layer or plain directories in one call, mounted with the driver the
// environment allows, and unmounts and removes it when the test ends:
//
//	func TestBuild(t *testing.T) {
//		v := viewtest.New(t, viewtest.Image(store, "demo:1"))
//		runBuild(t, v.Path) // reads and writes the view
//		changes, err := v.Diff(context.Background())
//		...
//	}
//
// The driver: kernel overlayfs where a real trial mount passes (real root,
// or a user and mount namespace of the test's own), with the options
// `layerfs mount` uses (overlay.ViewOptions: redirect_dir=on and index=on
// where the kernel has them), and the layerfs union (fusefs) served from
// the test process otherwise, which needs only /dev/fuse and fusermount3.
// The Driver option forces one; so does LAYERFS_VIEWTEST_DRIVER=kernel|fuse
// in the environment, to run a whole suite under each driver in turn.
//
// The cleanup, registered with t.Cleanup before anything is mounted, runs
// whether the test passed or failed: it unmounts (lazily when a process
// still has a file open or its working directory in the view), removes the
// store view (Image and Layer sources) and the temporary directories
// (mount point, and upper and work dir for a Dirs source). A view it
// cannot unmount at all is reported as a test error and its directories
// are left alone, so nothing is ever deleted through a live mount.
//
// Views made from a store are ordinary store views (graph.CreateView,
// marked temporary) but not entries of the store's mount table: `layerfs
// mounts` does not list them, and only the test's cleanup unmounts them.
package viewtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/layerfs/layerfs/changes"
	"github.com/layerfs/layerfs/fusefs"
	"github.com/layerfs/layerfs/graph"
	"github.com/layerfs/layerfs/kernel/overlay"
	"github.com/layerfs/layerfs/whiteout"
)

// The drivers a view can be mounted with.
const (
	Kernel = "kernel" // kernel overlayfs
	Fuse   = "fuse"   // the layerfs union (fusefs), served in-process
	Auto   = "auto"   // Kernel where a trial mount passes, Fuse otherwise
)

// DriverEnv names the environment variable that forces the driver of every
// view whose test did not pass the Driver option.
const DriverEnv = "LAYERFS_VIEWTEST_DRIVER"

// Source is what a view is made of: see Image, Layer and Dirs.
type Source struct {
	store  *graph.Store
	ref    string // image reference or layer ID
	layer  bool
	lowers []string
}

// Image is a view of an image of store, by name (NAME:TAG) or ID.
func Image(store *graph.Store, ref string) Source { return Source{store: store, ref: ref} }

// Layer is a view of a layer of store (its chain) by chain ID or prefix.
func Layer(store *graph.Store, id string) Source { return Source{store: store, ref: id, layer: true} }

// Dirs is a view of plain directories stacked as lower layers, top first;
// they may hold whiteouts and opaque markers in any format the union
// reads (the kernel driver reads the overlay-native ones).
func Dirs(lowers ...string) Source { return Source{lowers: lowers} }

func (s Source) String() string {
	switch {
	case s.store == nil:
		return fmt.Sprintf("dirs %v", s.lowers)
	case s.layer:
		return "layer " + s.ref
	}
	return "image " + s.ref
}

// Option tunes New.
type Option func(*config)

type config struct {
	driver string
	logger *slog.Logger
}

// Driver forces the driver: Kernel, Fuse or Auto (the default). A forced
// driver that cannot mount here fails the test.
func Driver(name string) Option { return func(c *config) { c.driver = name } }

// Logger receives the union's log lines (fuse driver; default: discarded).
func Logger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// View is a mounted writable view.
type View struct {
	// Path is the mount point: the view's root.
	Path string
	// Driver is Kernel or Fuse: what the view is mounted with.
	Driver string
	// Why says how the driver was chosen (forced, or the trial mount's
	// verdict).
	Why string

	src     Source
	cfg     config
	viewID  string // store view; "" for a Dirs source
	dirs    graph.ViewDirs
	base    string // temporary dir holding the mount point (and Dirs' upper, work)
	srv     *fusefs.Server
	mounted bool
}

// New makes a fresh writable view of src, mounts it, and registers its
// unmounting and removal with t.Cleanup. It fails the test when it cannot.
func New(t testing.TB, src Source, opts ...Option) *View {
	t.Helper()
	cfg := config{driver: os.Getenv(DriverEnv)}
	if cfg.driver == "" {
		cfg.driver = Auto
	}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.logger == nil {
		cfg.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	switch cfg.driver {
	case Auto, Kernel, Fuse:
	default:
		t.Fatalf("viewtest: driver %q: want %s, %s or %s", cfg.driver, Auto, Kernel, Fuse)
	}
	base, err := os.MkdirTemp("", "viewtest-")
	if err != nil {
		t.Fatalf("viewtest: %v", err)
	}
	v := &View{Path: filepath.Join(base, "view"), src: src, cfg: cfg, base: base}
	t.Cleanup(func() {
		if err := v.discard(); err != nil {
			t.Errorf("viewtest: cleanup of %s: %v", v.Path, err)
		}
	})
	if err := os.Mkdir(v.Path, 0o755); err != nil {
		t.Fatalf("viewtest: %v", err)
	}
	if err := v.prepare(); err != nil {
		t.Fatalf("viewtest: view of %s: %v", src, err)
	}
	v.Driver, v.Why = v.chooseDriver()
	if err := v.mount(); err != nil {
		t.Fatalf("viewtest: mount a view of %s with the %s driver (%s): %v", src, v.Driver, v.Why, err)
	}
	return v
}

// prepare makes the upper and work dirs: a store view, or two dirs in base.
func (v *View) prepare() error {
	s := v.src
	if s.store == nil {
		if len(s.lowers) == 0 {
			return errors.New("no lower directories")
		}
		v.dirs = graph.ViewDirs{Upper: filepath.Join(v.base, "upper"), Work: filepath.Join(v.base, "work")}
		for _, l := range s.lowers {
			abs, err := filepath.Abs(l)
			if err != nil {
				return err
			}
			if st, err := os.Stat(abs); err != nil || !st.IsDir() {
				return fmt.Errorf("lower %s is not a directory (%v)", abs, err)
			}
			v.dirs.Lowers = append(v.dirs.Lowers, abs)
		}
		for _, d := range []string{v.dirs.Upper, v.dirs.Work} {
			if err := os.Mkdir(d, 0o755); err != nil {
				return err
			}
		}
		return nil
	}
	ref := s.ref
	if s.layer {
		l, err := s.store.Layer(s.ref)
		if err != nil {
			return err
		}
		ref = l.ChainID.String()
	} else if _, err := s.store.Image(s.ref); err != nil {
		return err
	}
	sv, err := s.store.CreateView(context.Background(), ref, graph.CreateViewOptions{Temporary: true})
	if err != nil {
		return err
	}
	v.viewID = sv.ID
	v.dirs, err = s.store.Dirs(sv)
	return err
}

// xattrNamespace is where the view's overlay markers are written.
func (v *View) xattrNamespace() whiteout.Namespace {
	if v.src.store != nil {
		return v.src.store.Namespace()
	}
	if graph.Privileged() {
		return whiteout.Trusted
	}
	return whiteout.User
}

func (v *View) kernelOptions() overlay.Options {
	userXattr := overlay.InUserNamespace() || v.xattrNamespace() == whiteout.User
	return overlay.ViewOptions(v.dirs.Lowers, v.dirs.Upper, v.dirs.Work, userXattr)
}

func (v *View) chooseDriver() (driver, why string) {
	if v.cfg.driver != Auto {
		return v.cfg.driver, "forced"
	}
	probe := overlay.Supported(overlay.ProbeOptions{Dir: filepath.Dir(v.dirs.Upper), Options: v.kernelOptions()})
	if probe.OK {
		return Kernel, "kernel overlay probe passed"
	}
	return Fuse, probe.Reason
}

func (v *View) mount() error {
	switch v.Driver {
	case Kernel:
		if _, err := overlay.MountView(v.Path, v.kernelOptions()); err != nil {
			return err
		}
	case Fuse:
		opts := fusefs.Options{
			Lowers:           v.dirs.Lowers,
			Upper:            v.dirs.Upper,
			Work:             v.dirs.Work,
			LowerOwnerTables: v.dirs.LowerOwnerTables,
			UpperOwnerTable:  v.dirs.UpperOwnerTable,
			XattrNamespace:   v.xattrNamespace(),
			FsName:           "layerfs-viewtest",
			Logger:           v.cfg.logger,
		}
		if os.Geteuid() != 0 {
			opts.ExtraMountOptions = []string{"nosuid", "nodev"}
		}
		srv, err := fusefs.Mount(v.Path, opts)
		if err != nil {
			return err
		}
		v.srv = srv
	}
	v.mounted = true
	return nil
}

// unmount detaches the view: cleanly if it can, lazily if it is busy.
func (v *View) unmount() error {
	if !v.mounted {
		return nil
	}
	var err error
	switch v.Driver {
	case Kernel:
		err = overlay.Unmount(v.Path, false)
		if errors.Is(err, overlay.ErrBusy) {
			err = overlay.Unmount(v.Path, true)
		}
	case Fuse:
		// As root the server falls back to a lazy unmount itself;
		// fusermount3 needs to be told.
		if err = v.srv.Unmount(); err != nil && os.Geteuid() != 0 {
			if out, ferr := exec.Command("fusermount3", "-u", "-z", v.Path).CombinedOutput(); ferr == nil {
				err = nil
			} else {
				err = fmt.Errorf("%w; fusermount3 -u -z: %v: %s", err, ferr, out)
			}
		}
		if err == nil {
			// The server ends once the kernel lets go of the mount,
			// which a lazy unmount may defer while a file is open.
			done := make(chan struct{})
			go func() { v.srv.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(time.Second):
			}
		}
	}
	if err != nil {
		return err
	}
	v.mounted = false
	return nil
}

// discard unmounts and removes everything New made. Nothing is removed
// while the view may still be mounted.
func (v *View) discard() error {
	if err := v.unmount(); err != nil {
		return fmt.Errorf("unmount: %w (left in place: %s)", err, v.base)
	}
	var errs []error
	if v.viewID != "" {
		if _, err := v.src.store.DeleteView(context.Background(), v.viewID); err != nil && !errors.Is(err, graph.ErrNotFound) {
			errs = append(errs, fmt.Errorf("remove view %s: %w", v.viewID, err))
		}
	}
	if err := os.RemoveAll(v.base); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Upper is the directory that receives the view's changes.
func (v *View) Upper() string { return v.dirs.Upper }

// Lowers are the view's lower directories, top first.
func (v *View) Lowers() []string { return v.dirs.Lowers }

// ID is the store view's ID ("" for a Dirs source).
func (v *View) ID() string { return v.viewID }

// Diff lists the changes in the upper against the lowers, as `layerfs diff`
// does. It reads the upper while the view stays mounted; under the kernel
// driver, the other names of a lower hardlink group written through one
// name are in the upper only after Commit (or the next mount with the
// union), which link them up from the kernel's index.
func (v *View) Diff(ctx context.Context) ([]changes.Change, error) {
	list, err := changes.Diff(ctx, v.dirs.Upper, v.dirs.Lowers)
	if err != nil {
		return nil, fmt.Errorf("diff %s: %w", v.Path, err)
	}
	return list, nil
}

// Commit registers the view's changes as a new layer of the store (see
// graph.Store.Commit) and returns it. The view is unmounted for it, its
// upper settled (fusefs.AdoptKernelIndex), and mounted again at the same
// Path with the same driver: on the new layer with an empty upper, or,
// with opts.Keep, as it was. Only views of an Image or Layer source can be
// committed.
func (v *View) Commit(ctx context.Context, opts graph.CommitOptions) (*graph.Layer, error) {
	if v.viewID == "" {
		return nil, errors.New("commit: only a view of an image or layer can be committed")
	}
	if err := v.unmount(); err != nil {
		return nil, fmt.Errorf("commit: unmount %s: %w", v.Path, err)
	}
	s := v.src.store
	var layer *graph.Layer
	err := fusefs.AdoptKernelIndex(fusefs.Options{Lowers: v.dirs.Lowers, Upper: v.dirs.Upper, Work: v.dirs.Work,
		XattrNamespace: v.xattrNamespace(), Logger: v.cfg.logger})
	if err == nil {
		layer, _, err = s.Commit(ctx, v.viewID, opts)
	}
	// Mounted again whatever happened, so the test's cleanup finds the
	// view as it expects.
	var merr error
	if sv, verr := s.View(v.viewID); verr != nil {
		merr = verr
	} else if v.dirs, merr = s.Dirs(sv); merr == nil {
		merr = v.mount()
	}
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", v.Path, errors.Join(err, merr))
	}
	if merr != nil {
		return layer, fmt.Errorf("commit %s: committed %s, but cannot mount the view again: %w", v.Path, layer.ChainID, merr)
	}
	return layer, nil
}
